"""The matrix's progress, shown by the parent of `run --jobs N` and `sweep --workers N`: runs
done / total, failed, the running runs with their epoch, and an ETA.

Everything is read from the store, as `status` does: each run's status.json (its state, and the
epoch that bench/train/callbacks.py's StatusProgress keeps current), or for a sweep the Optuna
trials. The ETA comes from the durations of the finished runs of the same task (dataset), and
before the first of them from the running runs' epochs, scheduled over the workers. In a
terminal a rich progress display (the workers' stdout is a pipe, so they show no live bar of
their own: one live display at a time); elsewhere a plain line every `plain_every_s` seconds
and on every change of the counts, for log files.
"""
from __future__ import annotations

import heapq
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from bench.config import Run
from bench.store import RunDir, RunState, run_dirs


@dataclass
class Running:
    label: str
    task: str                     # runs of one task take about as long as each other
    elapsed_s: float
    epoch: int | None = None      # epochs finished
    max_epochs: int | None = None


@dataclass
class Snapshot:
    total: int
    done: int = 0
    failed: int = 0
    running: list[Running] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)     # the task of each run not started
    durations: dict[str, list[float]] = field(default_factory=dict)  # task -> finished runs' s

    def eta_s(self, workers: int) -> float | None:
        """Seconds until every run is finished: each running run's remaining time, then the
        pending runs handed to whichever worker is free first; None while a task has no
        estimate yet."""
        expected = {task: statistics.fmean(d) for task, d in self.durations.items() if d}
        for r in self.running:  # no finished run of its task yet: extrapolate from its epochs
            if r.task not in expected and r.epoch and r.max_epochs:
                expected[r.task] = r.elapsed_s * r.max_epochs / r.epoch
        free = []
        for r in self.running:
            if r.task not in expected:
                return None
            left = expected[r.task] - r.elapsed_s
            if r.epoch and r.max_epochs:  # what its epochs say, where they say more
                left = max(left, r.elapsed_s * (r.max_epochs - r.epoch) / r.epoch)
            free.append(max(left, 0.0))
        free += [0.0] * max(workers - len(free), 0)
        heapq.heapify(free)
        end = max(free, default=0.0)
        for task in self.pending:
            if task not in expected:
                return None
            finish = heapq.heappop(free) + expected[task]
            end = max(end, finish)
            heapq.heappush(free, finish)
        return end


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _started_s(status: dict) -> float | None:
    try:
        return time.mktime(time.strptime(status["started"], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def running_entry(label: str, task: str, status: dict) -> Running:
    """A running run from its status.json: elapsed counts its earlier sessions too."""
    started = _started_s(status)
    elapsed = (time.time() - started if started else 0.0) + (status.get("elapsed_s") or 0.0)
    return Running(label, task, elapsed, status.get("epoch"), status.get("max_epochs"))


def describe(run: Run) -> str:
    c = run.config
    return f"{c['model']['fusion']} {c['data']['name']} s{c['seed']}"


def task_of(config: dict) -> str:
    """Runs alike in duration: the same dataset, backbone and epochs."""
    return (f"{config['data']['name']}/{config['model']['backbone']}/"
            f"{config['trainer']['max_epochs']}")


def past_durations(root: Path, exclude: set[str]) -> dict[str, list[float]]:
    """Durations of the experiment's finished runs outside this selection (an earlier `run`
    with other --only), by task: the ETA before a run of the selection has finished."""
    out: dict[str, list[float]] = {}
    for run_id, rd in run_dirs(root.parent, root.name).items():
        status = rd.status()
        if run_id in exclude or status.get("state") != RunState.DONE:
            continue
        config = rd.config()
        try:
            task = task_of(config)
        except (KeyError, TypeError):
            continue
        if status.get("elapsed_s"):
            out.setdefault(task, []).append(status["elapsed_s"])
    return out


def runs_snapshot(runs: list[Run], root: Path, past: dict | None = None) -> Snapshot:
    """The matrix's state from the runs' status.json (`run --jobs`); `past`: past_durations,
    for the tasks none of these runs has finished yet."""
    snap = Snapshot(len(runs))
    for run in runs:
        task = task_of(run.config)
        status = RunDir(root / run.id).status()
        state = status.get("state", RunState.PENDING)
        if state == RunState.DONE:
            snap.done += 1
            if status.get("elapsed_s"):
                snap.durations.setdefault(task, []).append(status["elapsed_s"])
        elif state == RunState.FAILED:
            snap.failed += 1
        elif state == RunState.RUNNING:
            snap.running.append(running_entry(describe(run), task, status))
        else:
            snap.pending.append(task)
    for task, durations in (past or {}).items():
        snap.durations.setdefault(task, durations)
    return snap


def summary(snap: Snapshot, workers: int) -> str:
    """One plain line: counts, the running runs with their epoch, the ETA."""
    running = ", ".join(f"{r.label} epoch {(r.epoch or 0) + 1}/{r.max_epochs}"
                        if r.max_epochs else r.label for r in snap.running)
    eta = snap.eta_s(workers)
    left = snap.total - snap.done - snap.failed
    return (f"{snap.done}/{snap.total} done, {snap.failed} failed, {len(snap.running)} running"
            + (f" ({running})" if running else "")
            + (f"; ETA {clock(eta)}" if left else ""))


class MatrixProgress:
    """The parent's display. `refresh()` re-reads the store (through `snapshot`) and redraws;
    `print()` writes a line above a live display (a worker's output)."""

    def __init__(self, console: Console, title: str, snapshot, workers: int,
                 plain_every_s: float = 30.0):
        self.console, self.title, self.snapshot, self.workers = console, title, snapshot, workers
        self.plain_every_s = plain_every_s
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._overall = None
        self._rows: dict[str, object] = {}
        self._last_counts = None
        self._last_line = 0.0

    def __enter__(self):
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), console=self.console, transient=False)
            self._overall = self._progress.add_task(self.title, total=1, info="")
            self._progress.start()
        self.refresh()
        return self

    def __exit__(self, *exc):
        self.refresh()
        if self._progress is not None:
            self._progress.stop()

    def print(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True, highlight=False)

    def refresh(self) -> None:
        try:
            snap = self.snapshot()
        except Exception:  # noqa: BLE001 - a display must never stop the workers' matrix
            return
        if self._progress is not None:
            self._draw(snap)
            return
        counts = (snap.done, snap.failed, len(snap.running))
        now = time.monotonic()
        if counts != self._last_counts or now - self._last_line >= self.plain_every_s:
            self._last_counts, self._last_line = counts, now
            self.print(f"[{self.title}] {summary(snap, self.workers)}")

    def _draw(self, snap: Snapshot) -> None:
        p = self._progress
        eta = snap.eta_s(self.workers)
        left = snap.total - snap.done - snap.failed
        info = (f"[red]{snap.failed} failed[/] " if snap.failed else "") + \
            (f"{len(snap.running)} running, ETA {clock(eta)}" if left else "finished")
        p.update(self._overall, total=snap.total, completed=snap.done + snap.failed, info=info)
        seen = set()
        for r in snap.running:
            seen.add(r.label)
            if r.label not in self._rows:
                self._rows[r.label] = p.add_task(f"  {r.label}", total=r.max_epochs or 1,
                                                 info="")
            p.update(self._rows[r.label], total=r.max_epochs or 1, completed=r.epoch or 0,
                     info=f"epoch {(r.epoch or 0) + 1}/{r.max_epochs or '?'}, "
                          f"{clock(r.elapsed_s)}")
        for label in [k for k in self._rows if k not in seen]:
            p.remove_task(self._rows.pop(label))


def trials_snapshot(studies: dict, budgets: dict[str, int], root: Path) -> Snapshot:
    """A sweep's state from its Optuna studies ({short name: study}): complete and pruned
    trials are done (failed ones are retried, so they count apart); each study's budget minus
    its done and running trials is pending."""
    snap = Snapshot(sum(budgets.values()))
    for name, study in studies.items():
        done = running = 0
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("discarded"):
                continue
            state = t.state.name
            if state in ("COMPLETE", "PRUNED"):
                done += 1
                if state == "COMPLETE" and t.datetime_complete and t.datetime_start:
                    seconds = (t.datetime_complete - t.datetime_start).total_seconds()
                    snap.durations.setdefault(name, []).append(seconds)
            elif state == "FAIL":
                snap.failed += 1
            elif state == "RUNNING":
                running += 1
                run_id = t.user_attrs.get("run_id")
                status = RunDir(root / run_id).status() if run_id else {}
                if "started" not in status and t.datetime_start:
                    status = {**status, "started": t.datetime_start.strftime("%Y-%m-%dT%H:%M:%S")}
                snap.running.append(running_entry(f"{name} #{t.number}", name, status))
        snap.done += min(done, budgets[name])
        snap.pending += [name] * max(budgets[name] - done - running, 0)
    return snap


def sweep_progress(console: Console, title: str, cells, storage, budgets: dict[str, int],
                   root: Path, workers: int) -> MatrixProgress:
    """The parent's display of `sweep --workers`: `cells` are the sweep's StudyCells, `budgets`
    the trials per study (by study name)."""
    import optuna

    studies = {c.short: optuna.load_study(study_name=c.name, storage=storage) for c in cells}
    by_short = {c.short: budgets[c.name] for c in cells}
    return MatrixProgress(console, title, lambda: trials_snapshot(studies, by_short, root),
                          workers)
