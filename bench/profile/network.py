"""The profile's whole-network parts.

"network": LESA-ResNet-26 (dynamic) against the conv ResNet-26, training images/s.
"lightning": one training step of bench.tasks.classification.ClassificationTask under
Lightning against a plain PyTorch loop doing the same work.
"""
from __future__ import annotations

import statistics
import time
import warnings

from bench.profile.measure import Row, run_rows

LIGHTNING_PAIRS = 4  # Lightning / plain-loop pairs in the overhead measurement


def _train_step_fn(torch, model, x, y, lr=0.01):
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def network_part(torch, args, device, dtype, sync, memory, console):
    import lesa

    name, size, b = ("resnet_tiny", 32, 2) if args.quick else \
        ("resnet26", args.network_size, args.network_batch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    y = torch.randint(0, 10, (b,), generator=gen).to(device)
    from bench.config import DEFAULTS

    layout = DEFAULTS["model"]["channels_last"]  # as the suite trains them
    rows = []
    for fusion in ("conv", "dynamic"):
        torch.manual_seed(0)
        model = lesa.build_backbone(name, fusion=fusion, num_classes=10,
                                    channels_last=layout).to(device=device, dtype=dtype)
        lesa.record_shares(model, False)
        rows.append(Row(f"{name} {fusion}", "network", None,
                        _train_step_fn(torch, model, x, y)))
    console.print(f"[bold]profile[/] {name} training step, B={b} at {size}x{size}")
    run_rows(torch, rows, args.repeats, max(1, args.warmup) if not args.quick else 0, sync,
             memory, lambda text: console.print(f"  {text}", style="dim"), args.min_time)
    out = {"backbone": name, "size": size, "batch": b, "channels_last": layout, "rows": []}
    for row in rows:
        m = row.result["train"]
        m["images_per_s"] = b / m["time_s"]
        out["rows"].append({"name": row.name, "train": m})
    conv, dyn = (r["train"]["images_per_s"] for r in out["rows"])
    out["dynamic_over_conv_images_per_s"] = dyn / conv
    return out


def lightning_part(torch, args, device, console) -> dict:
    """One ClassificationTask training step under Lightning against a plain loop."""
    try:
        from bench.tasks.classification import ClassificationTask
    except ImportError as err:
        return {"skipped": f"bench.tasks.classification.ClassificationTask unavailable: {err}"}
    import logging
    import tempfile

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from bench.config import DEFAULTS
    from bench.tasks.optim import build_optimizers

    name, size, b = ("resnet_tiny", 32, 2) if args.quick else \
        ("resnet26", args.network_size, args.network_batch)
    warm, steps = (1, 2) if args.quick else (2, max(3, args.repeats))
    model_cfg = dict(DEFAULTS["model"], backbone=name, fusion="dynamic")
    optim_cfg = dict(DEFAULTS["optim"])
    gen = torch.Generator().manual_seed(0)
    n = b * (warm + steps)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=gen),
                         torch.randint(0, 10, (n,), generator=gen))

    def make_task():
        torch.manual_seed(0)
        return ClassificationTask(model_cfg, optim_cfg, num_classes=10, in_channels=3,
                                  image_size=size, max_epochs=1, batch_size=b)

    class Stamps(L.Callback):
        def __init__(self):
            self.t = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            self.t.append(time.perf_counter())

    def lightning_steps() -> list[float]:
        stamps = Stamps()
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:  # a timing harness: Lightning's warnings about its missing val loop are noise
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = L.Trainer(
                    accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                    max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0, callbacks=[stamps],
                    default_root_dir=tmp)
                trainer.fit(make_task(), DataLoader(data, batch_size=b))
        finally:
            quiet.setLevel(level)
        return [t1 - t0 for t0, t1 in zip(stamps.t, stamps.t[1:])][warm:]

    def plain_steps() -> list[float]:
        import torch.nn.functional as F

        task = make_task().to(device)
        model = task.backbone
        optim = build_optimizers(model, optim_cfg, 1, warm + steps, b)
        opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
        stamps = []
        model.train()
        for xb, yb in DataLoader(data, batch_size=b):
            stamps.append(time.perf_counter())
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb,
                                   label_smoothing=optim_cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])][warm:]

    console.print(f"[bold]profile[/] ClassificationTask step under Lightning vs a plain loop "
                  f"({name}, dynamic, B={b} at {size}x{size})")
    lightning_t, plain_t, ratios, gaps = [], [], [], []
    try:
        # A B A B ...: each pair is timed back to back and compared within itself, so a drift
        # of the machine's speed over tens of seconds is not mistaken for Lightning's overhead
        # (as a ratio of two pooled medians would)
        for _ in range(2 if args.quick else LIGHTNING_PAIRS):
            lit, plain = lightning_steps(), plain_steps()
            lightning_t += lit
            plain_t += plain
            ratios.append(statistics.median(lit) / statistics.median(plain))
            gaps.append(statistics.median(lit) - statistics.median(plain))
    except Exception as err:  # the task is another module's: report, do not crash the profile
        return {"skipped": f"ClassificationTask step failed: {type(err).__name__}: {err}"}
    return {"backbone": name, "size": size, "batch": b, "steps": len(lightning_t),
            "lightning_step_s": statistics.median(lightning_t),
            "plain_step_s": statistics.median(plain_t),
            "overhead_ratio": statistics.median(ratios), "pair_ratios": ratios,
            "overhead_ms_per_step": statistics.median(gaps) * 1e3}
