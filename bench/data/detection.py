"""Small-object detection datamodules: the embedded `digit_scenes` default and any COCO folder.

Batches are `(images, targets)`: images a float (B, 3, H, W) tensor in [0, 1] (a list of
(3, H, W) tensors when sizes differ), targets one dict per image with

    boxes    float32 (N, 4) xyxy, in pixels      labels   int64 (N,) contiguous 0..K-1
    iscrowd  int64 (N,) 1 = ignore region        area     float32 (N,) (COCO small/medium/large)
    image_id int64 ()   the image's id in its annotation file (digit_scenes: index + 1)

Crowd / ignore regions stay in the targets: the evaluator treats them as COCO iscrowd ground
truth; the detection task leaves them out of its training loss. Batches are drawn through the
classification module's `SeededBatches`, so their order depends only on (seed, epoch).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bench.data import DATASETS, DataError
from bench.data.classification import BatchKey, SeededBatches, stratified_split

SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------------------------
# digit scenes: rendering


@dataclass
class Scene:
    image: np.ndarray  # uint8 (3, S, S)
    boxes: np.ndarray  # float32 (N, 4) xyxy
    labels: np.ndarray  # int64 (N,)


def _range(name: str, value, lowest: int) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not lowest <= value[0] <= value[1]:
        raise ValueError(f"data.{name} must be a list [low, high] of integers with "
                         f"{lowest} <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


class SceneRenderer:
    """Draws one canvas: a smooth colour field with noise, lines and blobs (clutter), digits
    from `digits` at random sizes and places, and distractors (digits whose 2x2 pixel blocks are
    shuffled, and solid bars) that carry the digits' colours and sizes but no digit shape.

    The box of a digit is its ink (source pixels >= 4/16) scaled to the drawn size, so it is
    tight whatever the digit's width. Digits and distractors never overlap one another.
    """

    def __init__(self, digits: np.ndarray, labels: np.ndarray, image_size: int,
                 objects: tuple[int, int], object_size: tuple[int, int],
                 distractors: tuple[int, int]):
        self.digits = digits.astype(np.float32)  # (N, 8, 8) in [0, 1]
        self.labels = labels.astype(np.int64)
        self.size = image_size
        self.objects, self.object_size, self.distractors = objects, object_size, distractors
        ink = self.digits >= 0.25
        rows, cols = ink.any(2), ink.any(1)
        # ink extent of every source digit, in source pixels: (x0, y0, x1, y1), x1/y1 exclusive
        self.ink = np.stack([cols.argmax(1), rows.argmax(1), 8 - cols[:, ::-1].argmax(1),
                             8 - rows[:, ::-1].argmax(1)], 1).astype(np.float32)
        yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
        self._yy, self._xx = yy, xx
        # linear interpolation from a 5 x 5 grid of colours to the canvas: (S, 5) weights
        pos = np.linspace(0, 4, image_size, dtype=np.float32)
        self._spread = np.clip(1 - np.abs(pos[:, None] - np.arange(5, dtype=np.float32)), 0, 1)
        noise = np.random.default_rng(12345).standard_normal((3, 2 * image_size, 2 * image_size))
        self._noise = (noise * 0.04).astype(np.float32)
        self._weights: dict[int, np.ndarray] = {}

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.size
        coarse = rng.uniform(0.1, 0.9, (3, 5, 5)).astype(np.float32)
        canvas = self._spread @ coarse @ self._spread.T  # smooth colour field, (3, S, S)
        # pixel noise: a random window of a fixed noise field (drawing fresh noise costs more
        # than the rest of the canvas)
        ox, oy = rng.integers(0, s, 2)
        canvas += self._noise[:, oy:oy + s, ox:ox + s]
        for _ in range(rng.integers(1, 5)):  # soft blobs
            cx, cy = rng.uniform(0, s, 2)
            rx, ry = rng.uniform(3, s / 5, 2)
            x0, x1 = max(0, int(cx - 1.3 * rx)), min(s, int(cx + 1.3 * rx) + 1)
            y0, y1 = max(0, int(cy - 1.3 * ry)), min(s, int(cy + 1.3 * ry) + 1)
            yy, xx = self._yy[y0:y1, x0:x1], self._xx[y0:y1, x0:x1]
            d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
            alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.3, 0.7)
            region = canvas[:, y0:y1, x0:x1]
            region += alpha * (rng.uniform(0, 1, (3, 1, 1)).astype(np.float32) - region)
        for _ in range(rng.integers(2, 8)):  # thin lines, drawn as points half a pixel apart
            (ax, ay), (bx, by) = rng.uniform(-0.1 * s, 1.1 * s, (2, 2))
            t = np.linspace(0, 1, int(2 * math.hypot(bx - ax, by - ay)) + 2, dtype=np.float32)
            xs, ys = np.rint(ax + t * (bx - ax)).astype(int), np.rint(ay + t * (by - ay)).astype(int)
            if rng.random() < 0.5:  # two pixels wide
                xs, ys = np.concatenate([xs, xs + 1]), np.concatenate([ys, ys])
            keep = (xs >= 0) & (xs < s) & (ys >= 0) & (ys < s)
            flat = np.unique(ys[keep] * s + xs[keep])
            alpha = rng.uniform(0.4, 0.9)
            colour = rng.uniform(0, 1, (3, 1)).astype(np.float32)
            pixels = canvas.reshape(3, -1)
            pixels[:, flat] += alpha * (colour - pixels[:, flat])
        return canvas

    def _place(self, rng, h: int, w: int, taken: list) -> tuple[int, int] | None:
        s = self.size
        for _ in range(30):
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            # one pixel of margin, so no two objects touch
            if all(x + w + 1 <= a or a + c + 1 <= x or y + h + 1 <= b or b + d + 1 <= y
                   for a, b, c, d in taken):
                taken.append((x, y, w, h))
                return x, y
        return None

    def _draw(self, canvas, rng, pattern: np.ndarray, x: int, y: int, h: int, w: int) -> None:
        alpha = np.clip(self._resample(h) @ pattern @ self._resample(w).T, 0, 1)
        alpha *= rng.uniform(0.8, 1.0)
        region = canvas[:, y:y + h, x:x + w]
        # ink contrasts with what lies under it: dark on light ground, light on dark
        if region.mean() > 0.5:
            colour = rng.uniform(0.0, 0.3, (3, 1, 1))
        else:
            colour = rng.uniform(0.7, 1.0, (3, 1, 1))
        region += alpha * (colour.astype(np.float32) - region)

    def _resample(self, n: int) -> np.ndarray:
        """(n, 8) weights of antialiased bilinear resizing from 8 to n pixels (it is separable,
        so a pattern P resizes to R_h P R_w^T: far cheaper than an interpolate call each)."""
        if n not in self._weights:
            # resizing the identity along one axis gives the weights themselves
            weights = F.interpolate(torch.eye(8)[None, None], size=(n, 8), mode="bilinear",
                                    align_corners=False, antialias=True)
            self._weights[n] = weights[0, 0].numpy()
        return self._weights[n]

    def _size(self, rng) -> tuple[int, int]:
        lo, hi = self.object_size
        h = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.5)))))
        w = max(3, int(round(h * rng.uniform(0.8, 1.2))))
        return max(lo, min(hi, h)), min(w, self.size)

    def render(self, rng: np.random.Generator) -> Scene:
        canvas = self._background(rng)
        taken: list = []
        boxes, labels = [], []
        for _ in range(rng.integers(self.objects[0], self.objects[1] + 1)):
            k = int(rng.integers(len(self.digits)))
            h, w = self._size(rng)
            spot = self._place(rng, h, w, taken)
            if spot is None:
                continue
            x, y = spot
            self._draw(canvas, rng, self.digits[k], x, y, h, w)
            x0, y0, x1, y1 = self.ink[k]
            boxes.append([x + x0 * w / 8, y + y0 * h / 8, x + x1 * w / 8, y + y1 * h / 8])
            labels.append(self.labels[k])
        for _ in range(rng.integers(self.distractors[0], self.distractors[1] + 1)):
            h, w = self._size(rng)
            spot = self._place(rng, h, w, taken)
            if spot is None:
                continue
            if rng.random() < 0.75:
                blocks = self.digits[rng.integers(len(self.digits))].reshape(4, 2, 4, 2)
                blocks = blocks.transpose(0, 2, 1, 3).reshape(16, 2, 2)[rng.permutation(16)]
                pattern = blocks.reshape(4, 4, 2, 2).transpose(0, 2, 1, 3).reshape(8, 8)
            else:
                pattern = np.zeros((8, 8), np.float32)
                if rng.random() < 0.5:
                    pattern[3:5, :] = 1.0
                else:
                    pattern[:, 3:5] = 1.0
            self._draw(canvas, rng, np.ascontiguousarray(pattern), *spot, h, w)
        image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
        return Scene(image, np.asarray(boxes, np.float32).reshape(-1, 4),
                     np.asarray(labels, np.int64))


def _target(boxes, labels, image_id: int, iscrowd=None, area=None) -> dict:
    boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "boxes": boxes,
        "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
        "iscrowd": (torch.zeros(len(boxes), dtype=torch.int64) if iscrowd is None
                    else torch.as_tensor(np.asarray(iscrowd, np.int64).reshape(-1))),
        "area": torch.as_tensor(area, dtype=torch.float32).reshape(-1),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
    }


class SceneBatches(Dataset):
    """Canvases held in memory: uint8 (N, 3, S, S) + targets; a `BatchKey` gives a whole batch."""

    def __init__(self, images: torch.Tensor, targets: list[dict]):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: BatchKey):
        idx = torch.as_tensor(key.indices, dtype=torch.long)
        return self.images[idx].float().div_(255), [self.targets[i] for i in key.indices]


class FreshScenes(Dataset):
    """Training canvases rendered anew for every batch: canvas i of a batch comes from the
    generator seeded with (the batch's seed, i), and batch seeds depend on (seed, epoch), so
    every epoch brings `count` new canvases (no canvas is seen twice, nothing to memorise)."""

    def __init__(self, renderer: SceneRenderer, count: int):
        self.renderer, self.count = renderer, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: BatchKey):
        scenes = [self.renderer.render(np.random.default_rng([key.seed, i]))
                  for i in key.indices]
        images = torch.from_numpy(np.stack([s.image for s in scenes])).float().div_(255)
        return images, [_target(s.boxes, s.labels, i + 1) for s, i in zip(scenes, key.indices)]


# ---------------------------------------------------------------------------------------------
# COCO files: loading and validation


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
    image_anns: list[list[int]] = []
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) \
                or not isinstance(image.get("file_name"), str):
            raise DataError(f"{json_path}: malformed image entry #{i} ({image!r}): needs an "
                            f"integer id and a file_name")
        if image["id"] in index_of:
            raise DataError(f"{json_path}: image id {image['id']} appears twice in images")
        index_of[image["id"]] = i
        image_anns.append([])
        split.files.append(image_dir / image["file_name"])
        split.image_ids.append(image["id"])
    raw: list[list[tuple]] = [[] for _ in data["images"]]
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann:
            raise DataError(f"{json_path}: malformed annotation #{j} ({ann!r}): needs an id")
        aid = ann["id"]
        where = f"{json_path}: annotation id {aid}"
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
                      f"image (first: annotation id {split.first_clipped})", stacklevel=2)
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
                array = np.asarray(im.convert("RGB"))
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
        targets = [_target(s.boxes[i], s.labels[i], s.image_ids[i], s.iscrowd[i], s.areas[i])
                   for i in key.indices]
        if len({im.shape for im in images}) == 1:
            return torch.stack(images), targets
        return images, targets


# ---------------------------------------------------------------------------------------------
# datamodules


class _DetectionData(L.LightningDataModule):
    """Options, seeding and loaders shared by the detection datamodules."""

    dataset_name: str
    in_channels = 3
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(self, *, seed, root=None, download=False, batch_size=8, num_workers=0,
                 **options):
        super().__init__()
        allowed = DATASETS[self.dataset_name].options
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown option(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(allowed)}")
        self.options = {**allowed, **options}
        self.seed = int(seed)
        self.root = Path(root).expanduser() if root is not None else None
        self.download = bool(download)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def check(self) -> None:
        """Raise DataError on unusable input; the runner calls this before any training."""

    def _loader(self, dataset, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        n = len(dataset)
        sampler = SeededBatches(n, self.batch_size, seed=self.seed, shuffle=train,
                                drop_last=train and n >= self.batch_size)
        return DataLoader(dataset, batch_size=None, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)


class DigitScenesData(_DetectionData):
    """The embedded detection default: handwritten digits (scikit-learn's bundled set) drawn
    at 6-32 px on cluttered `image_size` canvases, with distractors; 10 classes, no download.

    Each split draws its digits from its own part of the 1797 source digits (a stratified
    split), so test digits are handwriting the model never saw. Canvas i of a split is
    rendered from the generator seeded with (seed, split, i): the same seed gives the same
    canvases, whatever the split sizes. `write_coco(folder)` saves them as a COCO folder.

    With data.fresh_train (the default) training canvases are rendered anew for every batch
    (`FreshScenes`): train_images is then the number of canvases per epoch, each epoch brings
    new ones, and a from-scratch detector cannot memorise a fixed set (with a fixed set of a few
    hundred canvases it does, and validation AP stalls). val and test are fixed sets.
    """

    dataset_name = "digit_scenes"
    num_classes = 10
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.25, 0.25, 0.25)
    categories = [{"id": d, "name": str(d)} for d in range(10)]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        o = self.options
        self.image_size = o["image_size"]
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or self.image_size < 32:
            raise ValueError(f"data.image_size must be an integer >= 32, got {self.image_size!r}")
        self.counts = {}
        for split in SPLITS:
            n = o[f"{split}_images"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"data.{split}_images must be a positive integer, got {n!r}")
            self.counts[split] = n
        self.objects = _range("objects", o["objects"], 0)
        self.object_size = _range("object_size", o["object_size"], 3)
        if self.object_size[1] > self.image_size:
            raise ValueError(f"data.object_size {list(self.object_size)} does not fit on "
                             f"{self.image_size}x{self.image_size} canvases")
        self.distractors = _range("distractors", o["distractors"], 0)
        if not isinstance(o["fresh_train"], bool):
            raise ValueError(f"data.fresh_train must be true or false, got {o['fresh_train']!r}")
        self.fresh_train = o["fresh_train"]
        self.example_image_size = (self.image_size, self.image_size)
        self.scenes: dict[str, list[Scene]] = {}

    def renderer(self, split: str) -> SceneRenderer:
        from sklearn.datasets import load_digits

        digits = load_digits()
        parts = dict(zip(SPLITS, stratified_split(digits.target, [0.2, 0.2], self.seed)))
        pool = parts[split]
        return SceneRenderer(digits.images[pool] / 16.0, digits.target[pool], self.image_size,
                             self.objects, self.object_size, self.distractors)

    def render(self, split: str) -> list[Scene]:
        if split not in self.scenes:
            renderer = self.renderer(split)
            code = SPLITS.index(split)
            self.scenes[split] = [renderer.render(np.random.default_rng([self.seed, code, i]))
                                  for i in range(self.counts[split])]
        return self.scenes[split]

    def _dataset(self, split: str) -> SceneBatches:
        scenes = self.render(split)
        images = torch.from_numpy(np.stack([s.image for s in scenes]))
        targets = [_target(s.boxes, s.labels, i + 1) for i, s in enumerate(scenes)]
        return SceneBatches(images, targets)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            if self.train_set is None and stage in (None, "fit"):
                if self.fresh_train:
                    self.train_set = FreshScenes(self.renderer("train"), self.counts["train"])
                else:
                    self.train_set = self._dataset("train")
            if self.val_set is None:
                self.val_set = self._dataset("val")
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._dataset("test")

    def write_coco(self, folder, splits=SPLITS) -> Path:
        """Write the canvases as a COCO folder: <folder>/<split>/NNNNNN.png and
        <folder>/annotations/<split>.json (boxes [x, y, w, h], category ids = digits 0-9), the
        layout `coco`'s defaults expect. The train split written is the fixed set (what
        fresh_train: false trains on)."""
        from PIL import Image

        folder = Path(folder)
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        for split in splits:
            (folder / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for i, scene in enumerate(self.render(split)):
                name = f"{i + 1:06d}.png"
                Image.fromarray(scene.image.transpose(1, 2, 0)).save(folder / split / name)
                images.append({"id": i + 1, "file_name": name, "width": self.image_size,
                               "height": self.image_size})
                for (x0, y0, x1, y1), label in zip(scene.boxes.tolist(), scene.labels.tolist()):
                    w, h = x1 - x0, y1 - y0
                    annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                        "category_id": int(label),
                                        "bbox": [round(v, 3) for v in (x0, y0, w, h)],
                                        "area": round(w * h, 3), "iscrowd": 0})
            info = {"description": f"digit_scenes {split}, seed {self.seed}",
                    "options": {k: v for k, v in self.options.items()}}
            payload = {"info": info, "images": images, "annotations": annotations,
                       "categories": self.categories}
            tmp = folder / "annotations" / f".{split}.json.tmp"
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, folder / "annotations" / f"{split}.json")
        return folder


class COCOData(_DetectionData):
    """Any COCO-format detection dataset on disk (VisDrone converted, AI-TOD, TinyPerson, ...).

    data.train / data.val / data.test: {images: FOLDER, annotations: FILE.json}, relative to
    data.root unless absolute; test is optional (val is used when it is not set). Category ids
    are mapped to contiguous labels in id order (from the training file's categories);
    iscrowd / ignore annotations reach the evaluator as crowd regions.
    """

    dataset_name = "coco"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.paths: dict[str, tuple[Path, Path]] = {}
        for split in SPLITS:
            entry = self.options[split]
            if entry is None and split == "test":
                continue
            if not isinstance(entry, dict) or set(entry) - {"images", "annotations"}:
                raise ValueError(f"data.{split} must be a mapping {{images: FOLDER, annotations: "
                                 f"FILE.json}}, got {entry!r}")
            images, annotations = entry.get("images"), entry.get("annotations")
            if split == "test" and images is None and annotations is None:
                continue
            if not isinstance(images, str) or not isinstance(annotations, str):
                raise ValueError(f"data.{split}.images and data.{split}.annotations must both be "
                                 f"paths, got {entry!r}")
            self.paths[split] = (self._path(images), self._path(annotations))
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
