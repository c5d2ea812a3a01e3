"""Test-only stops at chosen points inside a run, patched in from here (the suite's code has no
test hooks).

A spec is "point:N" or "point:N:SIGNAL", several joined by commas: SIGKILL (or SIGINT/SIGTERM...)
is sent to the process itself at
    save:N   inside the N-th checkpoint write: its bytes written, not yet fsynced or renamed
    step:N   at the end of training step N's batch (after any periodic checkpoint of that step)
    optim:N  inside training step N: after its backward pass, before its optimizer step
    val:N    after the N-th validation batch (sanity checks not counted)
    test:N   after test batch N

In this process: `install(spec, monkeypatch.setattr)`. In a subprocess (a `lesa-bench` command,
its --jobs workers, DDP ranks): `env(spec)`, which sets ENV and puts tests/hooks on PYTHONPATH,
whose sitecustomize.py calls `install` when the interpreter starts.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "LESA_BENCH_TEST_KILL_AT"
HOOKS = Path(__file__).resolve().parent / "hooks"


def parse(spec: str) -> list[tuple[str, int, int]]:
    out = []
    for part in filter(None, spec.split(",")):
        point, count, *name = part.split(":")
        out.append((point, int(count), getattr(signal, f"SIG{name[0] if name else 'KILL'}")))
    return out


def install(spec: str, patch=setattr) -> None:
    """Patch the stops of `spec` into the run's checkpoint IO and callbacks (`patch`: setattr,
    or monkeypatch.setattr to undo them after a test)."""
    from bench.resume.checkpoints import AtomicCheckpointIO, PeriodicCheckpoint

    wanted = parse(spec)
    saves = [0]

    def stop(point: str, count: int) -> None:
        for where, n, signum in wanted:
            if where == point and n == count:
                os.kill(os.getpid(), signum)

    write, batch_end = AtomicCheckpointIO._write, PeriodicCheckpoint.on_train_batch_end

    def _write(checkpoint, f):
        write(checkpoint, f)
        saves[0] += 1
        stop("save", saves[0])

    def on_train_batch_end(self, trainer, *args, **kwargs):
        batch_end(self, trainer, *args, **kwargs)
        stop("step", trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        stop("optim", trainer.global_step + 1)

    def on_validation_batch_end(self, trainer, *args, **kwargs):
        if not trainer.sanity_checking:
            self.killpoint_val = getattr(self, "killpoint_val", 0) + 1
            stop("val", self.killpoint_val)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        stop("test", batch_idx + 1)

    patch(AtomicCheckpointIO, "_write", staticmethod(_write))
    for hook in (on_train_batch_end, on_before_optimizer_step, on_validation_batch_end,
                 on_test_batch_end):
        patch(PeriodicCheckpoint, hook.__name__, hook)


def env(spec: str | None, base: dict | None = None) -> dict:
    """An environment for a subprocess that stops at `spec` (None: one that never does)."""
    out = dict(os.environ if base is None else base)
    out.pop(ENV, None)
    if spec:
        out[ENV] = spec
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), out.get("PYTHONPATH")]))
    return out
