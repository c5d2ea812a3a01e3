"""The datasets' `data.*` options checked without building anything (no torch): each dataset's
spec names its check (bench/data/__init__.py), the config loader runs it on every run, so
`--dry-run` refuses what a datamodule would refuse later. The datamodules call the same helpers on
their own options."""
from __future__ import annotations

from bench.data import DataError


def positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"data.{name} must be a positive integer, got {value!r}")
    return value


def int_range(name: str, value, lowest: int) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not lowest <= value[0] <= value[1]:
        raise DataError(f"data.{name} must be a list [low, high] of integers with "
                        f"{lowest} <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


def fraction(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DataError(f"data.{name} must be a number between 0 and 1 (exclusive), "
                        f"got {value!r}")
    return float(value)


def _counts(o: dict) -> None:
    for split in ("train", "val", "test"):
        positive_int(f"{split}_images", o[f"{split}_images"])


def check_digits(o: dict) -> None:
    val, test = fraction("val_fraction", o["val_fraction"]), fraction("test_fraction",
                                                                      o["test_fraction"])
    if val + test >= 1:
        raise DataError(f"data.val_fraction + data.test_fraction must be below 1, got "
                        f"{val} + {test}")


def check_scenes(o: dict) -> None:
    size = o["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise DataError(f"data.image_size must be an integer >= 32, got {size!r}")
    _counts(o)
    int_range("objects", o["objects"], 0)
    low_high = int_range("object_size", o["object_size"], 3)
    if low_high[1] > size:
        raise DataError(f"data.object_size {list(low_high)} does not fit on {size}x{size} "
                        f"canvases")
    int_range("distractors", o["distractors"], 0)


def check_probe_context(o: dict) -> None:
    _counts(o)
    height, width = positive_int("image_size", o["image_size"]), positive_int("width", o["width"])
    digit, jitter, classes = positive_int("digit_size", o["digit_size"]), o["jitter"], o["classes"]
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise DataError(f"data.jitter must be an integer >= 0, got {jitter!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= 10:
        raise DataError(f"data.classes must be an integer from 2 to 10, got {classes!r}")
    if digit > height or 2 * (digit + jitter) > width:
        raise DataError(f"data.digit_size {digit} (jitter {jitter}) does not fit twice on "
                        f"{height}x{width} strips")


def check_probe_local(o: dict) -> None:
    _counts(o)
    size = positive_int("image_size", o["image_size"])
    digit = int_range("digit_size", o["digit_size"], 3)
    int_range("distractors", o["distractors"], 0)
    if digit[1] > size:
        raise DataError(f"data.digit_size {list(digit)} does not fit on {size}x{size} canvases")


def coco_splits(o: dict) -> dict[str, tuple[str, str]]:
    """Each given split's (images folder, annotations file) as written; DataError naming the key
    where one is malformed (the test split may be left out)."""
    out = {}
    for split in ("train", "val", "test"):
        entry = o[split]
        if entry is None and split == "test":
            continue
        if not isinstance(entry, dict) or set(entry) - {"images", "annotations"}:
            raise DataError(f"data.{split} must be a mapping {{images: FOLDER, annotations: "
                            f"FILE.json}}, got {entry!r}")
        images, annotations = entry.get("images"), entry.get("annotations")
        if split == "test" and images is None and annotations is None:
            continue
        if not isinstance(images, str) or not isinstance(annotations, str):
            raise DataError(f"data.{split}.images and data.{split}.annotations must both be "
                            f"paths, got {entry!r}")
        out[split] = (images, annotations)
    return out


def check_coco(o: dict) -> None:
    coco_splits(o)


def check_val_fraction(o: dict) -> None:
    fraction("val_fraction", o["val_fraction"])
