"""One run: build its datamodule, task and Trainer, fit (or resume), test, return its metrics.

The runner (bench/run/runner.py) decides which runs to train and records their outcome; this
module trains one. What makes a run resumable comes from bench/resume/ (`trainer_parts`, the
resume point, `stopping`). Lightning and torch are imported here, not at the runner's import.
"""
from __future__ import annotations

import logging
import sys
import warnings

from bench.config import Run
from bench.store import RunDir
from bench.train.ddp import announce_ddp_run, ddp_resume_point, end_ddp_run, is_ddp_child

CHECKPOINT_EVERY_N_STEPS = 200  # trainer.checkpoint_every_n_steps when the config has none


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*number of training batches.*",
                    ".*LeafSpec.*", ".*treespec.*", ".*Checkpoint directory.*exists.*",
                    ".*Experiment logs directory.*exists.*", ".*TreeSpec.*",
                    # under DDP: train/loss and images/s are rank 0's; test metrics are synced
                    ".*sync_dist=True.*when logging on epoch level.*",
                    # on a machine with SLURM installed: runs here start their own processes
                    ".*`srun` command is available.*"):
        warnings.filterwarnings("ignore", message=pattern)


def build_trainer(run: Run, run_dir: RunDir, callbacks: list, label: str, monitor: str, mode: str):
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar

    from bench.resume import trainer_parts
    from bench.train.callbacks import DivergenceGuard, LogLines, StatusProgress
    from bench.train.loggers import extra_loggers

    t = run.config["trainer"]
    interactive = sys.stdout.isatty() and not is_ddp_child()
    every = t.get("checkpoint_every_n_steps", CHECKPOINT_EVERY_N_STEPS)
    resumable = trainer_parts(run.id, run.config, run_dir, monitor, mode, every)
    callbacks = [
        *resumable["callbacks"],
        StatusProgress(run_dir),
        DivergenceGuard(),
        RichProgressBar() if interactive else LogLines(label),
        *callbacks,
    ]
    return L.Trainer(
        default_root_dir=run_dir.path,
        logger=[resumable["logger"],
                *extra_loggers(run, run_dir, monitor)],  # trainer.loggers: bench/train/loggers.py
        callbacks=callbacks,
        plugins=resumable["plugins"],
        # the datamodules' samplers are sharded by rank in bench/resume/batches.py, which can
        # resume mid-epoch; Lightning's DistributedSampler wrapper could not
        use_distributed_sampler=False,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        max_epochs=t["max_epochs"], accelerator=t["accelerator"], devices=t["devices"],
        strategy=t["strategy"], num_nodes=t["num_nodes"], precision=t["precision"],
        limit_train_batches=t["limit_train_batches"], limit_val_batches=t["limit_val_batches"],
        limit_test_batches=t["limit_test_batches"], gradient_clip_val=t["gradient_clip_val"],
        accumulate_grad_batches=t["accumulate_grad_batches"],
        check_val_every_n_epoch=t["check_val_every_n_epoch"],
        log_every_n_steps=t["log_every_n_steps"],
    )


def train_run(run: Run, run_dir: RunDir, label: str = "", extra_callbacks=()) -> dict:
    """Train (or resume) and test one run. Returns its metrics (the runner writes them).

    Raises RunInterrupted on Ctrl-C/SIGTERM (after saving a checkpoint to resume from).
    """
    import lightning as L

    from bench.data import build_datamodule, dataset_spec
    from bench.environment import environment
    from bench.resume.batches import ResumableData
    from bench.resume.point import resume_point
    from bench.resume.stops import raise_if_stopped, stopping
    from bench.tasks import TASKS, build_task, run_seeds
    from bench.train.callbacks import CostsAndShares
    from bench.train.shares import ShareAnalysis

    _quiet_lightning()
    cfg = run.config
    spec = TASKS[dataset_spec(cfg["data"]["name"]).task]
    # the data's seed (trainer.seeds.order, else the run seed): batch order, augmentation,
    # fresh training canvases; the weights take the init seed (build_task)
    _, order = run_seeds(cfg)
    L.seed_everything(order, workers=True, verbose=False)
    datamodule = build_datamodule(cfg["data"], order)
    datamodule.check()
    task = build_task(cfg, datamodule)
    costs = CostsAndShares()
    # the weights before any training (a resumed run loads its checkpoint later, in fit): the
    # share report's "same model at initialisation" (bench/train/shares.py)
    initial = {k: v.detach().clone() for k, v in task.backbone.state_dict().items()}
    share_analysis = ShareAnalysis(initial)
    callbacks = [costs, share_analysis, ResumableData(datamodule), *extra_callbacks]
    trainer = build_trainer(run, run_dir, callbacks, label, spec.monitor, spec.mode)
    if is_ddp_child():  # rank 0 chose the checkpoint (and set unreadable ones aside)
        resume = ddp_resume_point()
    else:
        resume = resume_point(run_dir, run, dict(task.hparams))
    # read before training: if it could fail, it fails before hours of work, not after
    env = environment(trainer.strategy.root_device.type)
    launched = announce_ddp_run(run.id, resume) if trainer.world_size > 1 else {}
    try:
        # a stop ends training where it can resume exactly (bench/resume/stops.py)
        with stopping(trainer):
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
            raise_if_stopped(trainer)
            best = trainer.checkpoint_callback.best_model_path
            tested = trainer.test(task, datamodule=datamodule, ckpt_path=best or None,
                                  verbose=False)
            raise_if_stopped(trainer)  # in the test's last batch: tested again on resume
    finally:
        if launched:
            end_ddp_run(launched)
    test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    # the task's per-test-image record (bench/tasks: prediction_arrays), for the report's
    # tests over test images
    if trainer.is_global_zero and hasattr(task, "prediction_arrays"):
        arrays = task.prediction_arrays()
        if arrays:
            run_dir.write_predictions(arrays)
    score = trainer.checkpoint_callback.best_model_score
    return {
        "test": test_metrics,
        "best_val": {spec.monitor: float(score) if score is not None else None},
        "epochs": trainer.current_epoch,
        "costs": {k: costs.summary.get(k) for k in ("params", "backbone_params", "gflops",
                                                    "train_images_per_s")},
        "shares": share_analysis.trained or costs.summary.get("test_shares"),
        "shares_init": share_analysis.initial,
        "val_shares": costs.summary.get("val_shares"),
        "environment": env,
        # what the stored numbers mean (the version is also in the run id: bench/tasks)
        "metrics_version": spec.metrics_version,
        "metric_definitions": spec.definitions,
    }
