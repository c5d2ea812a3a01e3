"""Stop signals: Ctrl-C and SIGTERM stop a run, which saves a checkpoint and is marked
interrupted; a stop that lands in a checkpoint write waits for the write.

SIGTERM (what SLURM and other schedulers send before killing) raises `Terminated`, a
KeyboardInterrupt, so every `except KeyboardInterrupt` treats it as a Ctrl-C. Passing a stop on to
worker processes is bench/run/workers.py's.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a Ctrl-C would be: every `except KeyboardInterrupt` treats it so."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM (its checkpoint saved when its fit had begun)."""


_saving = False  # set once an interrupted run starts saving (save_on_stop)


def saving_after_stop() -> None:
    """Mark this process as saving after a stop: a SIGTERM is ignored from here on."""
    global _saving
    _saving = True


def install_stop_signals() -> None:
    """SIGTERM raises `Terminated`, so the run saves a checkpoint and is marked interrupted, as
    on Ctrl-C.

    Once the run is saving (`saving_after_stop`), a SIGTERM is ignored: a worker of `run --jobs`
    or `sweep --workers` that got a terminal's Ctrl-C (the whole process group gets it) is sent
    a SIGTERM by its parent too, which must not cut the checkpoint save short (Lightning ignores
    further Ctrl-Cs then, for the same reason). Before that point the SIGTERM still stops: a
    first interrupt that Python swallowed (one raised inside a finalizer is only printed) must
    not leave the worker training on."""

    def on_term(signum, frame):
        if not _saving:
            raise Terminated()

    signal.signal(signal.SIGTERM, on_term)


def save_on_stop(trainer, path, exception: BaseException) -> None:
    """On a stop (not on other exceptions) save the checkpoint at `path`; from here on a second
    stop (the --jobs parent's copy of a Ctrl-C) is ignored, so it cannot cut the save short."""
    if isinstance(exception, KeyboardInterrupt):
        saving_after_stop()
        trainer.save_checkpoint(path)


@contextlib.contextmanager
def stops_held():
    """Hold a Ctrl-C or SIGTERM that arrives during a checkpoint write until the write is done,
    then act on it. Raised inside torch.save, the interrupt surfaced as the zip writer's
    RuntimeError and failed the run instead of saving it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    held = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # not ignored (Lightning ignores SIGINT while it shuts down)
            held[sig] = handler
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    for sig in pending[:1]:  # the first stop acts, as it would have in the write
        held[sig](sig, None)
