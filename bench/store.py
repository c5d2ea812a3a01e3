"""The results store: one folder per run, results/<experiment>/<run-id>/.

    config.yaml     the resolved config (the run id is a hash of it)
    status.json     state (a RunState), error, timing, host, progress; written atomically,
                    read by `status` and `report`
    metrics.json    final metrics: test metrics, shares, costs (atomic)
    predictions.npz the test set's per-image predictions and ground truth (atomic): the
                    report's bootstrap over test images
    checkpoints/    last.ckpt and best.ckpt
    logs/           Lightning's CSV logs
    error.log       the traceback of a failed run
    lock            held while a process trains the run (host, pid)

No torch here: `status` and `report` only read JSON, YAML and numpy files.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import yaml


PREDICTIONS = "predictions.npz"


class RunState(str, Enum):
    """A run's state in status.json. A str: it compares, hashes, prints and is stored as its
    value ("done", never "RunState.DONE")."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"  # a sweep trial stopped early by Optuna's pruner

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class StoreWriteError(OSError):
    """A run's file could not be written (disk full, no permission): names the file and why.
    Whatever was half-written is removed first."""

    def __init__(self, path, err: OSError):
        super().__init__(err.errno, f"could not write {path}: {err.strerror or err}")


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a kill) never sees a half-written file; a failed
    write leaves the old file and no temp, and raises StoreWriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StoreWriteError(path, err) from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class RunDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def config(self) -> dict | None:
        try:
            return yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None

    def status(self) -> dict:
        return _read_json(self.path / "status.json") or {"state": RunState.PENDING}

    def metrics(self) -> dict | None:
        return _read_json(self.path / "metrics.json")

    def create(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "config.yaml").exists():
            write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def update_status(self, **fields) -> dict:
        status = self.status()
        status.update(fields, updated=now())
        write_atomic(self.path / "status.json", json.dumps(status, indent=2))
        return status

    def write_error_log(self, text: str) -> bool:
        """error.log (the traceback of a failed run); False when it cannot be written (a full
        disk: the failure is still recorded in status.json if that can be)."""
        try:
            write_atomic(self.path / "error.log", text)
            return True
        except StoreWriteError:
            return False

    def write_metrics(self, metrics: dict) -> None:
        write_atomic(self.path / "metrics.json", json.dumps(metrics, indent=2, default=float))

    def write_predictions(self, arrays: dict[str, np.ndarray]) -> None:
        """predictions.npz (the task's per-image arrays, e.g. bench.stats.ap.pack_detections),
        written to a temp file and renamed."""
        path = self.path / PREDICTIONS
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # numpy adds .npz otherwise
        try:
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StoreWriteError(path, err) from None

    def predictions(self) -> dict | None:
        """predictions.npz as {array name: array}; None when missing or unreadable."""
        try:
            return load_predictions(self.path / PREDICTIONS)
        except (OSError, ValueError, KeyError):
            return None

    # --- per-run lock: two workers never train the same run --------------------------------
    def try_lock(self) -> bool:
        """Take the run's lock; a lock left by a dead process on this host is taken over."""
        lock = self.path / "lock"
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._lock_is_stale(lock):
                    return False
                try:
                    lock.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return True
        return False

    @staticmethod
    def _lock_is_stale(lock: Path) -> bool:
        holder = _read_json(lock)
        if holder is None:  # being written right now, or garbage: stale only if old
            try:
                return time.time() - lock.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        return process_gone(holder)  # another machine's lock is trusted (shared results dir)

    def unlock(self) -> None:
        try:
            (self.path / "lock").unlink()
        except FileNotFoundError:
            pass

    def locked_by_other(self) -> bool:
        lock = self.path / "lock"
        return lock.exists() and not self._lock_is_stale(lock)


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a local process from /proc (Linux); None elsewhere or if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def process_gone(holder: dict) -> bool:
    """Whether the process `holder` names ({"host", "pid"[, "start"]}: a lock's or a sweep
    worker's) is gone. Only a process on this host can be checked; another host's counts as
    alive. A zombie, or a pid now used by a process that started at another time, is gone."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    stat = proc_stat(int(holder["pid"]))
    if stat is not None:
        state, start = stat
        if state == "Z" or (holder.get("start") and start != holder["start"]):
            return True
    return False


def experiment_dir(results: Path, name: str) -> Path:
    return Path(results) / name


def run_dirs(results: Path, name: str) -> dict[str, RunDir]:
    root = experiment_dir(results, name)
    if not root.is_dir():
        return {}
    return {p.name: RunDir(p) for p in sorted(root.iterdir()) if (p / "config.yaml").exists()}


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
