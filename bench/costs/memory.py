"""Peak memory of one detection training step, estimated before training, and the memory the
machine has for it.

The estimate runs the detector's backbone, FPN and FCOS head forward on the meta device (shapes
only) at the run's batch and input size, and sums the tensors autograd saves for the backward
(saved_tensors_hooks, each storage once): the activations, which dominate. To those it adds the
FCOS loss's tensors over every anchor point and class, the weights with their gradients and the
optimiser's state, and a fixed overhead:

    peak ~ SAVED_FACTOR x saved + LOSS_TENSORS x batch x points x classes x 4 B
           + parameters x (2 + optimiser states) + FIXED_BYTES

SAVED_FACTOR (the backward's transient gradients), LOSS_TENSORS and FIXED_BYTES were fitted to the
growth of peak RSS over one CPU training step (forward, loss, backward), resnet_tiny/resnet_small
with FPN 64-256 channels, 1-4 head convs, 32-128 px, batch 2-8, 10-160 classes: within 25 % of
the measured peak where it exceeds 250 MB (tests/test_preflight.py measures one config).
Mixed precision is estimated as float32 (an upper bound); the *-true precisions at their width.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

SAVED_FACTOR = 1.15
LOSS_TENSORS = 10  # FCOS: logits, one-hot targets, the focal loss's temporaries, per point/class
FIXED_BYTES = 64 * 2**20
TOLERANCE = 0.25  # the estimate's stated accuracy (the fits above)
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}  # momentum; Adam's two moments
WIDTHS = {"16-true": 2, "bf16-true": 2, "64-true": 8}  # bytes per element, else 4


def training_peak(cfg: dict, size: tuple[int, int], num_classes: int) -> dict:
    """{"bytes": the estimated peak of one training step of this detection run config on
    (height, width) inputs (already padded as the detector pads them), "saved", "loss",
    "params": its parts in bytes, "points": anchor points per image}."""
    import torch

    import lesa
    from bench.tasks import backbone_kwargs
    from bench.tasks.detection import build_detector, detection_options

    model, batch = cfg["model"], cfg["data"]["batch_size"]
    width = WIDTHS.get(cfg["trainer"]["precision"], 4)
    dtype = {2: torch.bfloat16, 8: torch.float64}.get(width, torch.float32)
    seen: dict[int, int] = {}
    weights: set[int] = set()  # a layer saves its weight too: counted once, as the parameters

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()  # views of one storage count once
        return tensor

    with torch.device("meta"):
        backbone = lesa.build_backbone(model["backbone"], in_channels=3,
                                       **backbone_kwargs(model, "detection"))
        detector = build_detector(backbone, num_classes, detection_options(model),
                                  (0.5,) * 3, (0.25,) * 3).to(dtype)
        lesa.record_shares(detector, False)
        detector.train()
        weights.update(p.untyped_storage()._cdata for p in detector.parameters())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            features = detector.backbone(torch.empty(batch, 3, *size, dtype=dtype))
            detector.head(list(features.values()))
    points = sum(f.shape[-2] * f.shape[-1] for f in features.values())
    params = sum(p.numel() for p in detector.parameters()) * width
    states = OPTIMIZER_STATES.get(cfg["optim"]["name"], 2)
    saved = sum(seen.values())
    loss = LOSS_TENSORS * batch * points * num_classes * 4
    total = SAVED_FACTOR * saved + loss + params * (2 + states) + FIXED_BYTES
    return {"bytes": int(total), "saved": saved, "loss": loss, "params": params,
            "points": points}


def available_memory(accelerator: str) -> tuple[str, int, int | None, str] | None:
    """("gpu" or "cpu", bytes free now, bytes in all, where) for a run on this accelerator: the first GPU's for
    gpu/cuda (and auto with a GPU), else the machine's MemAvailable (RAM and swap in all) or,
    where less, what this process's memory cgroup (a SLURM task's --mem, a container's limit)
    leaves; None where neither can be read (no /proc/meminfo, a GPU run without a GPU)."""
    if accelerator in ("gpu", "cuda", "auto"):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            return "gpu", free, total, f"free on {torch.cuda.get_device_name(0)}"
        if accelerator != "auto":
            return None
    if accelerator == "mps":
        return None
    free, total = meminfo("MemAvailable"), total_memory()
    limit = cgroup_memory()
    if limit is not None and (free is None or limit[1] < free):
        return "cpu", limit[1], total, "left under this process's memory cgroup limit"
    if free is None:
        return None
    return "cpu", free, total, "available on this machine (MemAvailable)"


def total_memory() -> int | None:
    """All the memory a CPU run could ever get: RAM and swap, or the cgroup's limit if lower."""
    ram = meminfo("MemTotal")
    total = ram + (meminfo("SwapTotal") or 0) if ram is not None else None
    limit = cgroup_memory()
    if limit is not None and (total is None or limit[0] < total):
        return limit[0]
    return total


def meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2^63


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, limit - usage + reclaimable page cache) of this process's memory cgroup in bytes
    (v2 memory.max/current, else v1 memory.limit_in_bytes/usage_in_bytes), None without one or
    without a limit."""
    for folder, names in ((Path("/sys/fs/cgroup"), ("memory.max", "memory.current",
                                                     "inactive_file")),
                          (Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes",
                                                            "memory.usage_in_bytes",
                                                            "total_inactive_file"))):
        try:
            text = (folder / names[0]).read_text().strip()
            if text == "max" or int(text) >= _UNLIMITED:
                continue
            limit, usage = int(text), int((folder / names[1]).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text()
                        .splitlines() if len(line.split()) == 2)
        except (OSError, ValueError):
            continue
        return limit, max(0, limit - usage + int(stat.get(names[2], 0)))
    return None


def gigabytes(n: float) -> str:
    for unit, power in (("EB", 60), ("PB", 50), ("TB", 40), ("GB", 30)):
        if n >= 2**power:
            return f"{n / 2**power:.1f} {unit}"
    return f"{math.ceil(n / 2**20)} MB"


def largest_tensor(fn) -> int:
    """Bytes of the largest storage any torch function makes while `fn()` runs (run it on the
    meta device: shapes only): a floor under the peak memory of the same call on real tensors."""
    import torch
    from torch.overrides import TorchFunctionMode

    largest = [0]

    class Track(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for item in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(item, torch.Tensor):  # an expanded view's storage stays small
                    largest[0] = max(largest[0], item.untyped_storage().nbytes())
            return out

    with Track():
        fn()
    return largest[0]
