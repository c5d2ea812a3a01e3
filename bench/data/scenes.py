"""`digit_scenes`, the embedded detection default: handwritten digits drawn small on cluttered
canvases among distractors, rendered from seeds (no download)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.data import DataError
from bench.data.base import (SPLITS, BatchKey, DetectionData, detection_target, int_range,
                             stratified_split)


@dataclass
class Scene:
    image: np.ndarray  # uint8 (3, S, S)
    boxes: np.ndarray  # float32 (N, 4) xyxy
    labels: np.ndarray  # int64 (N,)


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
            xs = np.rint(ax + t * (bx - ax)).astype(int)
            ys = np.rint(ay + t * (by - ay)).astype(int)
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
        return images, [detection_target(s.boxes, s.labels, i + 1)
                        for s, i in zip(scenes, key.indices)]


class DigitScenesData(DetectionData):
    """The embedded detection default: handwritten digits (scikit-learn's bundled set) drawn
    at data.object_size px on cluttered `image_size` canvases, with distractors; 10 classes.

    Each split draws its digits from its own part of the 1797 source digits (a stratified
    split drawn from data.split_seed), so test digits are handwriting the model never saw.
    Canvas i of val or test is rendered from the generator seeded with (split_seed, split, i),
    so every run seed and strategy is measured on the same canvases; canvas i of the fixed
    training set (fresh_train: false) from (seed, split, i), the run's seed. Either way canvas
    i does not depend on the split sizes. `write_coco(folder)` saves them as a COCO folder.

    With data.fresh_train (the default) training canvases are rendered anew for every batch
    (`FreshScenes`): train_images is then the number of canvases per epoch, each epoch brings
    new ones, and a from-scratch detector cannot memorise a fixed set. val and test are fixed
    sets.
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
            raise DataError(f"data.image_size must be an integer >= 32, got {self.image_size!r}")
        self.counts = {}
        for split in SPLITS:
            n = o[f"{split}_images"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise DataError(f"data.{split}_images must be a positive integer, got {n!r}")
            self.counts[split] = n
        self.objects = int_range("objects", o["objects"], 0)
        self.object_size = int_range("object_size", o["object_size"], 3)
        if self.object_size[1] > self.image_size:
            raise DataError(f"data.object_size {list(self.object_size)} does not fit on "
                             f"{self.image_size}x{self.image_size} canvases")
        self.distractors = int_range("distractors", o["distractors"], 0)
        if not isinstance(o["fresh_train"], bool):
            raise DataError(f"data.fresh_train must be true or false, got {o['fresh_train']!r}")
        self.fresh_train = o["fresh_train"]
        self.example_image_size = (self.image_size, self.image_size)
        self.scenes: dict[str, list[Scene]] = {}

    def renderer(self, split: str) -> SceneRenderer:
        from sklearn.datasets import load_digits

        digits = load_digits()
        parts = dict(zip(SPLITS, stratified_split(digits.target, [0.2, 0.2], self.split_seed)))
        pool = parts[split]
        return SceneRenderer(digits.images[pool] / 16.0, digits.target[pool], self.image_size,
                             self.objects, self.object_size, self.distractors)

    def render(self, split: str) -> list[Scene]:
        if split not in self.scenes:
            renderer = self.renderer(split)
            code = SPLITS.index(split)
            # training data follows the run seed; what runs are measured on, the split seed
            seed = self.seed if split == "train" else self.split_seed
            self.scenes[split] = [renderer.render(np.random.default_rng([seed, code, i]))
                                  for i in range(self.counts[split])]
        return self.scenes[split]

    def _dataset(self, split: str) -> SceneBatches:
        scenes = self.render(split)
        images = torch.from_numpy(np.stack([s.image for s in scenes]))
        targets = [detection_target(s.boxes, s.labels, i + 1) for i, s in enumerate(scenes)]
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
            info = {"description": f"digit_scenes {split}, seed {self.seed}, split seed "
                                   f"{self.split_seed}",
                    "options": {k: v for k, v in self.options.items()}}
            payload = {"info": info, "images": images, "annotations": annotations,
                       "categories": self.categories}
            tmp = folder / "annotations" / f".{split}.json.tmp"
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, folder / "annotations" / f"{split}.json")
        return folder
