"""Resume point: which checkpoint a run goes on from, and whether that checkpoint is the run's own.

A checkpoint that cannot be read is set aside (renamed *.unreadable) and the previous one is
tried; one written by a run with another config is refused, never loaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.config import Run
from bench.store import RunDir


def resume_point(run_dir: RunDir, run: Run | None = None,
                 hparams: dict | None = None) -> Path | None:
    """The checkpoint to resume from: last.ckpt, else last.prev.ckpt, else best.ckpt.

    Checkpoints are written atomically (AtomicCheckpointIO), so a kill mid-save leaves the
    previous one; a file damaged some other way (disk full, a bad copy) is set aside, not
    trusted, and the fallback is said on the console and in status.json. A checkpoint written by
    another config's run is refused (ForeignCheckpoint), never loaded.
    """
    for tmp in run_dir.checkpoints.glob(".*.tmp"):  # left by a kill mid-save (we hold the lock)
        tmp.unlink(missing_ok=True)
    set_aside = []
    for path in (run_dir.last_checkpoint, run_dir.checkpoints / "last.prev.ckpt",
                 run_dir.checkpoints / "best.ckpt"):
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is set aside
            aside = path.with_suffix(".ckpt.unreadable")
            path.replace(aside)
            set_aside.append(f"{path.name} ({type(err).__name__}) moved to {aside.name}")
            print(f"  warning: checkpoint {path} is unreadable ({type(err).__name__}); moved to "
                  f"{aside.name}, trying the previous one", flush=True)
            continue
        if run is not None:
            check_owner(state, path, run.id, run.config, hparams)
        epoch, step = state["epoch"], state["global_step"]
        del state
        if set_aside:
            print(f"  resuming from {path.name} (epoch {epoch + 1}, step {step}) instead",
                  flush=True)
        run_dir.update_status(resumed_from={"checkpoint": path.name, "epoch": epoch,
                                            "global_step": step},
                              checkpoint_fallback="; ".join(set_aside) or None)
        return path
    if set_aside:
        print("  no readable checkpoint left: training from scratch", flush=True)
        run_dir.update_status(resumed_from=None, checkpoint_fallback="; ".join(set_aside)
                              + "; no readable checkpoint left, trained from scratch")
    return None


class ForeignCheckpoint(Exception):
    """A checkpoint in a run's folder that was written by a run with another config."""


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint on CPU (raises on a truncated or corrupt file)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["epoch"], state["global_step"]  # noqa: B018 - a checkpoint has both, or is damaged
    return state


def check_owner(state: dict, path: Path, run_id: str, config: dict,
                hparams: dict | None = None) -> None:
    """Raise ForeignCheckpoint when `state` was saved by another run (another config).

    The run id is the hash of everything that changes what a run computes, so an equal id is
    the same run. A checkpoint from before ids were stored is judged by the task's hparams.
    """
    owner = state.get("lesa_bench") or {}
    saved_id, saved = owner.get("run_id"), owner.get("config")
    if saved_id is not None:
        if saved_id == run_id:
            return
        differs = _differences(saved or {}, config)
    else:
        saved = state.get("hyper_parameters")
        if hparams is None or saved is None or saved == hparams:
            return
        differs = _differences(saved, hparams)
    raise ForeignCheckpoint(
        f"checkpoint {path} was written by another run ({saved_id or 'unknown id'}"
        f"{'; it differs in ' + ', '.join(differs[:4]) if differs else ''}), not by {run_id}; "
        f"refusing to resume from it. Move it out of {path.parent} (or delete "
        f"{path.parent.parent}) to train this run from scratch")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key} ({x!r} there, {y!r} here)")
    return out
