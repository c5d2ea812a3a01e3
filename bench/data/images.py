"""Image classification from files: CIFAR-10/100 (python version) and ImageFolder trees."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.data import DataError
from bench.data.augment import random_crop, random_hflip
from bench.data.pixels import to_rgb
from bench.data.base import (IMAGENET_MEAN, IMAGENET_STD, BatchKey, ClassificationData,
                             TensorBatches, fraction, stratified_split)


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


class _CIFARData(ClassificationData):
    """CIFAR in its python (pickle) format under `root`; val is split off the official train set
    (drawn from data.split_seed, the same for every run seed).

    A subclass names its release: where its files lie and how its images are normalised.
    """

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
        self.val_fraction = fraction("val_fraction", self.options["val_fraction"])
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
        train, val = stratified_split(labels.numpy(), [self.val_fraction], self.split_seed)
        eval_transform = CIFARTransform(self.mean, self.std, self.image_size, augment=False)
        self.train_set = TensorBatches(
            images[train], labels[train],
            CIFARTransform(self.mean, self.std, self.image_size, augment=self.augment))
        self.val_set = TensorBatches(images[val], labels[val], eval_transform)
        self.test_set = TensorBatches(test_images, test_labels, eval_transform)


class CIFAR10Data(_CIFARData):
    """CIFAR-10 from `root`/cifar-10-batches-py (downloaded there when data.download is true)."""

    dataset_name, title, num_classes, torchvision_class = "cifar10", "CIFAR-10", 10, "CIFAR10"
    folder, meta_file, label_key = "cifar-10-batches-py", "batches.meta", "labels"
    train_files, test_file = tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100Data(_CIFARData):
    """CIFAR-100 (fine labels) from `root`/cifar-100-python."""

    dataset_name, title, num_classes, torchvision_class = "cifar100", "CIFAR-100", 100, "CIFAR100"
    folder, meta_file, label_key = "cifar-100-python", "meta", "fine_labels"
    train_files, test_file = ("train",), "test"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _image_files(folder: Path, split: Path) -> list[tuple[str, str]]:
    """The images under one class folder, links followed, in a stable order: (path, real path)
    pairs. Refused, naming the link: a loop (or a second path to a folder already read), a link
    into the split's other class folders (its images would take this folder's label), a broken
    link to an image."""
    own, split_real = os.path.realpath(folder), os.path.realpath(split)
    seen: set[str] = set()
    found: list[tuple[str, str]] = []

    def check_link(entry, real: str) -> None:
        if _inside(real, split_real) and not _inside(real, own):
            raise DataError(f"link {entry.path} points to {real}, outside its class folder "
                            f"{folder} but inside {split}: its images would be labelled "
                            f"{folder.name!r}; remove the link or copy the images")

    def walk(path: str) -> None:
        real = os.path.realpath(path)
        if real in seen:
            raise DataError(f"link loop: {path} leads back to {real}, which is already read "
                            f"(a link to a folder above it, or two links to one folder); remove "
                            f"the link")
        seen.add(real)
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        folders = []
        for entry in entries:
            link = entry.is_symlink()
            if entry.is_dir():
                if link:
                    check_link(entry, os.path.realpath(entry.path))
                folders.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                if link and not os.path.exists(entry.path):
                    raise DataError(f"broken link {entry.path} -> {os.readlink(entry.path)}: "
                                    f"the image it names does not exist; fix or remove it")
                # a plain file's real path is its folder's (resolved once per folder)
                file_real = os.path.realpath(entry.path) if link else os.path.join(real,
                                                                                 entry.name)
                if link:
                    check_link(entry, file_real)
                found.append((entry.path, file_real))
        for sub in folders:
            walk(sub)

    walk(str(folder))
    return found


def _check_class_folder(root: Path, split: str, name: str, reals: dict[str, str],
                        owner: dict[str, str], above: dict[str, str]) -> None:
    """Refuse a class folder that resolves into another split, to another place in its own split
    (another class folder, or inside one), or to, inside or above a folder another class folder
    resolved to: its images would be read twice, under two labels or in two splits. `reals`:
    split -> its real folder; `owner`: real path -> the class folder that resolved to it, and
    `above`: each real path's ancestors -> that class folder (both filled here)."""
    path = root / split / name
    real = os.path.realpath(path)
    where = next((s for s in reals if s != split and _inside(real, reals[s])), None)
    if where is not None:
        raise DataError(f"class folder {path} resolves to {real}, inside the {where} split "
                        f"{root / where}: {where}'s images would be read again as {split} "
                        f"images; give {split}/ its own copies")
    if _inside(real, reals[split]) and real != os.path.join(reals[split], name):
        raise DataError(f"class folder {path} resolves to {real}, another place in "
                        f"{root / split}: those images would be read again as class {name!r}; "
                        f"remove the link")
    ancestors = [str(p) for p in Path(real).parents]
    other = owner.get(real) or above.get(real) or next(
        (owner[a] for a in ancestors if a in owner), None)
    if other is not None:
        raise DataError(f"class folders {other} and {path} resolve to {os.path.realpath(other)} "
                        f"and {real}: the same images would be read twice; remove the link")
    owner[real] = str(path)
    above.update(dict.fromkeys(ancestors, str(path)))


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
                return to_rgb(Image.open(f), path, exif=True)
        except DataError:
            raise
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


class ImageFolderData(ClassificationData):
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
        reals = {split: os.path.realpath(self.root / split) for split in splits}
        for i, a in enumerate(splits):
            for b in splits[i + 1:]:
                if _inside(reals[a], reals[b]) or _inside(reals[b], reals[a]):
                    raise DataError(f"split folders {self.root / a} and {self.root / b} resolve "
                                    f"to {reals[a]} and {reals[b]}: one split's images would be "
                                    f"read again in the other; give each split its own folder")
        owner, above = {}, {}
        for split in splits:
            for name in classes["train"]:
                _check_class_folder(self.root, split, name, reals, owner, above)
        samples, reached = {}, {}  # reached: an image's real path -> the path it was read by
        for split in splits:
            samples[split] = []
            for label, name in enumerate(classes["train"]):
                files = _image_files(self.root / split / name, self.root / split)
                if not files:
                    raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                                    f"{self.root / split / name}: add its images, or remove "
                                    f"the class folder from every split")
                for path, real in files:
                    if real in reached:  # a link (or a linked folder) to an image read before
                        raise DataError(f"{path} and {reached[real]} are the same image file "
                                        f"({real}): it would be read twice (under two labels, "
                                        f"or in two splits); remove one of them")
                    reached[real] = path
                samples[split] += [(path, label) for path, _ in files]
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
