"""Probe datasets: small generated classification tasks where one kind of cue decides the
answer, so the ranking of the fusion strategies is known before training (docs/probes.md).

- `probe_context`: two handwritten digits at the two ends of a wide strip; the label is
  whether they are the same digit. No location of a conv network of resnet_tiny's depth sees
  both digits, and global average pooling + a linear classifier can only threshold a sum
  a(left) + b(right), which cannot say "same" (sum the conditions over a cyclic shift of the
  classes: both sides are equal), so a conv network stays near the best additive rule
  (`additive_ceiling`), while global attention in stages 3-4 can relate the two digits.
- `probe_local`: one digit among clutter (lines, blobs) and distractors that carry digit
  strokes in a shuffled arrangement; the label is the digit. The class lies in the
  arrangement of strokes within a few pixels, so it needs the local (unary / conv) term;
  `binary` (attention without the diagonal, no unary) loses it.

Both are rendered from seeds, with no download: the glyphs are scikit-learn's bundled 8x8
digits, each split drawing from its own stratified part of them (split by data.split_seed), so
test glyphs are handwriting the model never saw. Image i of a split comes from the generator
seeded with (split_seed, split, i), as digits' fixed split: every run seed and strategy trains
and is measured on the same images; the run's seed orders the batches and initialises the model.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import DataError
from bench.data.base import (SPLITS, SeededDataModule, TensorBatches, int_range, positive_int,
                              stratified_split)

# resnet_tiny's receptive field at its last feature map (3x3 convs: stem 1, layer1 1,
# layer2 1 at stride 1, layer3 2 at stride 2 and 4, layer4 1 at stride 4): 27 px; a test
# measures it on the model
RESNET_TINY_RF = 27


def glyph_pool(split: str, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The split's part of the bundled digits: (N, 8, 8) floats in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    parts = dict(zip(SPLITS, stratified_split(digits.target, [0.2, 0.2], split_seed)))
    pool = parts[split]
    return (digits.images[pool] / 16.0).astype(np.float32), digits.target[pool].astype(np.int64)


def resized(glyphs: np.ndarray, size: int) -> np.ndarray:
    """(N, 8, 8) -> (N, size, size), antialiased bilinear."""
    x = torch.from_numpy(glyphs).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.squeeze(1).clamp_(0, 1).numpy()


class ContextProbe:
    """Renders the context probe: an `height` x `width` strip, black, with a digit of
    `digit_size` px near each end (at most `jitter` px in from its end, anywhere vertically).
    Label 1 when both are the same digit (different handwriting), 0 when not; half of each."""

    def __init__(self, glyphs: np.ndarray, labels: np.ndarray, height: int, width: int,
                 digit_size: int, jitter: int, classes: int):
        keep = labels < classes
        self.glyphs, self.labels = resized(glyphs[keep], digit_size), labels[keep]
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(classes)]
        self.height, self.width, self.size = height, width, digit_size
        self.jitter, self.classes = jitter, classes

    def min_span(self) -> int:
        """Fewest pixels a window must span in x to hold ink of both digits."""
        right_start = self.width - self.size - self.jitter
        left_end = self.jitter + self.size - 1
        return right_start - left_end + 1

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, int, tuple[int, int]]:
        """(image (height, width) float32, label, (left digit, right digit))."""
        same = rng.random() < 0.5
        a = int(rng.integers(self.classes))
        b = a if same else int((a + rng.integers(1, self.classes)) % self.classes)
        i = rng.choice(self.by_class[a])
        j = rng.choice(self.by_class[b][self.by_class[b] != i]) if same else \
            rng.choice(self.by_class[b])
        image = np.zeros((self.height, self.width), np.float32)
        s = self.size
        xs = (int(rng.integers(0, self.jitter + 1)),
              self.width - s - int(rng.integers(0, self.jitter + 1)))
        for k, x in zip((i, j), xs):
            y = int(rng.integers(0, self.height - s + 1))
            image[y:y + s, x:x + s] = np.maximum(image[y:y + s, x:x + s], self.glyphs[k])
        return image, int(same), (a, b)

    def additive_ceiling(self) -> float:
        """The best accuracy of a rule "same iff a(left) + b(right) > t" on this probe: the best
        "both in S" rule, |S| = s, is right on s / k of the same pairs and 1 - s(s-1) / (k(k-1))
        of the others (an upper bound for a conv network with pooling, up to glyph noise)."""
        k = self.classes
        return max(0.5 * (s / k + 1 - s * (s - 1) / (k * (k - 1))) for s in range(1, k + 1))


class LocalProbe:
    """Renders the local probe: an `image_size` square, black, with one digit and
    `distractors` glyphs made of a digit's 2x2 pixel blocks in shuffled order (digit_scenes'
    distractors: the same strokes and ink, no digit's arrangement), all `digit_size` px
    ([low, high]) and apart; the label is the digit."""

    def __init__(self, glyphs: np.ndarray, labels: np.ndarray, image_size: int,
                 digit_size: tuple[int, int], distractors: tuple[int, int]):
        self.glyphs, self.labels = glyphs, labels
        self.size, self.digit_size, self.distractors = image_size, digit_size, distractors
        # (size, 8) resizing weights: a pattern P resizes to R P R^T (resizing is separable)
        eye = torch.eye(8)[None, None]
        self._weights = {n: F.interpolate(eye, size=(n, 8), mode="bilinear", antialias=True,
                                          align_corners=False)[0, 0].numpy()
                         for n in range(digit_size[0], digit_size[1] + 1)}

    def glyph(self, k: int, size: int, shuffle: np.random.Generator | None = None):
        pattern = self.glyphs[k]
        if shuffle is not None:
            blocks = pattern.reshape(4, 2, 4, 2).transpose(0, 2, 1, 3).reshape(16, 2, 2)
            pattern = blocks[shuffle.permutation(16)].reshape(4, 4, 2, 2) \
                .transpose(0, 2, 1, 3).reshape(8, 8)
        weights = self._weights[size]
        return np.clip(weights @ pattern @ weights.T, 0, 1)

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray]:
        """(image (1, S, S) float32 in [0, 1], label, the digit's box xyxy)."""
        s = self.size
        image = np.zeros((s, s), np.float32)
        taken: list = []
        count = 1 + int(rng.integers(self.distractors[0], self.distractors[1] + 1))
        box = None
        for n in range(count):  # the digit first: it always finds a place
            size = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            for _ in range(30):
                x, y = (int(v) for v in rng.integers(0, s - size + 1, 2))
                if all(x + size <= a or a + c <= x or y + size <= b or b + c <= y
                       for a, b, c in taken):
                    break
            else:
                continue
            taken.append((x, y, size))
            k = int(rng.integers(len(self.glyphs)))
            pattern = self.glyph(k, size, rng if n else None)
            image[y:y + size, x:x + size] = pattern * rng.uniform(0.7, 1.0)
            if n == 0:
                label, box = int(self.labels[k]), np.array([x, y, x + size, y + size])
        return image[None], label, box


class ProbeData(SeededDataModule):
    """What both probes share: the split sizes, rendering each split, the loaders."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counts = {split: positive_int(f"{split}_images", self.options[f"{split}_images"])
                       for split in SPLITS}

    def probe(self, split: str):
        raise NotImplementedError

    def render(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images (N, C, H, W) float in [0, 1] and labels (N,)."""
        return _rendered(self, split, self.split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sets = {}
        for split in SPLITS:
            images, labels = self.render(split)
            sets[split] = TensorBatches(images, labels, self.normalise)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]

    def normalise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # fixed statistics (no augmentation: the probes test cues, not invariances)
        x = (x - self.mean) / self.std
        return x.expand(-1, 3, -1, -1).contiguous()


# a worker process trains every strategy on the same val/test images: render them once
_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()


def _rendered(module: ProbeData, split: str, seed: int):
    key = (type(module).__name__, split, seed, module.split_seed, module.counts[split],
           repr(sorted(module.options.items())))
    if key not in _CACHE:
        probe = module.probe(split)
        code = SPLITS.index(split)
        images, labels = [], []
        for i in range(module.counts[split]):
            image, label, _ = probe.render(np.random.default_rng([seed, code, i]))
            images.append(image)
            labels.append(label)
        images = torch.from_numpy(np.stack(images))
        if images.dim() == 3:
            images = images.unsqueeze(1)
        _CACHE[key] = images, torch.tensor(labels, dtype=torch.int64)
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    return _CACHE[key]


class ContextProbeData(ProbeData):
    """`probe_context`: same digit at both ends of an image_size x width strip, or not."""

    dataset_name = "probe_context"
    num_classes = 2
    mean, std = 0.07, 0.2

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        o = self.options
        self.height = positive_int("image_size", o["image_size"])
        self.width = positive_int("width", o["width"])
        self.digit_size = positive_int("digit_size", o["digit_size"])
        self.jitter = o["jitter"]
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int) or self.jitter < 0:
            raise DataError(f"data.jitter must be an integer >= 0, got {self.jitter!r}")
        self.classes = o["classes"]
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) \
                or not 2 <= self.classes <= 10:
            raise DataError(f"data.classes must be an integer from 2 to 10, "
                             f"got {self.classes!r}")
        if self.digit_size > self.height or 2 * (self.digit_size + self.jitter) > self.width:
            raise DataError(f"data.digit_size {self.digit_size} (jitter {self.jitter}) does "
                             f"not fit twice on {self.height}x{self.width} strips")
        self.example_image_size = (self.height, self.width)

    def probe(self, split: str) -> ContextProbe:
        glyphs, labels = glyph_pool(split, self.split_seed)
        return ContextProbe(glyphs, labels, self.height, self.width, self.digit_size,
                            self.jitter, self.classes)


class LocalProbeData(ProbeData):
    """`probe_local`: which digit is on an image_size canvas among clutter and distractors."""

    dataset_name = "probe_local"
    num_classes = 10
    mean, std = 0.1, 0.25

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        o = self.options
        self.image_size = positive_int("image_size", o["image_size"])
        self.digit_size = int_range("digit_size", o["digit_size"], 3)
        self.distractors = int_range("distractors", o["distractors"], 0)
        if self.digit_size[1] > self.image_size:
            raise DataError(f"data.digit_size {list(self.digit_size)} does not fit on "
                             f"{self.image_size}x{self.image_size} canvases")
        self.example_image_size = (self.image_size, self.image_size)

    def probe(self, split: str) -> LocalProbe:
        glyphs, labels = glyph_pool(split, self.split_seed)
        return LocalProbe(glyphs, labels, self.image_size, self.digit_size, self.distractors)

