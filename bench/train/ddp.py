"""DDP across processes: Lightning's `ddp` starts ranks 1.. by re-running this very command with
LOCAL_RANK set. Rank 0 names the run (and its checkpoint) in the environment; the other ranks
train only that run and write nothing of their own: no lock, no status, no metrics, no tables
(checkpoints and logs are rank 0's already).
"""
from __future__ import annotations

import os
from pathlib import Path

# set by rank 0 for the other ranks
_DDP_RUN, _DDP_RESUME = "LESA_BENCH_DDP_RUN", "LESA_BENCH_DDP_RESUME"
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_ddp_child() -> bool:
    """Whether this process is a DDP rank > 0 that Lightning started for rank 0's run."""
    return bool(os.environ.get(_DDP_RUN)) and os.environ.get("LOCAL_RANK", "0") != "0"


def ddp_run_id() -> str:
    """The id of the run rank 0 named (in a rank > 0)."""
    return os.environ[_DDP_RUN]


def ddp_resume_point() -> str | None:
    """The checkpoint rank 0 chose (it also set unreadable ones aside), in a rank > 0."""
    return os.environ.get(_DDP_RESUME) or None


def announce_ddp_run(run_id: str, resume: Path | None) -> dict:
    """Tell the ranks Lightning is about to start which run to train and from where."""
    if is_ddp_child():
        return {}
    before = {k: os.environ.get(k) for k in (*_DDP_ENV, _DDP_RUN, _DDP_RESUME)}
    os.environ[_DDP_RUN] = run_id
    os.environ[_DDP_RESUME] = str(resume or "")
    return before


def end_ddp_run(before: dict) -> None:
    """Leave no process group and none of Lightning's launch variables behind, so the next run
    of the matrix starts its own ranks (Lightning would take LOCAL_RANK as 'already launched')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
