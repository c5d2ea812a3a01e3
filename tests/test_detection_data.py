"""Detection data: digit_scenes rendering, the COCO folder round trip, COCO validation errors,
crowd regions and the VisDrone converter. Canvases are kept few and small (2 shared cores)."""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import resolve
from bench.convert import add_arguments, convert_visdrone, run
from bench.data import DATASETS, DataError, build_datamodule
from bench.data.coco import COCOData
from bench.data.scenes import DigitScenesData
from bench.tasks.metrics import DetectionMetrics

SMALL = dict(train_images=4, val_images=2, test_images=2)


def scenes(split_seed, split="val", **options):
    # val/test canvases follow data.split_seed (tests/test_paired.py: not the run seed)
    return DigitScenesData(seed=0, split_seed=split_seed, **{**SMALL, **options}).render(split)


# ---------------------------------------------------------------------------------------------
# digit_scenes


def test_digit_scenes_same_seed_same_canvases_other_seed_other_canvases():
    a, b, c = scenes(0), scenes(0), scenes(1)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.boxes, y.boxes) and np.array_equal(x.labels, y.labels)
    assert not np.array_equal(a[0].image, c[0].image)
    # canvas i does not depend on how many canvases the split has
    more = scenes(0, val_images=3)
    assert np.array_equal(more[1].image, a[1].image)


def test_digit_scenes_sizes_mostly_tiny_boxes_inside_labels_valid():
    dm = DigitScenesData(seed=0, train_images=2, val_images=30, test_images=2)
    boxes = np.concatenate([s.boxes for s in dm.render("val")])
    labels = np.concatenate([s.labels for s in dm.render("val")])
    assert len(boxes) >= 30 * 3
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    hist = np.histogram(side, [0, 8, 16, 32, np.inf])[0] / len(side)
    assert hist[:3].sum() >= 0.95  # under 32 px
    assert hist[0] > 0.1 and hist[1] > 0.2 and hist[2] > 0.1  # very tiny, tiny and small all there
    assert side.min() >= 3
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) >= 8


def test_digit_scenes_batches_and_fresh_training_canvases():
    dm = DigitScenesData(seed=0, batch_size=2, **SMALL)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 128, 128) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    t = targets[0]
    assert t["boxes"].shape[1] == 4 and t["boxes"].dtype == torch.float32
    assert len(t["labels"]) == len(t["boxes"]) == len(t["iscrowd"]) == len(t["area"])
    assert t["labels"].dtype == torch.int64 and not t["iscrowd"].any()
    # fresh canvases: the same for the same seed and epoch, new in the next epoch
    again = DigitScenesData(seed=0, batch_size=2, **SMALL)
    again.setup("fit")
    assert torch.equal(next(iter(again.train_dataloader()))[0], images)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], images)
    fixed = DigitScenesData(seed=0, batch_size=2, fresh_train=False, **SMALL)
    fixed.setup("fit")
    loader = fixed.train_dataloader()
    first = {tuple(x.flatten()[:50].tolist()) for x in next(iter(loader))[0]}
    loader.sampler.set_epoch(5)
    pool = {tuple(x.flatten()[:50].tolist()) for b in loader for x in b[0]}
    assert first <= pool  # the same canvases, reshuffled


def test_digit_scenes_options_checked():
    with pytest.raises(ValueError, match="object_size"):
        DigitScenesData(seed=0, object_size=[10, 5])
    with pytest.raises(TypeError, match="unknown option"):
        DigitScenesData(seed=0, canvas=3)


# ---------------------------------------------------------------------------------------------
# COCO folders


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    dm = DigitScenesData(seed=3, **SMALL)
    folder = dm.write_coco(tmp_path_factory.mktemp("digit_coco"))
    return dm, folder


def test_written_coco_folder_loads_through_coco_data(written):
    scenes_dm, folder = written
    cfg = resolve({"data": {"name": "coco", "root": str(folder), "batch_size": 2}})
    dm = build_datamodule(cfg["data"], seed=0)
    assert isinstance(dm, COCOData) and dm.num_classes == 10 and dm.in_channels == 3
    dm.check()
    dm.setup("fit")
    assert dm.example_image_size == (128, 128)
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2 and len(dm.test_set) == 2
    images, targets = dm.val_set[next(iter(dm.val_dataloader().sampler))]
    for image, target, scene in zip(images, targets, scenes_dm.render("val")):
        assert torch.equal((image * 255).round().byte(), torch.from_numpy(scene.image))
        assert torch.allclose(target["boxes"], torch.from_numpy(scene.boxes), atol=2e-3)
        assert torch.equal(target["labels"], torch.from_numpy(scene.labels))


def write_coco(root, images, annotations, categories=None, split="train", sizes=None):
    """A tiny COCO split: 32x32 PNGs named in `images` (None: leave the file out)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for i, name in enumerate(images, start=1):
        w, h = (sizes or {}).get(name, (32, 32))
        if not name.startswith("missing"):
            Image.new("RGB", (w, h), (i * 40, 80, 120)).save(root / split / name)
        entries.append({"id": i, "file_name": name, "width": w, "height": h})
    data = {"images": entries, "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "car"}, {"id": 7, "name": "bus"}]}
    path = root / "annotations" / f"{split}.json"
    path.write_text(json.dumps(data))
    return path


def ann(aid, image_id, bbox, category=3, **extra):
    return {"id": aid, "image_id": image_id, "bbox": bbox, "category_id": category, **extra}


def coco_root(tmp_path, train_annotations, train_images=("a.png", "b.png")):
    write_coco(tmp_path, list(train_images), train_annotations)
    write_coco(tmp_path, ["c.png"], [ann(100, 1, [2, 2, 10, 10], 7)], split="val")
    return COCOData(seed=0, root=str(tmp_path), batch_size=2)


def test_coco_labels_mapped_crowd_kept_and_empty_images_kept(tmp_path):
    dm = coco_root(tmp_path, [ann(1, 1, [1, 1, 8, 8], 7), ann(2, 1, [10, 10, 5, 6], 3),
                              ann(3, 1, [20, 20, 6, 6], 3, iscrowd=1),
                              ann(4, 1, [0, 20, 6, 6], 7, ignore=1)])
    assert dm.num_classes == 2 and [c["name"] for c in dm.categories] == ["car", "bus"]
    dm.check()
    dm.setup("fit")
    images, targets = dm.train_set[next(iter(dm.val_dataloader().sampler))._replace(
        indices=[0, 1])]
    a, b = targets
    assert a["labels"].tolist() == [1, 0, 0, 1]  # ids 3, 7 -> labels 0, 1
    assert a["iscrowd"].tolist() == [0, 0, 1, 1]
    assert a["boxes"][1].tolist() == [10, 10, 15, 16]
    assert b["boxes"].shape == (0, 4) and images.shape == (2, 3, 32, 32)  # image b: no boxes


def test_crowd_regions_reach_the_evaluator_as_iscrowd(tmp_path):
    dm = coco_root(tmp_path, [ann(1, 1, [1, 1, 8, 8], 3), ann(2, 1, [12, 12, 16, 16], 3,
                                                                   iscrowd=1)])
    dm.check()
    dm.setup("fit")
    _, targets = dm.train_set[next(iter(dm.val_dataloader().sampler))._replace(indices=[0])]
    target = targets[0]
    # a detector that finds the real box and nothing in the crowd region
    pred = {"boxes": target["boxes"][:1], "scores": torch.tensor([0.9]),
            "labels": target["labels"][:1]}
    metric = DetectionMetrics(size_buckets=False)
    metric.update([pred], [target])
    assert metric.compute()["map_50"] == pytest.approx(1.0)  # the region is not a missed box


def expect_error(dm, *fragments):
    with pytest.raises(DataError) as info:
        dm.check()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_missing_image_names_file_and_annotation_ids(tmp_path):
    dm = coco_root(tmp_path, [ann(7, 2, [1, 1, 5, 5])], train_images=("a.png", "missing.png"))
    expect_error(dm, "train.json", "missing.png", "does not exist", "annotation ids: 7")


def test_box_outside_image_is_fatal(tmp_path):
    dm = coco_root(tmp_path, [ann(1, 1, [1, 1, 5, 5]), ann(12, 1, [40, 3, 5, 5])])
    expect_error(dm, "train.json", "annotation id 12", "outside", "32x32")


def test_zero_size_box_is_fatal(tmp_path):
    dm = coco_root(tmp_path, [ann(5, 1, [3, 3, 0, 5])])
    expect_error(dm, "train.json", "annotation id 5", "zero-size")


def test_unknown_category_is_fatal(tmp_path):
    dm = coco_root(tmp_path, [ann(9, 1, [3, 3, 4, 5], category=42)])
    expect_error(dm, "train.json", "annotation id 9", "unknown category_id 42")


def test_malformed_json_is_fatal(tmp_path):
    dm = coco_root(tmp_path, [ann(1, 1, [3, 3, 4, 5])])
    (tmp_path / "annotations" / "val.json").write_text('{"images": [\n  {"id": 1,,}]}')
    expect_error(dm, "val.json", "malformed JSON", "line 2")
    (tmp_path / "annotations" / "val.json").write_text('{"images": [], "annotations": [{}]}')
    expect_error(COCOData(seed=0, root=str(tmp_path)), "val.json", "categories")


def test_malformed_bbox_names_annotation(tmp_path):
    dm = coco_root(tmp_path, [ann(4, 1, [3, 3, 4])])
    expect_error(dm, "train.json", "annotation id 4", "malformed bbox")


def test_slightly_outside_box_is_clipped_with_a_counted_warning(tmp_path):
    dm = coco_root(tmp_path, [ann(1, 1, [28, 10, 6, 4]), ann(2, 1, [-1, 0, 5, 5]),
                              ann(3, 2, [2, 2, 4, 4])])
    with pytest.warns(UserWarning, match=r"clipped 2 box\(es\).*first: annotation id 1"):
        dm.check()
    assert dm.clipped["train"] == 2 and dm.clipped["val"] == 0
    dm.setup("fit")
    _, targets = dm.train_set[next(iter(dm.val_dataloader().sampler))._replace(indices=[0])]
    assert targets[0]["boxes"].tolist() == [[28, 10, 32, 14], [0, 0, 4, 5]]


def test_listed_twice_is_fatal_and_a_16_bit_image_is_read_for_its_values(tmp_path):
    from bench.data import DataWarning

    expect_error(coco_root(tmp_path / "a", [ann(1, 1, [2, 2, 4, 4])], ("a.png", "a.png")),
                 "train.json", "image ids 1 and 2 both name the file a.png")
    expect_error(coco_root(tmp_path / "b", [ann(1, 1, [2, 2, 4, 4]), ann(1, 2, [2, 2, 4, 4])]),
                 "train.json", "annotation id 1 appears twice")
    dm = coco_root(tmp_path / "c", [ann(1, 1, [28, 10, 6, 4])])
    deep = np.full((32, 32), 257 * 90, np.uint16)  # PIL mode I;16
    Image.fromarray(deep).save(tmp_path / "c" / "train" / "a.png")
    with pytest.warns(DataWarning):  # the CLI prints it as one `warning:` line
        dm.check()
    dm.setup("fit")
    image = dm.train_set._image(0)
    assert image.shape == (3, 32, 32) and round(float(image.max()) * 255) == 90  # not white


def test_coco_paths_and_root_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file .* not found"):
        COCOData(seed=0, root=str(tmp_path)).check()
    write_coco(tmp_path, ["a.png"], [], split="train")
    write_coco(tmp_path, ["c.png"], [], split="val")
    (tmp_path / "other").mkdir()
    dm = COCOData(seed=0, root=str(tmp_path),
                  test={"images": "other", "annotations": str(tmp_path / "nope.json")})
    expect_error(dm, "nope.json", "not found")
    with pytest.raises(ValueError, match="data.val"):
        COCOData(seed=0, root=str(tmp_path), val={"images": "val"})


def test_coco_defaults_are_in_the_config_schema():
    spec = DATASETS["coco"]
    assert spec.task == "detection" and set(spec.options) == {"train", "val", "test"}
    cfg = resolve({"data": {"name": "coco", "root": "/data",
                            "val": {"annotations": "annotations/minival.json"}}})
    assert cfg["data"]["val"] == {"images": "val", "annotations": "annotations/minival.json"}
    assert cfg["model"]["detection"]["anchor_sizes"] == [4, 8, 16, 32]


# ---------------------------------------------------------------------------------------------
# VisDrone converter

VISDRONE = {
    # left,top,width,height,score,category,truncation,occlusion
    "0000001_00000_d_0000001": ["10,12,20,15,1,4,0,0", "50,60,8,9,1,1,0,1",
                                "0,0,30,20,0,0,0,0", "70,70,5,5,1,11,0,0",
                                "80,10,0,6,1,4,0,0", "90,40,12,10,0,3,1,2"],
    "0000002_00000_d_0000002": [],
}


def make_visdrone(root, split_folder="VisDrone2019-DET-train"):
    images, annotations = root / split_folder / "images", root / split_folder / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir()
    for name, lines in VISDRONE.items():
        Image.new("RGB", (120, 100), (30, 60, 90)).save(images / f"{name}.jpg")
        (annotations / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def test_visdrone_converter_round_trip(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_visdrone(src)
    make_visdrone(src, "VisDrone2019-DET-val")
    summary = convert_visdrone(src, dst)
    assert set(summary) == {"train", "val"}
    assert summary["train"] == {"images": 2, "boxes": 3, "crowd_regions": 1, "others": 1,
                                "zero_size": 1}
    data = json.loads((dst / "annotations" / "train.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, 11))
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    # back to VisDrone lines: every kept box with its score (crowd -> 0), category and flags
    first = by_image[1]
    regular = [(*a["bbox"], 0 if a["iscrowd"] else 1, a["category_id"], a["truncation"],
                a["occlusion"]) for a in first if not (a["iscrowd"] and a["bbox"][0] == 0)]
    expected = [tuple(int(v) for v in line.split(",")) for line in VISDRONE[
        "0000001_00000_d_0000001"]]
    assert sorted(regular) == sorted(e for e in expected if e[5] not in (0, 11) and e[2] > 0)
    region = [a for a in first if a["bbox"] == [0, 0, 30, 20]]
    assert sorted(a["category_id"] for a in region) == list(range(1, 11))  # every class
    assert all(a["iscrowd"] == 1 for a in region)
    assert 2 not in by_image  # the image without boxes is kept as an image...
    assert [i["file_name"] for i in data["images"]] == [f"{n}.jpg" for n in VISDRONE]
    # ...and the folder loads through COCOData: labels are categories - 1, crowd flagged
    dm = COCOData(seed=0, root=str(dst), batch_size=2)
    dm.check()
    dm.setup("fit")
    assert dm.num_classes == 10 and len(dm.train_set) == 2
    images, targets = dm.train_set[next(iter(dm.val_dataloader().sampler))]
    assert images.shape == (2, 3, 100, 120)
    t = targets[0]
    normal = t["iscrowd"] == 0
    assert sorted(t["labels"][normal].tolist()) == [0, 3]
    assert t["iscrowd"].sum() == 11  # 10 copies of the region + the score-0 box
    assert targets[1]["boxes"].shape == (0, 4)


def test_visdrone_cli_and_errors(tmp_path):
    src, dst = tmp_path / "VisDrone2019-DET-val", tmp_path / "out"
    make_visdrone(tmp_path, "VisDrone2019-DET-val")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["visdrone", str(src), str(dst), "--link"])) == 0
    assert (dst / "annotations" / "val.json").is_file() and (dst / "val").is_dir()
    assert (dst / "val" / "0000001_00000_d_0000001.jpg").is_symlink()
    (src / "annotations" / "0000001_00000_d_0000001.txt").write_text("1,2,three\n")
    with pytest.raises(DataError, match=r"0000001_00000_d_0000001.txt line 1"):
        run(parser.parse_args(["visdrone", str(src), str(dst)]))
    with pytest.raises(DataError, match="no VisDrone-DET split"):
        run(parser.parse_args(["visdrone", str(tmp_path / "out"), str(dst)]))


def test_lesa_bench_convert_command(tmp_path, capsys):
    from bench.cli import main

    make_visdrone(tmp_path / "src")
    assert main(["convert", "visdrone", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert "train: 2 images, 3 boxes" in capsys.readouterr().out
    assert main(["convert", "visdrone", str(tmp_path / "nowhere"), str(tmp_path / "d")]) == 2
    assert main(["convert", "digit-scenes", str(tmp_path / "ds"), "--set", "train_images=2",
                 "--set", "val_images=1", "--set", "test_images=1"]) == 0
    assert len(json.loads((tmp_path / "ds" / "annotations" / "val.json").read_text())
               ["images"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a written folder needs no clipping
        COCOData(seed=0, root=str(tmp_path / "ds")).check()
