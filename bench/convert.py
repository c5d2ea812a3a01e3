"""`lesa-bench convert`: dataset converters into the COCO folder layout `coco` reads by default.

    lesa-bench convert visdrone SRC DST      VisDrone-DET txt annotations -> COCO
    lesa-bench convert digit-scenes DST      the embedded digit_scenes canvases -> COCO

Output layout (what data: {name: coco, root: DST} expects without further keys):

    DST/train/  DST/val/  [DST/test/]        images
    DST/annotations/{train,val,test}.json    COCO detection files
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

# VisDrone-DET categories; 0 (ignored regions) and 11 (others) are not classes here
VISDRONE_CLASSES = {1: "pedestrian", 2: "people", 3: "bicycle", 4: "car", 5: "van", 6: "truck",
                    7: "tricycle", 8: "awning-tricycle", 9: "bus", 10: "motor"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ConvertError(ValueError):
    """Unusable converter input; the message names the file (and line) and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of `lesa-bench convert` (the CLI calls `run(args)` afterwards)."""
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = sub.add_parser("visdrone", help="VisDrone-DET (txt per image) -> COCO folder",
                       description="Convert VisDrone-DET to a COCO folder. SRC is one split "
                       "folder (holding images/ and annotations/) or a folder holding the "
                       "VisDrone2019-DET-train/-val/-test-dev split folders. Category 0 "
                       "(ignored regions) and boxes with score 0 become iscrowd regions (an "
                       "ignored region once per class, so it is ignored for every class); "
                       "category 11 (others) is dropped; zero-size boxes are skipped and "
                       "counted.")
    p.add_argument("src", type=Path, help="VisDrone split folder, or the folder holding them")
    p.add_argument("dst", type=Path, help="output folder (COCO layout)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="split name when SRC is a single split (default: from its name)")
    p.add_argument("--link", action="store_true",
                   help="symlink the images instead of copying them")
    p = sub.add_parser("digit-scenes", help="write the embedded digit_scenes canvases as COCO")
    p.add_argument("dst", type=Path, help="output folder (COCO layout)")
    p.add_argument("--seed", type=int, default=0,
                   help="draws every split's canvases (split_seed too, unless --set split_seed=N)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a digit_scenes option, e.g. --set train_images=64 (repeatable)")


def run(args) -> int:
    from bench.data import DataError

    try:
        return _run(args)
    except OSError as err:  # the output folder cannot be written (a file there, read-only)
        raise DataError(f"cannot write {args.dst}: {err.strerror or err} "
                        f"({err.filename or args.dst}); choose another output folder") from None


def _digit_scenes_options(texts: list[str]) -> dict:
    """--set KEY=VALUE for digit_scenes, checked as the config checks data.* (DataError)."""
    from bench.config import ConfigError, parse_assignment
    from bench.data import DATASETS, DataError
    from bench.data import check_options
    from lesa.names import did_you_mean

    allowed = {**DATASETS["digit_scenes"].options, "split_seed": 0}
    options = {}
    for text in texts:
        try:
            key, value = parse_assignment(text, "--set")
        except ConfigError as err:
            raise DataError(str(err)) from None
        if key not in allowed:
            raise DataError(f"--set {text}: {key} is not a digit_scenes option"
                            f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
        options[key] = value
    check_options({"name": "digit_scenes", **{**allowed, **options}})
    return options


def _run(args) -> int:
    from bench.data import DataError

    if args.dataset == "visdrone":
        try:
            summary = convert_visdrone(args.src, args.dst, split=args.split, link=args.link)
        except ConvertError as err:
            raise DataError(str(err)) from None  # the CLI prints DataErrors without traceback
        for split, counts in summary.items():
            print(f"{split}: {counts['images']} images, {counts['boxes']} boxes, "
                  f"{counts['crowd_regions']} ignored regions, {counts['others']} 'others' "
                  f"dropped, {counts['zero_size']} zero-size boxes skipped -> "
                  f"{args.dst / 'annotations' / (split + '.json')}")
        return 0
    if args.dataset == "digit-scenes":
        from bench.data.scenes import DigitScenesData

        options = _digit_scenes_options(args.set)
        scenes = DigitScenesData(seed=args.seed, **{"split_seed": args.seed, **options})
        folder = scenes.write_coco(args.dst)
        print(f"wrote {folder} (train/, val/, test/, annotations/)")
        return 0
    raise ValueError(f"unknown dataset {args.dataset!r}")


def _split_name(folder: Path) -> str | None:
    name = folder.name.lower()
    for split, words in (("train", ("train",)), ("val", ("val",)), ("test", ("test",))):
        if any(w in name for w in words):
            return split
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size  # (width, height)
    except (OSError, ValueError) as e:
        raise ConvertError(f"cannot read image {path}: {e}") from None


def convert_visdrone_split(src: Path, dst: Path, split: str, link: bool = False) -> dict:
    """One VisDrone-DET split folder (images/, annotations/) -> DST/<split>/ + annotations."""
    images_dir, ann_dir = src / "images", src / "annotations"
    for folder in (images_dir, ann_dir):
        if not folder.is_dir():
            raise ConvertError(f"{folder} not found: a VisDrone-DET split folder holds images/ "
                               f"and annotations/")
    out_images = dst / split
    out_images.mkdir(parents=True, exist_ok=True)
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConvertError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    images, annotations = [], []
    counts = {"images": 0, "boxes": 0, "crowd_regions": 0, "others": 0, "zero_size": 0}
    for image_id, path in enumerate(files, start=1):
        width, height = _image_size(path)
        target = out_images / path.name
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            os.symlink(path.resolve(), target)
        else:
            shutil.copy2(path, target)
        images.append({"id": image_id, "file_name": path.name, "width": width,
                       "height": height})
        counts["images"] += 1
        txt = ann_dir / (path.stem + ".txt")
        if not txt.is_file():
            continue  # an image without annotations: all background
        for line_no, line in enumerate(txt.read_text().splitlines(), start=1):
            line = line.strip().rstrip(",")
            if not line:
                continue
            try:
                fields = [int(float(v)) for v in line.split(",")]
                left, top, w, h, score, category = fields[:6]
            except ValueError:
                raise ConvertError(f"{txt} line {line_no}: expected 'left,top,width,height,"
                                   f"score,category,truncation,occlusion', got {line!r}") from None
            truncation = fields[6] if len(fields) > 6 else 0
            occlusion = fields[7] if len(fields) > 7 else 0
            if category == 11:
                counts["others"] += 1
                continue
            if category not in VISDRONE_CLASSES and category != 0:
                raise ConvertError(f"{txt} line {line_no}: unknown VisDrone category "
                                   f"{category} (0-11 are defined)")
            if w <= 0 or h <= 0:
                counts["zero_size"] += 1
                continue
            base = {"image_id": image_id, "bbox": [left, top, w, h], "area": w * h,
                    "truncation": truncation, "occlusion": occlusion}
            if category == 0:  # an ignored region: ignored for every class
                counts["crowd_regions"] += 1
                for cid in VISDRONE_CLASSES:
                    annotations.append({"id": len(annotations) + 1, **base, "category_id": cid,
                                        "iscrowd": 1})
                continue
            annotations.append({"id": len(annotations) + 1, **base, "category_id": category,
                                "iscrowd": int(score == 0)})
            counts["boxes"] += 1
    payload = {"info": {"description": f"VisDrone-DET {split}, converted from {src}"},
               "images": images, "annotations": annotations,
               "categories": [{"id": k, "name": v} for k, v in VISDRONE_CLASSES.items()]}
    out = dst / "annotations" / f"{split}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out)
    return counts


def convert_visdrone(src: Path, dst: Path, split: str | None = None,
                     link: bool = False) -> dict[str, dict]:
    """SRC is a split folder or a folder of split folders; returns counts per split."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder")
    if (src / "annotations").is_dir() and (src / "images").is_dir():
        name = split or _split_name(src)
        if name is None:
            raise ConvertError(f"cannot tell the split of {src} from its name: pass --split "
                               f"train, val or test")
        return {name: convert_visdrone_split(src, dst, name, link)}
    found = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        name = _split_name(folder)
        if name and (folder / "annotations").is_dir() and (folder / "images").is_dir():
            if name in found:
                raise ConvertError(f"two {name} splits in {src}: {found[name].name} and "
                                   f"{folder.name}; convert them one at a time with --split")
            found[name] = folder
    if not found:
        raise ConvertError(f"no VisDrone-DET split in {src}: expected images/ and annotations/ "
                           f"in it, or split folders such as VisDrone2019-DET-train/ holding "
                           f"them")
    return {name: convert_visdrone_split(folder, dst, name, link)
            for name, folder in found.items()}
