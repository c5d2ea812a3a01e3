"""ImageFolder: one image, one label, one split (issue 33 item 2). A class folder that is a link
to another class folder, a val/test class folder that resolves into train/, and any image file
reached twice are refused, naming both paths; links out of the tree are still followed."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

from bench.data import DataError
from bench.data.images import ImageFolderData
from conftest import image_tree


def replace_by_link(at, to):
    at.unlink() if at.is_symlink() else shutil.rmtree(at)
    at.symlink_to(to, target_is_directory=True)


def check(root):
    ImageFolderData(seed=0, root=root, image_size=8).check()


def refused(root, *named):
    with pytest.raises(DataError) as err:
        check(root)
    for path in named:
        assert str(path) in str(err.value), str(err.value)
    return str(err.value)


def test_a_class_folder_linked_to_another_class_folder_is_refused(tmp_path):
    # `ln -s dog train/c`: dog's images would be read again as class c
    image_tree(tmp_path, classes=("c", "cat", "dog"))
    replace_by_link(tmp_path / "train" / "c", tmp_path / "train" / "dog")
    message = refused(tmp_path, tmp_path / "train" / "c", tmp_path / "train" / "dog")
    assert "as class 'c'" in message


def test_a_class_folder_linked_into_another_split_is_refused(tmp_path):
    image_tree(tmp_path, splits=("train", "val", "test"))
    replace_by_link(tmp_path / "val" / "cat", tmp_path / "train" / "cat")
    message = refused(tmp_path, tmp_path / "val" / "cat", tmp_path / "train" / "cat")
    assert "inside the train split" in message
    replace_by_link(tmp_path / "val" / "cat", tmp_path / "test" / "dog")  # any other split
    refused(tmp_path, tmp_path / "val" / "cat", tmp_path / "test" / "dog")


def test_a_split_folder_linked_to_another_split_is_refused(tmp_path):
    image_tree(tmp_path, splits=("train",))
    (tmp_path / "val").symlink_to(tmp_path / "train", target_is_directory=True)
    assert "split folders" in refused(tmp_path, tmp_path / "val", tmp_path / "train")


def test_two_class_folders_linked_to_one_folder_outside_the_tree_are_refused(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    image_tree(data)
    image_tree(elsewhere, splits=("pool",), classes=("animals",))
    replace_by_link(data / "train" / "cat", elsewhere / "pool" / "animals")
    check(data)  # one class folder kept elsewhere: fine
    replace_by_link(data / "train" / "dog", elsewhere / "pool" / "animals")
    refused(data, data / "train" / "cat", data / "train" / "dog")
    replace_by_link(data / "train" / "dog", elsewhere / "pool")  # a folder above it
    refused(data, data / "train" / "cat", data / "train" / "dog")
    replace_by_link(data / "val" / "dog", elsewhere / "pool" / "animals")  # from another split
    replace_by_link(data / "train" / "dog", data / "elsewhere-dog")
    (data / "elsewhere-dog").mkdir()
    Image.new("RGB", (4, 4)).save(data / "elsewhere-dog" / "d.png")
    refused(data, data / "train" / "cat", data / "val" / "dog")


def test_an_image_reached_twice_is_refused_naming_both_paths(tmp_path):
    image_tree(tmp_path, splits=("train", "val", "test"))
    check(tmp_path)
    # across splits: a val image that is a training image
    link = tmp_path / "val" / "cat" / "x.png"
    link.symlink_to(tmp_path / "train" / "dog" / "0.png")
    refused(tmp_path, link, tmp_path / "train" / "dog" / "0.png")
    link.unlink()
    # within a class folder: the same image twice
    link = tmp_path / "test" / "dog" / "again.png"
    link.symlink_to(tmp_path / "test" / "dog" / "1.png")
    refused(tmp_path, link, tmp_path / "test" / "dog" / "1.png")
    link.unlink()
    # through a linked folder inside a class folder, from another split
    folder = tmp_path / "test" / "cat" / "more"
    folder.symlink_to(tmp_path / "train" / "cat", target_is_directory=True)
    refused(tmp_path, folder / "0.png", tmp_path / "train" / "cat" / "0.png")


def test_links_out_of_the_tree_are_still_followed(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    image_tree(data)
    image_tree(outside, splits=("store",), classes=("cat",), per_class=1)
    (data / "train" / "cat" / "shared").symlink_to(outside / "store" / "cat",
                                                   target_is_directory=True)
    dm = ImageFolderData(seed=0, root=data, image_size=8)
    dm.check()
    assert len(dm._samples["train"]) == 5 and len(dm._samples["val"]) == 4
    # the same outside image linked from val too: a second reach
    (data / "val" / "dog" / "s.png").symlink_to(outside / "store" / "cat" / "0.png")
    refused(data, data / "val" / "dog" / "s.png", data / "train" / "cat" / "shared" / "0.png")
