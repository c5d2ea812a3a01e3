"""Local worker processes for `run --jobs N` and `sweep --workers N`.

Each worker re-runs the parent's own command line without the option that asked for workers,
told its slot by LESA_BENCH_WORKER=k/N; the run locks (run) or the shared Optuna storage (sweep)
share the work out between them. A stop that reaches the parent alone (`kill PID`,
`kill -INT PID`) is passed on to the workers; a terminal's Ctrl-C reached them already, and a
worker that is saving ignores the second stop (bench/run/signals.py).
"""
from __future__ import annotations

import os
import subprocess
import sys

WORKER_ENV = "LESA_BENCH_WORKER"


def worker_slot() -> tuple[int, int] | None:
    """(k, n) in worker k of n, None in a process that is no worker."""
    text = os.environ.get(WORKER_ENV)
    if not text:
        return None
    k, n = (int(x) for x in text.split("/"))
    return k, n


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
                  threads: int | None = None) -> list[subprocess.Popen]:
    """Start `count` workers running `lesa-bench <argv without option>`; with `threads`, each
    gets that many OpenMP/MKL threads."""
    plain = _without(argv, option)
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return [subprocess.Popen([sys.executable, "-m", "bench.cli", *plain],
                             env={**env, WORKER_ENV: f"{k}/{count}"})
            for k in range(count)]


def wait_for_workers(workers: list[subprocess.Popen]) -> list[int] | None:
    """The workers' exit codes once all have ended; None when this process was stopped (then
    the stop is passed on to the workers still running, and they have ended too)."""
    try:
        return [w.wait() for w in workers]
    except KeyboardInterrupt:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            w.wait()
        return None
