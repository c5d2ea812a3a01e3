"""Lightning callbacks of one run: costs and shares, status progress, divergence, plain log lines
(the callbacks of stopping and resuming are bench/resume/'s)."""
from __future__ import annotations

import sys
import time

import lightning as L
import torch

import lesa
from bench.costs.flops import forward_flops
from bench.tasks import task_spec
from bench.train import Diverged


class CostsAndShares(L.Callback):
    """Parameters, GFLOPs, training images/s and the unary/binary shares of the backbone.

    Shares are recorded only during validation and test (off the training hot path) and logged
    per stage ("val/unary_share", "val/unary_share_layer3", ...). `summary` collects the final
    numbers for the run's metrics.json.
    """

    def __init__(self):
        self.summary: dict = {}
        self._train_images = 0
        self._train_seconds = 0.0
        self._t0 = None

    def on_fit_start(self, trainer, pl_module):
        backbone = pl_module.backbone
        self.summary["params"] = sum(p.numel() for p in pl_module.parameters())
        self.summary["backbone_params"] = sum(p.numel() for p in backbone.parameters())
        lesa.record_shares(backbone, False)
        self.summary["gflops"] = forward_flops(backbone, pl_module.example_input_array) / 1e9
        # once per run: a resumed run has this row in its log already (bench/resume/metrics_log.py)
        if trainer.logger is not None and trainer.is_global_zero and trainer.ckpt_path is None:
            trainer.logger.log_metrics({"cost/params": self.summary["params"],
                                        "cost/gflops": self.summary["gflops"]}, step=0)

    def on_train_epoch_start(self, trainer, pl_module):
        lesa.record_shares(pl_module.backbone, False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is not None and batch_idx > 0:  # the first batch pays one-off costs
            self._train_seconds += time.perf_counter() - self._t0
            self._train_images += _batch_size(batch)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._train_seconds > 0:
            self.summary["train_images_per_s"] = self._train_images / self._train_seconds
            pl_module.log("train/images_per_s", self.summary["train_images_per_s"])

    def _start_eval(self, pl_module):
        lesa.record_shares(pl_module.backbone, True)
        lesa.reset_shares(pl_module.backbone)

    def _end_eval(self, pl_module, stage: str):
        summary = share_summary(pl_module)
        if summary is None:
            return
        pl_module.log(f"{stage}/unary_share", summary["unary"])
        for name, value in summary["per_stage"].items():
            pl_module.log(f"{stage}/unary_share_{name}", value)
        if not pl_module.trainer.sanity_checking:  # a resumed run's sanity check is no result
            self.summary[f"{stage}_shares"] = summary

    # the last validation's shares and the speed measured so far, for a run resumed after its
    # last validation (it validates no more)
    RESUMED = ("val_shares", "train_images_per_s")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["costs_and_shares"] = {k: self.summary[k] for k in self.RESUMED
                                          if k in self.summary}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == "fit":  # not when trainer.test loads best.ckpt's weights
            self.summary.update(checkpoint.get("costs_and_shares") or {})

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start_eval(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end_eval(pl_module, "val")
        lesa.record_shares(pl_module.backbone, False)

    def on_test_epoch_start(self, trainer, pl_module):
        self._start_eval(pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end_eval(pl_module, "test")


def share_summary(pl_module) -> dict | None:
    """The backbone's running shares since the last reset (percent): {"unary", "binary",
    "per_stage": {stage: unary}, "per_module": {module: {"unary", "binary"}}}, each the mean
    over DDP ranks; None without attention modules."""
    shares = lesa.shares(pl_module.backbone, running=True)
    if shares["unary"] is None:
        return None
    modules = list(shares["per_module"])
    values = [shares["unary"]] + [shares["per_module"][m]["unary"] for m in modules]
    unary, *per_module = _mean_over_ranks(pl_module, values)
    per_module = dict(zip(modules, per_module))
    by_stage: dict[str, list[float]] = {}
    for name, value in per_module.items():
        by_stage.setdefault(name.split(".")[0], []).append(value)
    return {"unary": unary, "binary": 100.0 - unary,
            "per_stage": {k: sum(v) / len(v) for k, v in by_stage.items()},
            "per_module": {m: {"unary": v, "binary": 100.0 - v} for m, v in per_module.items()}}


def _mean_over_ranks(pl_module, values: list[float]) -> list[float]:
    """Under DDP each rank saw its shard: the shares reported are the mean over ranks."""
    trainer = pl_module.trainer
    if trainer.world_size == 1:
        return values
    mean = trainer.strategy.reduce(torch.tensor(values, dtype=torch.float64,
                                                device=pl_module.device), reduce_op="mean")
    return [float(v) for v in mean]


def _batch_size(batch) -> int:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(x) if hasattr(x, "__len__") else 1


class StatusProgress(L.Callback):
    """Keeps status.json's progress (epoch, step) current, for `lesa-bench status`."""

    def __init__(self, run_dir, every_s: float = 5.0):
        self.run_dir = run_dir
        self.every_s = every_s
        self._last = 0.0

    def _write(self, trainer):
        if trainer.is_global_zero:
            self.run_dir.update_status(epoch=trainer.current_epoch, step=trainer.global_step,
                                       max_epochs=trainer.max_epochs)
            self._last = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module):
        self._write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.monotonic() - self._last > self.every_s:
            self._write(trainer)


class DivergenceGuard(L.Callback):
    """Stop a run whose training loss, or whose validation or test loss or task metric, is no
    longer finite (it is marked failed: diverged, naming the value). The sanity check counts too:
    a model that starts (or resumes) non-finite is no result. Detection's APs are NaN where there
    is nothing to score: only what the task's TaskSpec.must_be_finite names is checked."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise Diverged(f"training loss is {loss.item()} at epoch {trainer.current_epoch + 1}, "
                           f"step {trainer.global_step}; lower optim.lr or set "
                           f"trainer.gradient_clip_val")

    # at the end, not the epoch end: what the task logs in its own on_*_epoch_end reaches
    # callback_metrics after the epoch-end hooks; the best checkpoint is saved after this
    def on_validation_end(self, trainer, pl_module):
        when = ("in the sanity check before training" if trainer.sanity_checking
                else f"at epoch {trainer.current_epoch + 1} (step {trainer.global_step})")
        self._check(trainer, pl_module, "val/", "validation", when)

    def on_test_end(self, trainer, pl_module):
        self._check(trainer, pl_module, "test/", "test", "in the final test")

    @staticmethod
    def _check(trainer, pl_module, prefix: str, stage: str, when: str) -> None:
        spec = task_spec(pl_module)
        watched = spec.must_be_finite if spec else lambda name: name.endswith("/loss")
        names = [n for n in trainer.callback_metrics if n.startswith(prefix) and watched(n)]
        for name in sorted(names, key=lambda n: ("/loss" not in n, n)):  # a loss named first
            value = torch.as_tensor(trainer.callback_metrics[name])
            if not torch.isfinite(value).all():
                kind = "loss" if "/loss" in name else "metric"
                raise Diverged(f"{stage} {kind} {name} is {value.float().mean().item()} {when}; "
                               f"lower optim.lr or set trainer.gradient_clip_val")


class LogLines(L.Callback):
    """Plain periodic log lines, used instead of a live progress bar when stdout is no terminal
    (cluster logs keep every line, where a live display would print only its final state)."""

    def __init__(self, label: str, every_s: float = 30.0):
        self.label = label
        self.every_s = every_s
        self._last = time.monotonic()

    def _print(self, text: str) -> None:
        print(f"  {self.label} {text}", file=sys.stdout, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero and time.monotonic() - self._last > self.every_s:
            self._last = time.monotonic()
            self._print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
                        f"batch {batch_idx + 1}/{trainer.num_training_batches}")

    def on_validation_end(self, trainer, pl_module):
        # not at the epoch end: the epoch's metrics (and those the task logs in its own
        # on_validation_epoch_end) reach callback_metrics after the epoch-end hooks
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and "share_" not in k}
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        self._print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {shown}")
