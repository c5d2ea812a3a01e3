"""Classification datamodules: the embedded digits default, CIFAR-10/100 and ImageFolder trees.

Every loader draws its randomness from the run's seed alone, through `SeededBatches`: the
sampler (which always runs in the main process) hands each batch a key holding its indices and
its own augmentation seed. Batches are therefore the same whatever `num_workers` is, and an
epoch's batches depend only on (seed, epoch), so a run resumed at epoch k sees what an
uninterrupted run sees there.

Batches are `(images, labels)`: float32 (B, 3, H, W) normalised images and int64 (B,) labels.
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data import DATASETS, DataError

# ---------------------------------------------------------------------------------------------
# seeded batching


class BatchKey(NamedTuple):
    """What the sampler hands the dataset: one whole batch and the seed for its augmentation."""

    indices: list[int]
    seed: int


class SeededBatches(Sampler):
    """Yields one `BatchKey` per batch; the order and the seeds depend only on (seed, epoch).

    Lightning calls `set_epoch` before every epoch; iterated by hand, the epoch advances by itself.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, shuffle: bool,
                 drop_last: bool):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return math.ceil(self.num_items / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
        seeds = rng.integers(0, 2**62, size=len(self))
        for b in range(len(self)):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield BatchKey(chunk.tolist(), int(seeds[b]))


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions) parts of round(N * fraction) items plus the rest (first).

    Returns [rest, part_1, part_2, ...], each sorted. Items are ordered so that every prefix
    holds the classes in their overall proportions (within one item per class): each item gets
    the key (its rank in a shuffled copy of its class + jitter) / class size, and parts are taken
    from the front of that order. Unlike per-class rounding this keeps the part sizes exact and
    non-empty on tiny data sets.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    order = np.argsort(keys, kind="stable")
    sizes = [max(1, round(len(labels) * f)) for f in fractions]
    if sum(sizes) >= len(labels):
        raise DataError(f"{len(labels)} items are too few to split off {sizes} and keep a "
                        f"training part")
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(order[start:start + size]))
        start += size
    return [np.sort(order[start:])] + parts


# ---------------------------------------------------------------------------------------------
# batched tensor augmentation (torch ops on whole batches: no PIL, no per-item Python)


def random_affine(x: torch.Tensor, generator: torch.Generator, *, degrees: float,
                  translate: float, scale: tuple[float, float]) -> torch.Tensor:
    """Per-image random rotation/translation/scale of a (B, C, H, W) float batch, zero fill."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    shift = (u[:, 2:] * 2 - 1) * (2 * translate)  # normalised coordinates span 2 per side
    cos, sin = angle.cos(), angle.sin()
    # affine_grid maps output to input coordinates, so theta is the inverse of p -> s R p + t
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
    inverse = inverse / s[:, None, None]
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, generator: torch.Generator, *, padding: int) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size (RandomCrop(pad=...))."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class DigitsTransform:
    """(B, 1, S, S) floats in [0, 1] -> augmented, normalised (B, 3, S, S)."""

    def __init__(self, mean: float, std: float, augment: bool):
        self.mean, self.std, self.augment = mean, std, augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment:
            x = random_affine(x, generator, degrees=10.0, translate=0.1, scale=(0.9, 1.1))
        x = (x - self.mean) / self.std
        # three channels so the digits feed the same backbones as CIFAR/ImageFolder
        return x.expand(-1, 3, -1, -1).contiguous()


class CIFARTransform:
    """(B, 3, 32, 32) uint8 -> [crop pad 4 + flip] -> resize -> normalised float (B, 3, S, S)."""

    def __init__(self, mean, std, image_size: int, augment: bool):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.image_size, self.augment = image_size, augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment:
            x = random_hflip(random_crop(x, generator, padding=4), generator)
        x = x.float().div_(255)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std


class TensorBatches(Dataset):
    """Images held in memory; indexed by `BatchKey`, returns a whole transformed batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: BatchKey):
        idx = torch.as_tensor(key.indices, dtype=torch.long)
        generator = torch.Generator().manual_seed(key.seed)
        return self.transform(self.images[idx], generator), self.labels[idx]


# ---------------------------------------------------------------------------------------------
# datamodules


class _ClassificationData(L.LightningDataModule):
    """Options, seeding and loaders shared by the classification datamodules."""

    dataset_name: str  # key in bench.data.DATASETS: the options and their defaults live there
    in_channels = 3

    def __init__(self, *, seed, root=None, download=False, batch_size=64, num_workers=0,
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
        self.batch_size = _positive_int("batch_size", batch_size)
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        self.image_size = _positive_int("image_size", self.options["image_size"])
        self.augment = bool(self.options["augment"])
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
                                # a last batch of one would break BatchNorm in training
                                drop_last=train and n >= self.batch_size)
        return DataLoader(dataset, batch_size=None, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          # workers' base seeds, for anything in them that uses torch's RNG
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
    return value


def _fraction(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"data.{name} must be a number between 0 and 1 (exclusive), "
                         f"got {value!r}")
    return float(value)


class DigitsData(_ClassificationData):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

    Stratified train/val/test split drawn from the seed; images upsampled once to
    `image_size` and served as 3 identical channels, normalised with the train split's
    mean/std; training augmentation is a small random affine applied per batch.
    """

    dataset_name = "digits"
    num_classes = 10

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_fraction = _fraction("val_fraction", self.options["val_fraction"])
        self.test_fraction = _fraction("test_fraction", self.options["test_fraction"])
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        self.split_indices: dict[str, np.ndarray] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16).unsqueeze(1)
        images = F.interpolate(images, size=self.image_size, mode="bilinear",
                               align_corners=False).clamp_(0, 1)
        labels = torch.from_numpy(digits.target).long()
        train, val, test = stratified_split(digits.target, [self.val_fraction,
                                                            self.test_fraction], self.seed)
        self.split_indices = {"train": train, "val": val, "test": test}
        train_images = images[train]
        mean, std = train_images.mean().item(), train_images.std().item()
        eval_transform = DigitsTransform(mean, std, augment=False)
        self.train_set = TensorBatches(train_images, labels[train],
                                       DigitsTransform(mean, std, augment=self.augment))
        self.val_set = TensorBatches(images[val], labels[val], eval_transform)
        self.test_set = TensorBatches(images[test], labels[test], eval_transform)


class _CIFARData(_ClassificationData):
    """CIFAR in its python (pickle) format under `root`; val is split off the official train set."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    torchvision_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_fraction = _fraction("val_fraction", self.options["val_fraction"])
        self.classes: list[str] | None = None

    @property
    def _files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    def prepare_data(self) -> None:
        if self.download and self.root is not None and not (self.root / self.folder).is_dir():
            import torchvision.datasets

            getattr(torchvision.datasets, self.torchvision_class)(str(self.root), train=True,
                                                                   download=True)

    def check(self) -> None:
        if self.root is None:
            raise DataError(f"data.root is not set: {self.title} needs the folder that holds "
                            f"{self.folder}/ (or set data.download: true and a data.root to "
                            f"download it into)")
        folder = self.root / self.folder
        if not folder.is_dir() and self.download:
            self.prepare_data()
        if not folder.is_dir():
            raise DataError(f"{self.title} not found: expected the folder {folder} (the python "
                            f"version, holding {', '.join(self._files)}). Extract the archive "
                            f"so that {self.folder}/ lies in {self.root}, or set "
                            f"data.download: true to fetch it there.")
        missing = [name for name in self._files if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{self.title} in {folder} is incomplete: missing "
                            f"{', '.join(missing)}. Re-extract the archive there, or delete the "
                            f"folder and set data.download: true to fetch it again.")

    def _read(self, name: str) -> dict:
        path = self.root / self.folder / name
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"cannot read {self.title} file {path}: {e}; replace it (or delete "
                            f"{path.parent} and set data.download: true)") from e
        except Exception as e:  # noqa: BLE001 - garbage can make unpickling fail any way
            # (a damaged length field even asks for a huge allocation: MemoryError)
            raise DataError(f"cannot read {self.title} file {path}: it is damaged or not a "
                            f"{self.title} batch file ({type(e).__name__}); replace it (or delete "
                            f"{path.parent} and set data.download: true)") from e

    def _load(self, names) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            entry = self._read(name)
            try:
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry[self.label_key])
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(f"{self.root / self.folder / name} is not a {self.title} batch "
                                f"file ({e})") from e
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check()
        meta = self._read(self.meta_file)
        self.classes = list(meta.get("label_names") or meta.get("fine_label_names") or [])
        images, labels = self._load(self.train_files)
        test_images, test_labels = self._load([self.test_file])
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise DataError(f"{self.root / self.folder} has label {int(bad[0])} outside "
                            f"0..{self.num_classes - 1}: its batch files are damaged or not "
                            f"{self.title}; replace them (or delete the folder and set "
                            f"data.download: true)")
        train, val = stratified_split(labels.numpy(), [self.val_fraction], self.seed)
        eval_transform = CIFARTransform(self.mean, self.std, self.image_size, augment=False)
        self.train_set = TensorBatches(
            images[train], labels[train],
            CIFARTransform(self.mean, self.std, self.image_size, augment=self.augment))
        self.val_set = TensorBatches(images[val], labels[val], eval_transform)
        self.test_set = TensorBatches(test_images, test_labels, eval_transform)


class CIFAR10Data(_CIFARData):
    """CIFAR-10 from `root`/cifar-10-batches-py (downloaded there when data.download is true)."""

    dataset_name = "cifar10"
    title = "CIFAR-10"
    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    meta_file = "batches.meta"
    label_key = "labels"
    torchvision_class = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100Data(_CIFARData):
    """CIFAR-100 (fine labels) from `root`/cifar-100-python."""

    dataset_name = "cifar100"
    title = "CIFAR-100"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_file = "test"
    meta_file = "meta"
    label_key = "fine_labels"
    torchvision_class = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _class_folders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(path: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return found


class ImageFiles(Dataset):
    """(path, label) samples decoded with PIL; indexed by `BatchKey`, returns a stacked batch."""

    def __init__(self, samples: list[tuple[str, int]], transform, random: bool):
        self.samples, self.transform, self.random = samples, transform, random

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
            raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from e

    def __getitem__(self, key: BatchKey):
        images = []
        for i, index in enumerate(key.indices):
            image = self._load(self.samples[index][0])
            if self.random:
                # v2 transforms draw from torch's global RNG: pin it to this item's seed
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(key.seed + i)
                    images.append(self.transform(image))
            else:
                images.append(self.transform(image))
        labels = torch.tensor([self.samples[i][1] for i in key.indices], dtype=torch.long)
        return torch.stack(images), labels


class ImageFolderData(_ClassificationData):
    """`root`/train and `root`/val (and optional `root`/test, else val) with one folder per class.

    Train: RandomResizedCrop(image_size) + horizontal flip; eval: resize to image_size/0.875 and
    centre crop. ImageNet mean/std.
    """

    dataset_name = "imagefolder"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.classes: list[str] | None = None
        self.num_classes: int | None = None
        self._samples: dict[str, list[tuple[str, int]]] | None = None
        train = self.root / "train" if self.root is not None else None
        if train is not None and train.is_dir():
            classes = _class_folders(train)
            if classes:
                self.classes, self.num_classes = classes, len(classes)

    def check(self) -> None:
        if self.root is None:
            raise DataError("data.root is not set: imagefolder needs a folder with train/ and "
                            "val/ subfolders (test/ optional), each holding one subfolder per "
                            "class")
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder: set data.root to the folder "
                            f"that holds train/ and val/ (one subfolder per class in each)")
        splits = ["train", "val"] + (["test"] if (self.root / "test").is_dir() else [])
        classes = {}
        for split in splits:
            path = self.root / split
            if not path.is_dir():
                raise DataError(f"missing folder {path}: imagefolder needs {self.root}/train and "
                                f"{self.root}/val, each with one subfolder per class")
            classes[split] = _class_folders(path)
            if not classes[split]:
                raise DataError(f"no class subfolders in {path}: put each class's images in "
                                f"{path}/<class name>/")
            if classes[split] != classes["train"]:
                only_train = sorted(set(classes["train"]) - set(classes[split]))
                only_here = sorted(set(classes[split]) - set(classes["train"]))
                raise DataError(f"class folders differ between {self.root / 'train'} and {path}: "
                                f"only in train: {only_train or 'none'}; only in {split}: "
                                f"{only_here or 'none'}; every split needs the same class "
                                f"folders")
        samples = {}
        for split in splits:
            samples[split] = []
            for label, name in enumerate(classes["train"]):
                files = _image_files(self.root / split / name)
                if not files:
                    raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                                    f"{self.root / split / name}: add its images, or remove "
                                    f"the class folder from every split")
                samples[split] += [(f, label) for f in files]
        samples.setdefault("test", samples["val"])
        self._samples = samples
        self.classes, self.num_classes = classes["train"], len(classes["train"])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._samples is None:
            self.check()
        from torchvision.transforms import v2

        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if self.augment:
            train_transform = v2.Compose([v2.RandomResizedCrop(self.image_size, antialias=True),
                                          v2.RandomHorizontalFlip(), *to_tensor])
        else:
            train_transform = v2.Compose([v2.Resize(self.image_size, antialias=True),
                                          v2.CenterCrop(self.image_size), *to_tensor])
        eval_transform = v2.Compose([v2.Resize(round(self.image_size / 0.875), antialias=True),
                                     v2.CenterCrop(self.image_size), *to_tensor])
        self.train_set = ImageFiles(self._samples["train"], train_transform, random=self.augment)
        self.val_set = ImageFiles(self._samples["val"], eval_transform, random=False)
        self.test_set = ImageFiles(self._samples["test"], eval_transform, random=False)
