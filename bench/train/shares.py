"""What a run stores beside its unary/binary shares, so the report can say whether a share was
learned or is built in (issue 24; docs/library.md, "Reading a share"):

    shares_init   the same model at initialisation (same seed, same test batches), its
                  BatchNorm running statistics re-estimated on INIT_BN_BATCHES training
                  batches without any weight update, then in eval mode like the trained model
    modules       per attention module its map (H, W), keys per query L and the uniform-
                  attention share 100 / L (the null of `sa` and `softmax`), and L x mean(a_ii)
    gates         per `dynamic` module: quantiles of omega (pooled over images, positions and
                  channels, from a histogram; and over channels of each channel's mean) and the
                  gate's last BatchNorm gamma / beta (mean, min, max)
    boxes         detection: the unary share inside the ground-truth boxes of each AI-TOD size
                  bucket and on the background, per module and stage, with the box counts

`ShareAnalysis` (a callback) fills `trained` and `initial`, each in the structure of
metrics.json["shares"] plus those keys. Everything is recorded on the test set only.
"""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

import lesa
from bench.tasks import AITOD_BUCKETS

INIT_BN_BATCHES = 16   # training batches that re-estimate BatchNorm statistics at init
QUANTILES = (5, 25, 50, 75, 95)
OMEGA_BINS = 1000


def stage_of(module: str) -> str:
    return module.split(".")[0]


def by_stage(per_module: dict[str, float | None]) -> dict[str, float]:
    """The mean over each stage's modules (None values left out)."""
    groups: dict[str, list[float]] = {}
    for name, value in per_module.items():
        if value is not None:
            groups.setdefault(stage_of(name), []).append(value)
    return {stage: sum(v) / len(v) for stage, v in groups.items()}


def histogram_quantiles(hist: np.ndarray, qs=QUANTILES, low: float = 0.0,
                        high: float = 1.0) -> dict[str, float] | None:
    """Quantiles (percent levels) of the values a histogram over [low, high] counted, linear
    within a bin."""
    hist = np.asarray(hist, dtype=float)
    total = hist.sum()
    if total <= 0:
        return None
    edges = np.linspace(low, high, len(hist) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(hist) / total])
    return {str(q): float(np.interp(q / 100, cdf, edges)) for q in qs}


def _summary(t: torch.Tensor | None) -> dict | None:
    if t is None:
        return None
    t = t.detach().float()
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}


class BoxShares:
    """Sums behind the unary share inside ground-truth boxes, per size bucket, and on the
    background, for one pass over the test set.

    A map position belongs to a box when its centre ((j + 0.5) sx, (i + 0.5) sy), s the map's
    stride in the batched image, lies inside the box; a box smaller than the stride may hold no
    centre, so it always also holds the position whose cell contains its centre. A box's share
    is the mean over its positions; a bucket's, the mean over its boxes (bucket: sqrt(area) in
    [low, high) px, AI-TOD's). The background is every position of the image (padding
    excluded) that no box holds, crowd boxes and boxes outside every bucket included.
    """

    def __init__(self, buckets: dict[str, tuple[float, float]] = AITOD_BUCKETS):
        self.buckets = dict(buckets)
        self.sums: dict[str, dict[str, list[float]]] = {}  # module -> key -> [sum, count]

    def _add(self, module: str, key: str, total: float, count: int) -> None:
        entry = self.sums.setdefault(module, {}).setdefault(key, [0.0, 0])
        entry[0] += total
        entry[1] += count

    def add(self, maps: dict[str, torch.Tensor], frame: tuple[int, int],
            boxes: list[torch.Tensor], sizes: list[torch.Tensor],
            image_sizes: list[tuple[int, int]]) -> None:
        """maps: module -> (B, H, W) unary share (fraction) per position; frame: the batched
        image (height, width) the backbone saw; boxes: per image (N, 4) xyxy in that frame;
        sizes: per image (N,) sqrt(area) in original pixels (NaN: in no bucket, e.g. crowd);
        image_sizes: per image its (height, width) in the frame, the rest being padding."""
        for name, share in maps.items():
            share = share.detach().float()
            _, height, width = share.shape
            sy, sx = frame[0] / height, frame[1] / width
            cy = (torch.arange(height, device=share.device) + 0.5) * sy
            cx = (torch.arange(width, device=share.device) + 0.5) * sx
            for b, m in enumerate(share):
                valid = (cy[:, None] < image_sizes[b][0]) & (cx[None, :] < image_sizes[b][1])
                box = boxes[b].to(share.device).float().reshape(-1, 4)
                inside = ((cx[None, None, :] >= box[:, 0, None, None])
                          & (cx[None, None, :] < box[:, 2, None, None])
                          & (cy[None, :, None] >= box[:, 1, None, None])
                          & (cy[None, :, None] < box[:, 3, None, None]))
                if len(box):
                    iy = ((box[:, 1] + box[:, 3]) / 2 / sy).floor().long().clamp(0, height - 1)
                    ix = ((box[:, 0] + box[:, 2]) / 2 / sx).floor().long().clamp(0, width - 1)
                    inside[torch.arange(len(box), device=share.device), iy, ix] = True
                per_box = (inside * m).sum((1, 2)) / inside.sum((1, 2))
                size = sizes[b].to(share.device).float()
                for bucket, (low, high) in self.buckets.items():
                    chosen = (size >= low) & (size < high)
                    self._add(name, bucket, float(per_box[chosen].sum()), int(chosen.sum()))
                background = valid & ~inside.any(0)
                self._add(name, "background", float(m[background].sum()),
                          int(background.sum()))

    def reduce(self, sum_over_ranks) -> None:
        """Sum every count over DDP ranks (sum_over_ranks: list of floats -> list of floats)."""
        keys = [(m, k) for m in sorted(self.sums) for k in sorted(self.sums[m])]
        flat = sum_over_ranks([x for m, k in keys for x in self.sums[m][k]])
        for i, (m, k) in enumerate(keys):
            self.sums[m][k] = [flat[2 * i], flat[2 * i + 1]]

    def result(self) -> dict | None:
        """{"buckets", "per_module", "per_stage"}: shares in percent with n (boxes for a
        bucket, positions for the background); a stage's share is its modules' mean."""
        if not self.sums:
            return None
        per_module = {}
        for name, keys in self.sums.items():
            per_module[name] = {}
            for key in [*self.buckets, "background"]:
                total, count = keys.get(key, [0.0, 0])
                n_key = "n_positions" if key == "background" else "n_boxes"
                per_module[name][key] = {"share": 100 * total / count if count else None,
                                         n_key: int(count)}
        per_stage = {}
        for key in [*self.buckets, "background"]:
            n_key = "n_positions" if key == "background" else "n_boxes"
            shares = by_stage({m: v[key]["share"] for m, v in per_module.items()})
            counts: dict[str, int] = {}
            for m, v in per_module.items():  # the same boxes in every module of a stage
                counts[stage_of(m)] = max(counts.get(stage_of(m), 0), v[key][n_key])
            for stage, n in counts.items():
                per_stage.setdefault(stage, {})[key] = {"share": shares.get(stage), n_key: n}
        return {"buckets": {k: list(v) for k, v in self.buckets.items()},
                "per_module": per_module, "per_stage": per_stage}


def backbone_input(pl_module, batch):
    """(the backbone's input tensor, box info or None) for a batch of the task's test set."""
    take = getattr(pl_module, "backbone_input", None)
    if take is not None:
        return take(batch)
    return batch[0], None


class ShareAnalysis(L.Callback):
    """Records, on the test set, what the share report needs beside the shares themselves:
    the module geometry, dynamic's gate statistics and (detection) the box shares of the
    trained model, then the same and the shares of the model at initialisation.

    `initial_state`: the backbone's state dict before any training (trainer.py takes it right
    after building the task, before a checkpoint is loaded)."""

    def __init__(self, initial_state: dict | None, bn_batches: int = INIT_BN_BATCHES):
        self.initial_state = initial_state
        self.bn_batches = bn_batches
        self.trained: dict | None = None
        self.initial: dict | None = None
        self.boxes: BoxShares | None = None

    # ------------------------------------------------------------ the trained model's test
    def _start(self, pl_module, boxes: bool) -> None:
        backbone = pl_module.backbone
        lesa.record_gates(backbone, True, bins=OMEGA_BINS)
        lesa.capture_share_maps(backbone, boxes)
        self.boxes = BoxShares() if boxes else None

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module, hasattr(pl_module, "backbone_input"))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0):
        if self.boxes is not None:
            _, where = backbone_input(pl_module, batch)
            self._add_boxes(pl_module, where)

    def _add_boxes(self, pl_module, where) -> None:
        if where is None:
            return
        maps = lesa.share_maps(pl_module.backbone)
        if maps:
            self.boxes.add(maps, where["frame"], where["boxes"], where["sizes"],
                           where["image_sizes"])

    def on_test_end(self, trainer, pl_module):
        self.trained = self._collect(pl_module, None)
        if self.trained is not None and self.initial_state is not None:  # not for conv
            with torch.inference_mode(False), torch.no_grad():
                self.initial = self._initial(trainer, pl_module)

    def _collect(self, pl_module, shares: dict | None) -> dict | None:
        from bench.train.callbacks import share_summary

        backbone = pl_module.backbone
        shares = shares if shares is not None else share_summary(pl_module)
        if shares is None:
            lesa.record_gates(backbone, False)
            lesa.capture_share_maps(backbone, False)
            return None
        out = dict(shares)
        out["modules"] = self._modules(backbone, shares)
        out["gates"] = self._gates(pl_module)
        if self.boxes is not None:
            self.boxes.reduce(lambda v: _sum_over_ranks(pl_module, v))
            out["boxes"] = self.boxes.result()
        lesa.record_gates(backbone, False)
        lesa.capture_share_maps(backbone, False)
        return out

    @staticmethod
    def _modules(backbone, shares: dict) -> dict:
        geometry = lesa.attention_geometry(backbone)
        per_module = {}
        for name, g in geometry.items():
            entry = dict(g)
            unary = (shares.get("per_module") or {}).get(name, {}).get("unary")
            if g.get("diagonal_share") and unary is not None:
                entry["self_ratio"] = unary / g["uniform"]  # L x mean(a_ii)
            per_module[name] = entry
        per_stage = {}
        for key in ("uniform", "L", "self_ratio"):
            for stage, value in by_stage({m: v.get(key) for m, v in per_module.items()}).items():
                per_stage.setdefault(stage, {})[key] = value
        return {"per_module": per_module, "per_stage": per_stage}

    @staticmethod
    def _gates(pl_module) -> dict | None:
        records = lesa.gate_records(pl_module.backbone)
        if not records:
            return None
        per_module, pooled = {}, {}
        for name, r in records.items():
            hist = np.array(_sum_over_ranks(pl_module, r["hist"].double().tolist()))
            channel = np.array(_sum_over_ranks(pl_module, r["channel_sum"].double().tolist()))
            count = _sum_over_ranks(pl_module, [float(r["count"])])[0]
            per_module[name] = {
                "omega_quantiles": histogram_quantiles(hist),
                "omega_channel_quantiles": ({str(q): float(np.percentile(channel / count, q))
                                             for q in QUANTILES} if count else None),
                "omega_mean": float(channel.sum() / (count * len(channel))) if count else None,
                "gamma": _summary(r["gamma"]), "beta": _summary(r["beta"])}
            stage = pooled.setdefault(stage_of(name), {"hist": 0, "gamma": [], "beta": []})
            stage["hist"] = stage["hist"] + hist
            for key in ("gamma", "beta"):
                if r[key] is not None:
                    stage[key].append(r[key].detach().float().flatten())
        per_stage = {stage: {"omega_quantiles": histogram_quantiles(p["hist"]),
                             "gamma": _summary(torch.cat(p["gamma"])) if p["gamma"] else None,
                             "beta": _summary(torch.cat(p["beta"])) if p["beta"] else None}
                     for stage, p in pooled.items()}
        return {"per_module": per_module, "per_stage": per_stage}

    # ------------------------------------------------------------ the model at initialisation
    def _initial(self, trainer, pl_module) -> dict | None:
        backbone = pl_module.backbone
        trained = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
        was_training = backbone.training
        backbone.load_state_dict(self.initial_state)
        try:
            datamodule = trainer.datamodule
            inputs = (backbone_input(pl_module, trainer.strategy.batch_to_device(b))[0]
                      for b in _take(datamodule.train_dataloader(), self.bn_batches))
            estimate_batchnorm(backbone, inputs, trainer.precision_plugin)
            backbone.eval()
            lesa.record_shares(backbone, True)
            lesa.reset_shares(backbone)
            self._start(pl_module, self.boxes is not None)
            limit = _test_batches(trainer)
            for batch in _take(datamodule.test_dataloader(), limit):
                x, where = backbone_input(pl_module, trainer.strategy.batch_to_device(batch))
                with trainer.precision_plugin.test_step_context():
                    backbone(x)
                if self.boxes is not None:
                    self._add_boxes(pl_module, where)
            result = self._collect(pl_module, None)
            if result is not None:
                result["protocol"] = (f"initial weights; BatchNorm statistics re-estimated on "
                                      f"{self.bn_batches} training batches (no weight update), "
                                      f"then eval mode; the trained model's test batches")
            return result
        finally:
            backbone.load_state_dict(trained)
            backbone.train(was_training)
            lesa.reset_shares(backbone)


def estimate_batchnorm(model: torch.nn.Module, inputs, precision=None) -> int:
    """Re-estimate every BatchNorm's running statistics of `model` as the plain average over
    the batches of `inputs` (train-mode forwards without gradients; no weight changes). Share
    recording is off meanwhile. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    lesa.record_shares(model, False)
    was_training = model.training
    model.train()
    n = 0
    try:
        for x in inputs:
            if precision is not None:
                with precision.forward_context():
                    model(x)
            else:
                model(x)
            n += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return n


def _take(loader, n: int | None):
    for i, batch in enumerate(loader):
        if n is not None and i >= n:
            break
        yield batch


def _test_batches(trainer) -> int | None:
    counts = getattr(trainer, "num_test_batches", None) or []
    n = counts[0] if counts else None
    return None if n is None or (isinstance(n, float) and math.isinf(n)) else int(n)


def _sum_over_ranks(pl_module, values: list[float]) -> list[float]:
    trainer = pl_module.trainer
    if trainer.world_size == 1:
        return list(values)
    total = trainer.strategy.reduce(torch.tensor(values, dtype=torch.float64,
                                                 device=pl_module.device), reduce_op="sum")
    return [float(v) for v in total]
