"""The model check before any run starts: each distinct model config is built on the meta device
(shapes only: no memory, no arithmetic) and run forward on an input of its runs' shape, so what
lesa would refuse once training starts (heads that do not divide a stage's channels, a window
with raster positions, position tables smaller than the feature maps) is a ConfigError naming the
key, the value and what fits, at `run` (`--dry-run` too), `slurm` and `sweep`.

The input shape comes from the data config (image_size; probe_context: image_size x width;
detection: the canvas padded to a multiple of 32, resized by model.detection.min_size/max_size);
for COCO at native resolution it is the first training image's, known once the data has been
read (the runner's preflight), so `--dry-run` builds those models without a forward. Imports
torch: `status` and `report` never import this module.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from bench.config import ConfigError, Experiment, Run, set_dotted
from bench.config.experiment import _where
from bench.costs.memory import gigabytes
from bench.data import DATASETS, DataWarning
from bench.tasks import backbone_kwargs

SIZE_DIVISIBLE = 32  # torchvision's GeneralizedRCNNTransform pads a batch to this
_checked: dict[str, str | None] = {}  # a model config and input shape -> its error (or None)


def task_of(cfg: dict) -> str:
    return DATASETS[cfg["data"]["name"]].task


def detection_frame(height: int, width: int, detection: dict) -> tuple[int, int]:
    """The backbone's input for one (height, width) image, as FCOS's transform makes it: resized
    when model.detection.min_size or max_size is set (the shorter side to min_size, the longer
    at most max_size; torchvision's defaults 800 / 1333 for the unset one), padded to 32."""
    if detection.get("min_size") is not None or detection.get("max_size") is not None:
        low, high = detection.get("min_size") or 800, detection.get("max_size") or 1333
        scale = min(low / min(height, width), high / max(height, width))
        height, width = int(math.floor(height * scale)), int(math.floor(width * scale))
    pad = SIZE_DIVISIBLE
    return -(-height // pad) * pad, -(-width // pad) * pad


def input_size(cfg: dict, datamodule=None) -> tuple[int, int] | None:
    """(height, width) of the backbone's input for a run, or None where only the data knows it
    (COCO at native resolution before the data is read)."""
    data = cfg["data"]
    size = getattr(datamodule, "example_image_size", None) if datamodule is not None else None
    if size is None:
        if data["name"] == "probe_context":
            size = (data["image_size"], data["width"])
        elif "image_size" in data:
            size = (data["image_size"], data["image_size"])
        else:
            return None
    if task_of(cfg) == "detection":
        return detection_frame(int(size[0]), int(size[1]), cfg["model"].get("detection") or {})
    return int(size[0]), int(size[1])


def _build(model_cfg: dict, task: str, **override):
    import lesa

    kwargs = {**backbone_kwargs(model_cfg, task), **override}
    classes = 10 if task == "classification" else None  # the head's width changes no shape
    net = lesa.build_backbone(model_cfg["backbone"], num_classes=classes, in_channels=3, **kwargs)
    lesa.record_shares(net, False)  # a share is a float: meta tensors have no value
    return net


def _forward(net, task: str, size: tuple[int, int]):
    import torch

    x = torch.empty(2, 3, *size)  # 2: what BatchNorm needs in training mode
    with torch.no_grad():
        return net.forward_features(x) if task == "detection" else net(x)


def _attempt(model_cfg: dict, task: str, size: tuple[int, int] | None, **override):
    """None where the model builds (and runs forward on `size`) on the meta device, else the
    error lesa or torch raised."""
    import torch

    try:
        with torch.device("meta"):
            net = _build(model_cfg, task, **override)
            if size is not None:
                _forward(net, task, size)
    except NotImplementedError:  # an op without a meta kernel (a plugin's): the run will tell
        return None
    except (ValueError, RuntimeError, TypeError, IndexError) as err:
        if "meta" in str(err).lower():  # .item() and the like: values meta tensors do not have
            return None
        return err
    return None


def _window_reach(model_cfg: dict) -> int:
    """The tables' size the largest window needs: the window plus its halo (half a window)."""
    window = model_cfg.get("window")
    return max((w + w // 2 for w in (window.values() if isinstance(window, dict) else [window])
                if w), default=0)


def _attention_maps(model_cfg: dict, task: str, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(height, width) of the maps each attention module sees on `size` inputs, read with
    tables large enough for any of them."""
    import torch

    from bench.costs.models import attention_maps

    with torch.device("meta"):
        net = _build(model_cfg, task, max_map_size=max(*size, _window_reach(model_cfg)) + 1)
        return attention_maps(net, lambda: _forward(net, task, size))


def _needed_max_size(model_cfg: dict, task: str, size: tuple[int, int]) -> int | None:
    """The smallest model.max_size that builds and runs on `size` inputs (None if none does
    up to the input's size)."""
    maps = _attention_maps(model_cfg, task, size)
    candidates = {max(h, w) for h, w in maps} | {math.ceil(math.sqrt(h * w)) for h, w in maps}
    candidates.add(_window_reach(model_cfg))
    for m in sorted(c for c in candidates if c > model_cfg["max_size"]):
        if _attempt(model_cfg, task, size, max_map_size=m) is None:
            return m
    return None


def _fitting_heads(model_cfg: dict, task: str) -> list[int]:
    """The head counts (up to 64) with which the model builds: those that split every attention
    stage's width into q/k halves (2 * heads divides it), each confirmed by a build."""
    import torch

    with torch.device("meta"):
        widths = _build({**model_cfg, "heads": 1}, task).stage_widths
    stages = [widths[s - 1] for s in model_cfg["attention_stages"]]
    candidates = [h for h in range(1, 65) if all(w % (2 * h) == 0 for w in stages)]
    return [h for h in candidates if _attempt({**model_cfg, "heads": h}, task, None) is None]


def _explain(err: Exception, model_cfg: dict, task: str, size: tuple[int, int] | None) -> str:
    """A ConfigError message naming the config keys behind lesa's or torch's refusal."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    backbone, heads = model_cfg["backbone"], model_cfg["heads"]
    where = f" on {size[0]}x{size[1]} inputs" if size else ""
    if "divisible by 2 * heads" in text or "divisible by groups" in text:
        fits = _fitting_heads(model_cfg, task)
        width = f", model.width {model_cfg['width']}" if model_cfg.get("width", 1.0) != 1.0 else ""
        return (f"model.heads: {heads} does not fit {backbone}{width}: {text}; heads that fit: "
                f"{', '.join(map(str, fits)) or 'none up to 64'}")
    if "windowed binary term takes the default logits and positions" in text:
        set_by = [f"model.{k}: {model_cfg[k]}" for k in ("positions", "logits")
                  if model_cfg.get(k) is not None]
        if model_cfg.get("release"):
            set_by.append("model.release: true (its positions and logits)")
        return (f"model.window: {model_cfg['window']!r} with {', '.join(set_by)}: windowed "
                f"attention takes only the default positions (relative2d) and logits (scaled); "
                f"set model.window: null (global attention), or model.positions: relative2d and "
                f"model.logits: scaled")
    if "halo" in text and "max_map_size" in text:  # the window reaches past the tables
        needed = text.rsplit(">=", 1)[-1].strip(" )")
        return (f"model.max_size: {model_cfg['max_size']} is smaller than model.window "
                f"{model_cfg['window']!r} plus its halo (half a window) on each side; set "
                f"model.max_size: {needed} or more, or a smaller model.window")
    if "max_map_size" in text and size is not None:
        needed = _needed_max_size(model_cfg, task, size)
        advice = f"set model.max_size: {needed} or more" if needed else "raise model.max_size"
        return (f"model.max_size: {model_cfg['max_size']} is too small for the feature maps "
                f"{backbone} makes{where} ({text.split(';')[0]}); {advice}")
    keys = "data.image_size" if size else "model"
    return (f"model.backbone: {backbone} with this run's model settings cannot run{where} "
            f"({keys}): {type(err).__name__}: {text}")


def check_model(cfg: dict, datamodule=None) -> str | None:
    """The error message for a run's model config on its input, or None; cached per distinct
    (model config, task, input shape), so a matrix of seeds checks each model once."""
    task = task_of(cfg)
    size = input_size(cfg, datamodule)
    key = json.dumps([cfg["model"], task, size], sort_keys=True, default=str)
    if key not in _checked:
        err = _attempt(cfg["model"], task, size)
        _checked[key] = None if err is None else _explain(err, cfg["model"], task, size)
    return _checked[key]


def check_models(runs: list[Run], exp: Experiment | None = None, overrides=(),
                 datamodules: dict | None = None) -> None:
    """ConfigError for the first run whose model cannot be built or run forward, naming the key,
    the --set or file it came from and the matrix run. `datamodules`: {run id: a checked
    datamodule}, for the input shapes only the data knows (COCO)."""
    for run in runs:
        message = check_model(run.config, (datamodules or {}).get(run.id))
        if message is None:
            continue
        if exp is not None and exp.path is not None:  # the --set or the file it came from
            message = _where(message, Path(exp.path), overrides)
        raise ConfigError(message + _in_run(run))


class FitWarning(DataWarning):
    """A run config that may not fit the machine's memory (the CLI prints one `warning:` line)."""


def _estimate(cfg: dict, size: tuple[int, int], classes: int, **changes) -> int:
    """training_peak's bytes with some keys changed ({"data.batch_size": 8, ...}); cached."""
    from bench.costs.memory import training_peak

    changed = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        set_dotted(changed, dotted, value)
    key = json.dumps([changed["model"], changed["data"]["batch_size"], size, classes,
                      changed["trainer"]["precision"], changed["optim"]["name"]],
                     sort_keys=True, default=str)
    if key not in _estimates:
        _estimates[key] = training_peak(changed, size, classes)["bytes"]
    return _estimates[key]


_estimates: dict[str, int] = {}


def _what_fits(cfg: dict, size, classes: int, budget: float, copies: int) -> list[str]:
    """Settings near the config's that fit `budget` bytes: a smaller batch (the estimate is
    affine in it), else a slimmer FPN and head."""
    batch = cfg["data"]["batch_size"]
    one = _estimate(cfg, size, classes, **{"data.batch_size": 1}) * copies
    full = _estimate(cfg, size, classes) * copies
    per_image = (full - one) / max(1, batch - 1)
    fits = int((budget - one) // per_image) + 1 if per_image > 0 and budget >= one else 0
    advice = []
    if 1 <= fits < batch:  # the batch split in equal steps, so a step sees as many images
        steps, accumulate = -(-batch // fits), cfg["trainer"]["accumulate_grad_batches"]
        smaller = -(-batch // steps)
        same = "as now" if smaller * steps == batch else "about as now"
        advice.append(f"data.batch_size: {smaller} with trainer.accumulate_grad_batches: "
                      f"{steps * accumulate} fits ({smaller * steps * accumulate} images per "
                      f"optimiser step, {same})")
    detection = cfg["model"].get("detection") or {}
    channels, convs = detection.get("fpn_channels", 256), detection.get("head_convs", 4)
    slim = {"model.detection.fpn_channels": max(64, channels // 2),
            "model.detection.head_convs": min(convs, 2)}
    if (slim["model.detection.fpn_channels"], slim["model.detection.head_convs"]) != (
            channels, convs):
        need = _estimate(cfg, size, classes, **slim) * copies
        if need <= budget:
            advice.append(f"model.detection.fpn_channels: {slim['model.detection.fpn_channels']}"
                          f" with head_convs: {slim['model.detection.head_convs']} at this "
                          f"batch fits ({gigabytes(need)})")
    if not advice:
        advice.append("lower the input size (data.image_size; for COCO "
                      "model.detection.min_size/max_size)")
    return advice


def memory_check(runs: list[Run], datamodules: dict | None = None,
                 workers: int = 1) -> list[str]:
    """Warnings for the detection run configs whose estimated training peak exceeds the memory
    available now (bench/costs/memory.py; `workers` runs train at once on this machine, and
    CPU DDP's processes each hold a copy); ConfigError where even the estimate's low end
    exceeds all the memory the machine has (certain not to fit)."""
    from bench.costs.memory import TOLERANCE, available_memory

    warned, seen = [], set()
    for run in runs:
        cfg = run.config
        if task_of(cfg) != "detection":
            continue
        module = (datamodules or {}).get(run.id)
        size = input_size(cfg, module)
        if size is None:
            continue
        classes = getattr(module, "num_classes", None) or 10
        trainer = cfg["trainer"]
        key = json.dumps([cfg["model"], cfg["data"]["batch_size"], size, classes,
                          trainer["precision"], trainer["accelerator"], cfg["optim"]["name"]],
                         sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        room = available_memory(trainer["accelerator"])
        if room is None:
            continue
        kind, free, total, where = room
        devices = trainer["devices"] if isinstance(trainer["devices"], int) else 1
        copies = workers * (devices if kind == "cpu" else 1)  # a GPU holds one process
        need = _estimate(cfg, size, classes) * copies
        if need <= free:
            continue
        batch = cfg["data"]["batch_size"]
        many = f" x {copies} processes at once" if copies > 1 else ""
        what = (f"model.detection (fpn_channels {cfg['model']['detection']['fpn_channels']}, "
                f"head_convs {cfg['model']['detection']['head_convs']}) with data.batch_size "
                f"{batch} on {size[0]}x{size[1]} inputs")
        advice = _what_fits(cfg, size, classes, 0.9 * free, copies)
        tip = "; " + "; or ".join(advice) if advice else ""
        if total and need * (1 - TOLERANCE) > total:
            raise ConfigError(f"{what} needs about {gigabytes(need)}{many} to train "
                              f"(estimated, ±{TOLERANCE:.0%}), more than the "
                              f"{gigabytes(total)} this machine has in all: it cannot fit{tip}"
                              f"{_in_run(run)}")
        warned.append(f"{what} needs about {gigabytes(need)}{many} to train (estimated, "
                      f"±{TOLERANCE:.0%}); {gigabytes(free)} is {where}{tip}{_in_run(run)}")
    return warned


def _in_run(run: Run) -> str:
    """" (in the matrix run KEY=VALUE, ...)", as the config loader says it."""
    where = ", ".join(f"{k}={v}" for k, v in run.axes.items() if not isinstance(v, dict))
    return f" (in the matrix run {where})" if where else ""
