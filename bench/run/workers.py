"""Local worker processes for `run --jobs N` and `sweep --workers N`.

Each worker re-runs the parent's own command line without the option that asked for workers,
told its slot by LESA_BENCH_WORKER=k/N; the run locks (run) or the shared Optuna storage (sweep)
share the work out between them. A stop that reaches the parent alone (`kill PID`,
`kill -INT PID`) is passed on to the workers; a terminal's Ctrl-C reached them already, and a
worker that is saving ignores the second stop (bench/resume/stops.py).

With a log folder, each worker's output goes whole to <folder>/worker-<k>.log and, without its
per-epoch lines, to the parent, which shows the matrix's progress (bench/run/progress.py):
two workers' epoch lines no longer interleave, and only the parent draws a live display. The
workers print their runs' lines (starting, done, failed, interrupted); the matrix's summary is
the parent's alone.

A worker whose parent dies (`kill -9`, a closed terminal) gets SIGTERM (Linux: PR_SET_PDEATHSIG,
`follow_parent`) and stops its run as interrupted, saved; elsewhere its next line, written to a
pipe nobody reads, stops it the same way (bench/run/pipes.py).
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKER_ENV = "LESA_BENCH_WORKER"
PARENT_ENV = "LESA_BENCH_WORKER_PARENT"  # the pid of the process that started the worker
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0  # how often the parent re-reads the progress
# a run's progress lines (bench/train/callbacks.py LogLines: "  [3/28] conv ... epoch 2/5 ..."):
# kept in the worker's log; the parent's progress display says the same for every worker
EPOCH_LINE = re.compile(r"^\s+\[[^\]]*\] .*\bepoch \d+/\d+\b")


def worker_slot() -> tuple[int, int] | None:
    """(k, n) in worker k of n, None in a process that is no worker."""
    text = os.environ.get(WORKER_ENV)
    if not text:
        return None
    k, n = (int(x) for x in text.split("/"))
    return k, n


def follow_parent() -> None:
    """In a worker: be sent SIGTERM when the parent that started it dies, which stops the run
    as interrupted (bench/resume/stops.py). Before the stop handlers are installed SIGTERM
    just ends the worker, which has changed nothing yet. No-op outside a worker or Linux."""
    parent = os.environ.pop(PARENT_ENV, None)  # not for the processes it starts (DDP ranks)
    if worker_slot() is None or not parent:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a closed pipe stops it at its next line
        return
    if os.getppid() != int(parent):  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def _without(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """The command line without the option `names` (and its value)."""
    plain, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not token.startswith(tuple(f"{name}=" for name in names)):
            plain.append(token)
    return plain


def start_workers(argv: list[str], count: int, option: tuple[str, ...],
                  threads: int | None = None, log_dir: Path | None = None
                  ) -> list[subprocess.Popen]:
    """Start `count` workers running `lesa-bench <argv without option>`; with `threads`, each
    gets that many OpenMP/MKL threads; with `log_dir`, their output is piped to the parent
    (wait_for_workers relays it) and kept in <log_dir>/worker-<k>.log."""
    plain = _without(argv, option)
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    piped = {}
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the parent as they are printed
        piped = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     errors="replace")
    workers = []
    for k in range(count):
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *plain],
                                env={**env, WORKER_ENV: f"{k}/{count}",
                                     PARENT_ENV: str(os.getpid())}, **piped)
        proc.log_path = log_dir / f"worker-{k}.log" if log_dir is not None else None
        workers.append(proc)
    return workers


def _relay(proc: subprocess.Popen, echo) -> None:
    """Copy a worker's output to its log file, and all but its epoch lines to `echo`."""
    with open(proc.log_path, "a", encoding="utf-8") as log:
        log.write(f"==== worker pid {proc.pid}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not EPOCH_LINE.match(line):
                echo(line.rstrip("\n"))


def wait_for_workers(workers: list[subprocess.Popen], progress=None) -> list[int] | None:
    """The workers' exit codes once all have ended; None when this process was stopped (then
    the stop is passed on to the workers still running, and they have ended too). `progress`
    (a bench/run/progress.py MatrixProgress, entered) is refreshed while they run and prints
    their relayed lines."""
    echo = progress.print if progress is not None else print
    relays = [threading.Thread(target=_relay, args=(w, echo), daemon=True)
              for w in workers if w.stdout is not None]
    for relay in relays:
        relay.start()
    try:
        while any(w.poll() is None for w in workers):
            if progress is not None:
                progress.refresh()
            time.sleep(POLL_S)
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            w.wait()
        codes = None
    finally:
        for relay in relays:  # the workers' last lines (what they saved) before the summary
            relay.join(timeout=30)
    for k, (w, code) in enumerate(zip(workers, codes or [])):
        if code not in (0, 1, 130) and getattr(w, "log_path", None):
            echo(f"worker {k} exited with code {code}; its output: {w.log_path}")
    return codes
