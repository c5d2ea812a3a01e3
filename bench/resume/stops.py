"""Stops: Ctrl-C, SIGTERM and a closed terminal (SIGHUP) stop a run at the next point it can
resume from exactly, where it saves a checkpoint and is marked interrupted. Everything about a
stop is here: the signal handlers, the hand-over to Lightning's graceful stop (this is the one
module that sets its flag, through bench/compat.py), the callbacks that save at the stop and
hold it through a validation, and the context a run's fit and test run in (`stopping`).

While a run trains or tests (`stopping`), a stop is handed to Lightning's own graceful stop:
Lightning raises `SIGTERMException` at the end of the current training batch (after its metrics
are logged) or at the end of the epoch; `SaveOnInterrupt` saves there. A stop is not raised where it lands: in
the middle of a step the saved state would mix the batch in flight with the one before, and a
checkpoint from the middle of a validation loses the metrics accumulated so far. So a stop
during validation waits for the validation to end (`StopAtSafePoint`). A second Ctrl-C stops at
once without saving, as `kill -9` does: the resume from the last checkpoint is exact too. Other
further stops change nothing (a `--jobs` worker gets the terminal's Ctrl-C and its parent's
SIGTERM for one key press).

Outside a run (loading data, between runs), SIGTERM raises `Terminated`, a KeyboardInterrupt, so
every `except KeyboardInterrupt` treats it as a Ctrl-C. Passing a stop on to worker processes is
bench/run/workers.py's; saving and requeueing on SLURM's warning signal, bench/cluster/requeue.py's.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

import lightning as L

from bench import compat


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a Ctrl-C would be: every `except KeyboardInterrupt` treats it so."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM (its checkpoint saved when its fit had begun)."""

    saved = False  # a checkpoint was saved at the stop (not after a second Ctrl-C)


_saving = False  # set once an interrupted run starts saving (save_on_stop)


class _Deferral:
    trainer = None  # the Trainer whose fit or test runs now: stops are handed to it
    requested: int | None = None  # the first stop signal it received
    ctrl_c = 0  # Ctrl-Cs received while it ran: the second stops at once


def saving_after_stop() -> None:
    """Mark this process as saving after a stop: further stops are ignored from here on."""
    global _saving
    _saving = True


def stop_requested() -> bool:
    """Whether a stop came while the current run trained or tested."""
    return _Deferral.requested is not None


def lightning_may_stop(trainer) -> bool:
    """Whether Lightning's graceful stop may act now: in training and testing, not in a
    validation (nor the sanity check), where it would stop mid-way (module docstring)."""
    return bool(trainer.training or trainer.testing)


def hand_stop_to_lightning(trainer) -> None:
    """Set (or, in a validation, hold back) Lightning's stop flag for a requested stop."""
    if _Deferral.requested is not None:
        compat.set_stop_flag(trainer, lightning_may_stop(trainer))


@contextlib.contextmanager
def stopping(trainer):
    """The block (a run's fit and test) runs with stops handed to `trainer` instead of raised
    where they land; a stop that ended it raises RunInterrupted (after SaveOnInterrupt saved)."""
    global _saving
    _Deferral.trainer, _Deferral.requested, _Deferral.ctrl_c, _saving = trainer, None, 0, False
    try:
        yield
    except SystemExit:  # Lightning's graceful stop (SIGTERMException) or its KeyboardInterrupt
        stop = RunInterrupted()
        stop.saved = _saving
        raise stop from None
    finally:
        _Deferral.trainer = None


def raise_if_stopped(trainer) -> None:
    """RunInterrupted when a stop came that Lightning did not act on (after its last check, or
    in the test's last batch: the test runs again on resume)."""
    if trainer.interrupted or stop_requested():
        raise RunInterrupted()


def _say(text: bytes) -> None:
    """Write to stderr from the handler; a stderr whose reader is gone (`2>&1 | tee`, ended by
    the same Ctrl-C) must not turn the stop into a BrokenPipeError that fails the run."""
    try:
        os.write(2, text)
    except OSError:
        pass


def _on_stop(signum, frame):
    if _saving:
        return  # the --jobs parent's copy of a stop must not cut the save short
    trainer = _Deferral.trainer
    if trainer is None:
        raise Terminated() if signum in (signal.SIGTERM, signal.SIGHUP) else KeyboardInterrupt()
    _Deferral.ctrl_c += signum == signal.SIGINT
    if _Deferral.ctrl_c >= 2:  # the user will not wait for the safe point: stop now, no save
        _say(b"\nstopping now: the run resumes from its last checkpoint\n")
        raise KeyboardInterrupt()
    if _Deferral.requested is None:  # other further stops change nothing
        _say(b"\nstopping where the run can resume from exactly (the end of this step or "
             b"validation; Ctrl-C again: at once, from the last checkpoint)\n")
        _Deferral.requested = signum
    # Lightning's own SIGTERM handler ran before this one and set the flag: set or hold it back
    hand_stop_to_lightning(trainer)


def install_stop_signals() -> None:
    """SIGTERM and Ctrl-C stop a run at its next exact resume point (module docstring).

    Once the run is saving (`saving_after_stop`), a stop is ignored: a worker of `run --jobs`
    or `sweep --workers` that got a terminal's Ctrl-C (the whole process group gets it) is sent
    a SIGTERM by its parent too, which must not cut the checkpoint save short. A SIGINT that is
    ignored (a background job of a non-interactive shell) stays ignored."""
    signal.signal(signal.SIGTERM, _on_stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_stop)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # the terminal closed (not nohup)
        signal.signal(signal.SIGHUP, _on_stop)


def save_on_stop(trainer, path, exception: BaseException) -> None:
    """At Lightning's graceful stop (`SIGTERMException`) in training, save the checkpoint at
    `path`; from here on a further stop is ignored, so it cannot cut the save short.

    Nothing is saved on other exceptions (after a crash the last good checkpoint is worth more),
    on a raw KeyboardInterrupt (raised mid-step: the state is not one to resume from), nor in a
    validation, the sanity check or a test: the last checkpoint stands for those."""
    from lightning.pytorch.trainer.states import TrainerFn
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if (isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING
            and trainer.training):
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
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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


class SaveOnInterrupt(L.Callback):
    """Save last.ckpt when a stop ends training at a point it can resume from exactly, so a
    re-run resumes from there.

    Only on stops: after a crash the last good checkpoint is worth more. (Lightning's
    OnExceptionCheckpoint saves on any exception and deletes its file at teardown.)
    """

    def __init__(self, path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception):
        save_on_stop(trainer, self.path, exception)


class StopAtSafePoint(L.Callback):
    """Hands a requested stop to Lightning's graceful stop where it may act, and holds it back
    through a validation, which must run to its end."""

    def on_train_start(self, trainer, pl_module):
        hand_stop_to_lightning(trainer)  # Lightning clears its flag when fit starts

    def on_test_start(self, trainer, pl_module):
        hand_stop_to_lightning(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        hand_stop_to_lightning(trainer)

    def on_validation_start(self, trainer, pl_module):
        hand_stop_to_lightning(trainer)  # held back: validating

    def on_validation_end(self, trainer, pl_module):
        # in fit, Lightning checks the flag next back in training, at the epoch's end
        compat.set_stop_flag(trainer, trainer.state.fn == "fit" and stop_requested())
