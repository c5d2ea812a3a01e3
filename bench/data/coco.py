"""Any COCO-format detection folder: reading and validating its annotation files, and serving
its images."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data import DataError, DataWarning
from bench.data.base import BatchKey, DetectionData, detection_target
from bench.data.options import coco_splits
from bench.data.pixels import to_rgb


@dataclass
class CocoSplit:
    """One validated split of a COCO dataset: image paths and per-image targets (numpy)."""

    json_path: Path
    image_dir: Path
    files: list[Path] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width)
    image_ids: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    iscrowd: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    clipped: int = 0  # boxes that stuck out of their image a little and were clipped
    first_clipped: int | None = None  # annotation id of the first one


def read_coco_json(path: Path) -> dict:
    """Parse an annotation file; DataError naming the file (and line/column) when it cannot."""
    if not path.is_file():
        raise DataError(f"annotation file {path} not found: check data.<split>.annotations "
                        f"(relative to data.root unless absolute)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}; "
                        f"fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read annotation file {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: malformed COCO file: expected a JSON object with images, "
                        f"annotations and categories, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: malformed COCO file: the top-level key {key!r} is "
                            f"{'missing' if key not in data else 'not a list'}; a COCO "
                            f"detection file needs images, annotations and categories lists")
    return data


def coco_categories(path: Path, data: dict) -> list[dict]:
    categories, seen = [], set()
    for i, cat in enumerate(data["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{path}: malformed category #{i} ({cat!r}): needs an integer id")
        if cid in seen:
            raise DataError(f"{path}: category id {cid} appears twice in categories")
        seen.add(cid)
        categories.append({"id": cid, "name": str(cat.get("name", cid))})
    if not categories:
        raise DataError(f"{path}: the categories list is empty; list every class as "
                        f"{{\"id\": ..., \"name\": ...}}")
    return sorted(categories, key=lambda c: c["id"])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_coco_split(json_path: Path, image_dir: Path, category_index: dict[int, int],
                    data: dict | None = None, min_inside: float = 0.5) -> CocoSplit:
    """Validate one split and turn it into targets (labels through `category_index`).

    Fatal (DataError naming the file and the annotation or image id): malformed JSON or
    entries, a missing image file, an annotation for an unknown image or category, a box of
    zero or negative size, a box that lies (mostly) outside its image. Fixable: a box that sticks
    out of its image but keeps at least `min_inside` of its area inside is clipped and counted.
    Images without annotations are kept (all-background images).
    """
    if data is None:
        data = read_coco_json(json_path)
    split = CocoSplit(json_path, image_dir)
    index_of: dict[int, int] = {}
    file_ids: dict[str, int] = {}
    image_anns: list[list[int]] = []
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) \
                or not isinstance(image.get("file_name"), str):
            raise DataError(f"{json_path}: malformed image entry #{i} ({image!r}): needs an "
                            f"integer id and a file_name")
        if image["id"] in index_of:
            raise DataError(f"{json_path}: image id {image['id']} appears twice in images")
        if image["file_name"] in file_ids:  # trained and scored twice, its boxes split
            raise DataError(f"{json_path}: image ids {file_ids[image['file_name']]} and "
                            f"{image['id']} both name the file {image['file_name']}; list each "
                            f"image once (move the second entry's annotations to the first)")
        file_ids[image["file_name"]] = image["id"]
        index_of[image["id"]] = i
        image_anns.append([])
        split.files.append(image_dir / image["file_name"])
        split.image_ids.append(image["id"])
    raw: list[list[tuple]] = [[] for _ in data["images"]]
    ann_ids: set = set()
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann:
            raise DataError(f"{json_path}: malformed annotation #{j} ({ann!r}): needs an id")
        aid = ann["id"]
        where = f"{json_path}: annotation id {aid}"
        if repr(aid) in ann_ids:  # the same box counted twice (or two boxes under one id)
            raise DataError(f"{where} appears twice in annotations; give each annotation its "
                            f"own id, or remove the copy")
        ann_ids.add(repr(aid))
        image_id = ann.get("image_id")
        if image_id not in index_of:
            raise DataError(f"{where} refers to image_id {image_id!r}, which is not in images; "
                            f"add the image or remove the annotation")
        i = index_of[image_id]
        where += f" (image {split.files[i].name})"
        cid = ann.get("category_id")
        if cid not in category_index:
            raise DataError(f"{where} has unknown category_id {cid!r}; known categories: "
                            f"{sorted(category_index)}. Add it to the training file's "
                            f"categories or fix the annotation")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise DataError(f"{where}: malformed bbox {bbox!r}; expected [x, y, width, height] "
                            f"(four finite numbers)")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise DataError(f"{where} has a zero-size box {bbox} (width and height must be "
                            f"positive); remove the annotation or fix its bbox")
        for flag in ("iscrowd", "ignore"):  # bool("false") is True: a string would misread
            if ann.get(flag, 0) not in (0, 1) or isinstance(ann.get(flag), str):
                raise DataError(f"{where}: {flag} is {ann.get(flag)!r}; expected 0 or 1 (or "
                                f"true/false)")
        crowd = int(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
        area = ann.get("area")
        area = float(area) if _number(area) and area > 0 else float(bbox[2] * bbox[3])
        raw[i].append((aid, bbox, category_index[cid], crowd, area))
        image_anns[i].append(aid)
    for i, image in enumerate(data["images"]):
        path = split.files[i]
        if not path.is_file():
            anns = image_anns[i]
            shown = ", ".join(map(str, anns[:5])) + (", ..." if len(anns) > 5 else "")
            raise DataError(f"{json_path}: image id {image['id']}: file {path} does not exist "
                            f"(annotation ids: {shown or 'none'}); check data.<split>.images or "
                            f"remove the image entry")
        height, width = image.get("height"), image.get("width")
        if not (_number(height) and _number(width) and height > 0 and width > 0):
            from PIL import Image

            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (OSError, ValueError) as e:
                raise DataError(f"{json_path}: image id {image['id']}: cannot read {path}: "
                                f"{e}") from None
        split.sizes.append((int(height), int(width)))
        boxes, labels, crowds, areas = [], [], [], []
        for aid, (x, y, w, h), label, crowd, area in raw[i]:
            x0, y0, x1, y1 = x, y, x + w, y + h
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
                cx1, cy1 = min(x1, float(width)), min(y1, float(height))
                inside = max(0.0, cx1 - cx0) * max(0.0, cy1 - cy0)
                if inside < min_inside * w * h:
                    raise DataError(
                        f"{json_path}: annotation id {aid} (image {path.name}): box "
                        f"{[x, y, w, h]} lies {'outside' if inside == 0 else 'mostly outside'} "
                        f"the {width}x{height} image; fix the bbox (x, y, width, height in "
                        f"pixels) or the image's width/height, or remove the annotation")
                x0, y0, x1, y1 = cx0, cy0, cx1, cy1
                split.clipped += 1
                if split.first_clipped is None:
                    split.first_clipped = aid
            boxes.append((x0, y0, x1, y1))
            labels.append(label)
            crowds.append(crowd)
            areas.append(area)
        split.boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        split.labels.append(np.asarray(labels, np.int64))
        split.iscrowd.append(np.asarray(crowds, np.int64))
        split.areas.append(np.asarray(areas, np.float32))
    if split.clipped:
        warnings.warn(f"{json_path}: clipped {split.clipped} box(es) that stuck out of their "
                      f"image (first: annotation id {split.first_clipped})", DataWarning,
                      stacklevel=2)
    return split


class CocoImages(Dataset):
    """Images decoded from disk with PIL; a `BatchKey` gives (images, targets) for the batch."""

    def __init__(self, split: CocoSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split.files)

    def _image(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.split.files[i]
        try:
            with Image.open(path) as im:
                array = np.asarray(to_rgb(im, path))
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
            raise DataError(f"cannot read image {path}: {e}; replace the file or remove it from "
                            f"{self.split.json_path}") from e
        if array.shape[:2] != self.split.sizes[i]:
            raise DataError(f"{self.split.json_path}: image id {self.split.image_ids[i]}: "
                            f"{path} is {array.shape[1]}x{array.shape[0]}, but the file says "
                            f"{self.split.sizes[i][1]}x{self.split.sizes[i][0]}; fix its "
                            f"width/height")
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, key: BatchKey):
        images = [self._image(i) for i in key.indices]
        s = self.split
        targets = [detection_target(s.boxes[i], s.labels[i], s.image_ids[i], s.iscrowd[i],
                                    s.areas[i])
                   for i in key.indices]
        if len({im.shape for im in images}) == 1:
            return torch.stack(images), targets
        return images, targets


class COCOData(DetectionData):
    """Any COCO-format detection dataset on disk (VisDrone converted, AI-TOD, TinyPerson, ...).

    data.train / data.val / data.test: {images: FOLDER, annotations: FILE.json}, relative to
    data.root unless absolute; test is optional (val is used when it is not set). Category ids
    are mapped to contiguous labels in id order (from the training file's categories);
    iscrowd / ignore annotations reach the evaluator as crowd regions.
    """

    dataset_name = "coco"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.paths: dict[str, tuple[Path, Path]] = {
            split: (self._path(images), self._path(labels))
            for split, (images, labels) in coco_splits(self.options).items()}
        self._json: dict[str, dict] = {}
        self._splits: dict[str, CocoSplit] | None = None
        self._categories: list[dict] | None = None

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        if path.is_absolute():
            return path
        if self.root is None:
            return Path(text)  # relative to the working directory; check() says so if missing
        return self.root / path

    def _read(self, split: str) -> dict:
        if split not in self._json:
            self._json[split] = read_coco_json(self.paths[split][1])
        return self._json[split]

    @property
    def categories(self) -> list[dict]:
        """The training file's categories, in label order."""
        if self._categories is None:
            self._check_root()
            self._categories = coco_categories(self.paths["train"][1], self._read("train"))
        return self._categories

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def example_image_size(self) -> tuple[int, int]:
        """(height, width) of the first training image, for the FLOPs example input."""
        if self._splits is not None:
            sizes = self._splits["train"].sizes
        else:
            sizes = [(image.get("height"), image.get("width"))
                     for image in self._read("train")["images"][:1]]
        for height, width in sizes:
            if _number(height) and _number(width):
                return int(height), int(width)
        return 512, 512

    def _check_root(self) -> None:
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder: set data.root to the "
                            f"dataset's folder (data.<split>.images and .annotations are "
                            f"relative to it)")

    def check(self) -> None:
        """Validate every split (see `load_coco_split`); fatal problems raise DataError."""
        if self._splits is not None:
            return
        self._check_root()
        index = {c["id"]: label for label, c in enumerate(self.categories)}
        splits = {}
        for split, (images, annotations) in self.paths.items():
            if not images.is_dir():
                raise DataError(f"image folder {images} (data.{split}.images) not found"
                                + ("" if self.root is not None else
                                   "; data.root is not set, so it is read from the working "
                                   "directory"))
            splits[split] = load_coco_split(annotations, images, index, self._read(split))
        splits.setdefault("test", splits["val"])
        self._json.clear()  # the parsed files are no longer needed
        self._splits = splits

    @property
    def clipped(self) -> dict[str, int]:
        """Boxes clipped to their image, per split (after check())."""
        return {k: v.clipped for k, v in (self._splits or {}).items()}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None and self.test_set is not None:
            return
        self.check()
        self.train_set = CocoImages(self._splits["train"])
        self.val_set = CocoImages(self._splits["val"])
        self.test_set = CocoImages(self._splits["test"])
