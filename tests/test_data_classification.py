"""Classification datamodules: digits splits and seeding, CIFAR pickles, ImageFolder checks."""
from __future__ import annotations

import pickle
import warnings
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import DATASETS, DataError, build_datamodule
from bench.data.base import BatchKey, SeededBatches, stratified_split
from bench.data.digits import DigitsData
from bench.data.images import CIFAR10Data, CIFAR100Data, ImageFolderData
from conftest import image_tree


def first_batch(loader):
    return next(iter(loader))


@pytest.fixture(scope="module")
def digits():
    dm = DigitsData(seed=0)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split_sizes_classes_and_determinism(digits):
    split = digits.split_indices
    sizes = {k: len(v) for k, v in split.items()}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1797 - 359 - 270, "val": 270, "test": 359}
    everything = np.concatenate(list(split.values()))
    assert len(np.unique(everything)) == 1797  # disjoint and complete
    labels = np.concatenate([digits.train_set.labels, digits.val_set.labels,
                             digits.test_set.labels])
    for part in (digits.train_set, digits.val_set, digits.test_set):
        counts = np.bincount(part.labels.numpy(), minlength=10)
        assert (counts > 0).all()
        # stratified: each class's share within one item of the overall share
        expected = np.bincount(labels, minlength=10) * len(part) / 1797
        assert np.abs(counts - expected).max() <= 1.5

    again = DigitsData(seed=0)
    again.setup()
    other = DigitsData(seed=0, split_seed=1)  # the split follows data.split_seed
    other.setup()
    for name in split:
        assert np.array_equal(again.split_indices[name], split[name])
        assert not np.array_equal(other.split_indices[name], split[name])


def test_digits_batches(digits):
    assert (digits.num_classes, digits.in_channels) == (10, 3)
    train = digits.train_dataloader()
    assert len(train) == len(digits.train_set) // 64  # partial last batch dropped in training
    seen = 0
    for x, y in train:
        assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
        assert torch.equal(x[:, 0], x[:, 2])
        seen += len(y)
    assert seen == len(train) * 64
    val = [y for _, y in digits.val_dataloader()]
    assert sum(len(y) for y in val) == 270  # evaluation keeps every item
    x, _ = first_batch(digits.val_dataloader())
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalised


def test_digits_same_seed_same_batches_and_augmentation_applied(digits):
    x0, y0 = first_batch(digits.train_dataloader())
    x1, y1 = _first_train(seed=0)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x2, y2 = _first_train(seed=1)
    assert not torch.equal(y0, y2) and not torch.equal(x0, x2)
    plain, plain_y = _first_train(seed=0, augment=False)
    assert torch.equal(plain_y, y0)  # same order: only the augmentation differs
    assert not torch.allclose(plain, x0)
    # evaluation batches are never augmented
    xv, _ = first_batch(digits.val_dataloader())
    dm = DigitsData(seed=0, augment=False)
    dm.setup()
    assert torch.equal(xv, first_batch(dm.val_dataloader())[0])


@pytest.mark.parametrize("make", [lambda tmp: DigitsData(seed=0),
                                  lambda tmp: CIFAR10Data(seed=0,
                                                          root=write_fake_cifar10(tmp).parent),
                                  lambda tmp: ImageFolderData(seed=0, root=image_tree(tmp),
                                                              image_size=8)],
                         ids=["digits", "cifar10", "imagefolder"])
def test_augmentation_is_per_image_and_follows_the_batch_seed(tmp_path, make):
    dm = make(tmp_path)
    dm.setup()
    batch = dm.train_set[BatchKey([0] * 8, seed=5)][0]
    assert not all(torch.equal(batch[0], image) for image in batch[1:])
    assert torch.equal(dm.train_set[BatchKey([0] * 8, seed=5)][0], batch)
    assert not torch.equal(dm.train_set[BatchKey([0] * 8, seed=6)][0], batch)


def _first_train(seed, **options):
    dm = DigitsData(seed=seed, **options)
    dm.setup()
    return first_batch(dm.train_dataloader())


def test_epochs_differ_and_replay_from_epoch_number(digits):
    loader = digits.train_dataloader()
    epoch0 = first_batch(loader)[1]
    epoch1 = first_batch(loader)[1]  # iterating again advances the epoch
    assert not torch.equal(epoch0, epoch1)
    loader.sampler.set_epoch(1)  # what Lightning does on resume
    assert torch.equal(first_batch(loader)[1], epoch1)


def test_batches_do_not_depend_on_num_workers():
    ref_x, ref_y = _first_train(seed=3, batch_size=16)
    dm = DigitsData(seed=3, batch_size=16, num_workers=1)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    x, y = first_batch(loader)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_options_come_from_the_registry_and_unknown_ones_are_rejected():
    dm = build_datamodule({"name": "digits", "batch_size": 8, "image_size": 16}, seed=0)
    assert isinstance(dm, DigitsData) and dm.batch_size == 8 and dm.image_size == 16
    assert dm.options == {**DATASETS["digits"].options, "image_size": 16}
    dm.setup()
    assert first_batch(dm.train_dataloader())[0].shape == (8, 3, 16, 16)
    with pytest.raises(TypeError, match="imagesize"):
        DigitsData(seed=0, imagesize=32)
    with pytest.raises(TypeError, match="test_fraction"):
        CIFAR10Data(seed=0, test_fraction=0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsData(seed=0, val_fraction=1.5)


def test_stratified_split_keeps_tiny_parts_non_empty():
    labels = np.repeat(np.arange(10), 2)
    train, val = stratified_split(labels, [0.1], seed=0)
    assert len(val) == 2 and len(train) == 18
    assert set(train) | set(val) == set(range(20))


def test_sampler_covers_every_item_once_per_epoch():
    sampler = SeededBatches(10, 4, seed=0, shuffle=True, drop_last=False)
    keys = list(sampler)
    assert [len(k.indices) for k in keys] == [4, 4, 2]
    assert sorted(i for k in keys for i in k.indices) == list(range(10))


# ---------------------------------------------------------------------------------------------
# CIFAR


def write_fake_cifar10(root, per_batch=4, test_items=6):
    """Real on-disk layout: pickled dicts with 'data' (N, 3072) uint8 rows and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, labels):
        # each image is one flat value that encodes its label, so loading can be checked
        data = np.repeat(np.array(labels, dtype=np.uint8)[:, None] * 20 + 5, 3072, axis=1)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": list(labels), "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(len(labels))]}, f)

    for b in range(1, 6):
        dump(f"data_batch_{b}", [(b * per_batch + i) % 10 for i in range(per_batch)])
    dump("test_batch", [i % 10 for i in range(test_items)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return folder


def test_cifar10_loads_the_pickle_format(tmp_path):
    write_fake_cifar10(tmp_path)
    dm = CIFAR10Data(seed=0, root=tmp_path, batch_size=4)
    assert (dm.num_classes, dm.in_channels) == (10, 3)
    dm.check()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 2, 6)
    assert dm.classes[3] == "class3"
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.max() <= 9
    x, y = first_batch(dm.test_dataloader())
    assert y.tolist() == [0, 1, 2, 3]
    mean = torch.tensor(CIFAR10Data.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10Data.std).view(1, 3, 1, 1)
    raw = (y.float() * 20 + 5).view(-1, 1, 1, 1) / 255
    assert torch.allclose(x, ((raw - mean) / std).expand_as(x), atol=1e-5)


def test_cifar_augmentation_is_a_padded_crop_and_flip(tmp_path):
    write_fake_cifar10(tmp_path)
    dm = CIFAR10Data(seed=0, root=tmp_path, batch_size=16)
    dm.setup()
    x, _ = first_batch(dm.train_dataloader())
    # constant images: a crop shifted into the zero padding shows black borders somewhere
    black = (-torch.tensor(CIFAR10Data.mean) / torch.tensor(CIFAR10Data.std)).view(1, 3, 1, 1)
    assert torch.isclose(x, black.expand_as(x), atol=1e-5).any()
    again = CIFAR10Data(seed=0, root=tmp_path, batch_size=16)
    again.setup()
    assert torch.equal(first_batch(again.train_dataloader())[0], x)


def test_cifar_missing_data_says_where_to_put_it(tmp_path):
    assert CIFAR100Data(seed=0).num_classes == 100
    with pytest.raises(DataError, match="data.root"):
        CIFAR10Data(seed=0).check()
    with pytest.raises(DataError) as err:
        CIFAR10Data(seed=0, root=tmp_path).check()
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    assert "data.download: true" in str(err.value)
    with pytest.raises(DataError) as err:
        CIFAR100Data(seed=0, root=tmp_path).check()
    assert str(tmp_path / "cifar-100-python") in str(err.value)
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        CIFAR10Data(seed=0, root=tmp_path).check()


# ---------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_loads_batches(tmp_path):
    image_tree(tmp_path)
    dm = ImageFolderData(seed=0, root=tmp_path, batch_size=3, image_size=8)
    assert (dm.num_classes, dm.in_channels) == (2, 3)  # known before check()
    dm.check()
    dm.setup("fit")
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1}
    assert sum(len(y) for _, y in dm.val_dataloader()) == 4
    assert dm.test_set.samples == dm.val_set.samples  # no test/: test on val
    again = ImageFolderData(seed=0, root=tmp_path, batch_size=3, image_size=8)
    again.setup()
    assert torch.equal(first_batch(again.train_dataloader())[0], x)


def test_imagefolder_uses_test_folder_when_present(tmp_path):
    image_tree(tmp_path, splits=("train", "val", "test"), per_class=1)
    dm = ImageFolderData(seed=0, root=tmp_path, image_size=8)
    dm.setup()
    assert all("/test/" in path for path, _ in dm.test_set.samples)


@pytest.mark.parametrize("case", ["no_root", "missing_root", "no_train", "no_val",
                                  "train_without_classes", "class_without_images",
                                  "classes_differ", "test_classes_differ"])
def test_imagefolder_errors_name_the_path(tmp_path, case):
    root = tmp_path / "data"
    expected = root
    if case == "no_root":
        root = None
    elif case != "missing_root":
        image_tree(root)
    if case == "no_train":
        shutil.rmtree(root / "train")
        expected = root / "train"
    elif case == "no_val":
        shutil.rmtree(root / "val")
        expected = root / "val"
    elif case == "train_without_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        expected = root / "train"
    elif case == "class_without_images":
        for f in (root / "val" / "dog").iterdir():
            f.unlink()
        expected = root / "val" / "dog"
    elif case == "classes_differ":
        (root / "val" / "dog").rename(root / "val" / "bird")
        expected = root / "val"
    elif case == "test_classes_differ":
        image_tree(root, splits=("test",), classes=("cat",))
        expected = root / "test"
    dm = ImageFolderData(seed=0, root=root, image_size=8)
    with pytest.raises(DataError) as err:
        dm.check()
    assert (str(expected) if root is not None else "data.root") in str(err.value)
    if case.endswith("classes_differ"):
        assert "differ" in str(err.value)


def test_corrupt_image_raises_data_error_naming_the_file(tmp_path):
    image_tree(tmp_path)
    bad = tmp_path / "val" / "cat" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dm = ImageFolderData(seed=0, root=tmp_path, batch_size=8, image_size=8)
    dm.check()  # does not open every image
    dm.setup()
    with pytest.raises(DataError, match=str(bad)):
        list(dm.val_dataloader())


@pytest.mark.parametrize("mode, pixels, expected", [
    # 16-bit grey: scaled to 8 bits, not clipped to white (PIL's convert("RGB") gives 255)
    ("I;16", np.array([[0, 257 * 100, 65535]], np.uint16), [0, 100, 255]),
    ("I", np.array([[0, 257 * 100, 65535]], np.int32), [0, 100, 255]),
    ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
    ("L", np.array([[0, 100, 255]], np.uint8), [0, 100, 255]),
])
def test_every_image_mode_is_read_for_what_it_holds(tmp_path, mode, pixels, expected):
    from bench.data.pixels import to_rgb

    image = Image.fromarray(pixels)
    assert image.mode == mode
    path = tmp_path / ("x.tif" if mode in ("I", "F") else "x.png")
    image.save(path)
    with Image.open(path) as opened:
        rgb = np.asarray(to_rgb(opened, path))
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()


def test_alpha_palette_and_cmyk_images_convert_and_bad_ranges_are_refused(tmp_path):
    from bench.data.pixels import to_rgb

    # alpha: composited over black, whatever colour a transparent pixel hides
    la = Image.fromarray(np.array([[[200, 255], [200, 0]]], np.uint8))
    assert la.mode == "LA"
    assert np.asarray(to_rgb(la, "la.png"))[0, :, 0].tolist() == [200, 0]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.putdata([1, 0])
    palette.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "palette with transparency" warning: none
        assert np.asarray(to_rgb(palette, "p.png"))[0].tolist() == [[250, 10, 10], [0, 0, 0]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(to_rgb(cmyk, "c.jpg"))[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(DataError, match=r"f\.tif: float pixels from 0 to 7\.5"):
        to_rgb(Image.fromarray(np.array([[0.0, 7.5]], np.float32)), "f.tif")
    with pytest.raises(DataError, match=r"big\.tif: 32-bit integer pixels"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], np.int32)), "big.tif")


def test_a_16_bit_png_in_an_imagefolder_is_not_white(tmp_path):
    image_tree(tmp_path)
    path = tmp_path / "val" / "cat" / "deep.png"
    Image.fromarray(np.full((12, 10), 257 * 60, np.uint16)).save(path)
    dm = ImageFolderData(seed=0, root=tmp_path, batch_size=3, image_size=8)
    dm.setup()
    assert np.asarray(dm.val_set._load(str(path))).max() == 60  # PIL alone: 255, white


def test_links_in_class_folders_are_followed_or_refused_naming_the_link(tmp_path):
    image_tree(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-shared"
    outside.mkdir()
    Image.new("RGB", (10, 12)).save(outside / "extra.png")
    (tmp_path / "train" / "cat" / "shared").symlink_to(outside, target_is_directory=True)
    dm = ImageFolderData(seed=0, root=tmp_path, batch_size=3, image_size=8)
    dm.check()  # a link out of the tree: followed, its images under the folder's label
    assert sum(p.endswith("extra.png") and label == 0
               for p, label in dm._samples["train"]) == 1
    loop = tmp_path / "train" / "dog" / "loop"
    loop.symlink_to(tmp_path / "train" / "dog", target_is_directory=True)
    with pytest.raises(DataError, match=f"link loop: {loop}"):
        ImageFolderData(seed=0, root=tmp_path, batch_size=3, image_size=8).check()
