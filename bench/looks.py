"""`run --until-resolved` and `slurm --until-resolved`: the experiment's planned sequential
design (its `analysis: {looks: [...]}`), carried out.

The first look trains looks[0] seeds of every cell; each later look trains more seeds only for
the cells an open comparison needs (its row and its baseline), up to that look's count, so the
compute goes where a question is still open. After each look the report's own decisions
(bench/report/analysis.py, bench/stats/sequential.py) say which comparisons stopped: better,
worse, equivalent, futile, or the last look. The matrix's `seed:` axis is the seed pool, in its
order; run ids are those of the plain matrix, so runs already trained count.

The loop keeps no state of its own: each step reads the store, so a loop stopped anywhere and
started again goes on at the same look and ends as an uninterrupted one would.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import ConfigError, Experiment, Run
from bench.report import analyse, collect
from bench.report.records import row_key
from bench.store import RunState


@dataclass
class Step:
    """Where the design stands: the runs the next look needs (not done yet), the decisions so
    far, and why the loop cannot go on (a failed run holds its table)."""
    todo: list[Run] = field(default_factory=list)
    needed: list[Run] = field(default_factory=list)  # every run the next look reads
    open: int = 0
    stopped: dict[str, int] = field(default_factory=dict)  # verdict -> comparisons
    blocked: list[str] = field(default_factory=list)  # failed runs the next look needs
    look: int | None = None  # the next look (1-based), None when every comparison stopped


def seed_pool(exp: Experiment) -> list:
    seeds = exp.matrix.get("seed")
    return list(seeds) if isinstance(seeds, list) else [exp.base.get("seed", 0)]


def step(exp: Experiment, results: Path, baseline: str | None = None) -> Step:
    """The next look's work, from the store."""
    looks = exp.analysis.get("looks")
    if not looks:
        raise ConfigError(f"{exp.path or exp.name}: --until-resolved needs a planned design: "
                          f"add analysis: {{looks: [5, 10, 20]}} (and a margin) to the "
                          f"experiment file (docs/statistics.md); `lesa-bench design` shows "
                          f"what a plan does")
    records = collect(exp, exp.runs, results)
    analysis = analyse(exp, records, baseline, image_bootstrap=False)
    pool = seed_pool(exp)
    # (dataset, row) -> seeds per cell the next look needs: every cell has the first look's
    want = {(r.config["data"]["name"], row_key(r)): looks[0] for r in exp.runs}
    out = Step()
    for (dataset, metric), column in analysis.columns.items():
        if metric not in analysis.headline(dataset):
            continue
        for name, row in column.rows.items():
            c = row.comparison
            if c is None or c.looks is None:  # not a comparison of the plan
                continue
            if c.stop_reason == "open":  # seeds_needed: the seeds its next look reads
                out.open += 1
                for cell in (name, c.baseline):
                    want[(dataset, cell)] = max(want.get((dataset, cell), 0), c.seeds_needed)
            else:
                out.stopped[c.verdict] = out.stopped.get(c.verdict, 0) + 1
    state = {r.run.id: r.state for r in records}
    for run in exp.runs:
        n = want.get((run.config["data"]["name"], row_key(run)), 0)
        if run.config["seed"] in pool[:n]:
            out.needed.append(run)
            if state.get(run.id) == RunState.FAILED:
                out.blocked.append(run.id)
            elif state.get(run.id) != RunState.DONE:
                out.todo.append(run)
    if out.open or out.todo or out.blocked:
        out.look = looks.index(max(want.values())) + 1
    return out


def summary(s: Step) -> str:
    stopped = ", ".join(f"{n} {verdict}" for verdict, n in sorted(s.stopped.items()))
    return (f"{s.open} comparisons open" + (f"; stopped: {stopped}" if stopped else "")
            + f"; {len(s.needed)} runs in the next look, {len(s.todo)} to train")


def run_until_resolved(exp: Experiment, results: Path, console: Console, jobs: int = 1,
                       argv: list[str] | None = None, baseline: str | None = None,
                       retry_failed: bool = False) -> int:
    """Train look after look until every comparison stopped. Exit code as `run`'s."""
    from bench.run.runner import run_experiment, run_workers

    looks = exp.analysis.get("looks") or []
    trained = 0

    def train(runs: list[Run], retry: bool) -> int:
        if jobs > 1:  # the workers train exactly these runs (a hidden --run-ids)
            worker_argv = [a for a in argv or [] if a not in ("--until-resolved",
                                                              "--retry-failed")]
            worker_argv += ["--run-ids", ",".join(r.id for r in runs)]
            return run_workers(worker_argv + (["--retry-failed"] if retry else []), jobs, exp,
                               runs, results, console)
        return run_experiment(exp, runs, results, console, retry_failed=retry)

    while True:
        s = step(exp, results, baseline)
        if s.blocked and not retry_failed:
            console.print(f"[red]--until-resolved:[/] the next look reads runs that failed: "
                          f"{', '.join(s.blocked)}; fix the cause and re-run with "
                          f"--retry-failed", soft_wrap=True)
            return 1
        if s.blocked:  # --retry-failed: those first, once
            retry_failed = False
            code = train([r for r in exp.runs if r.id in s.blocked], True)
            if code != 0:
                return code
            continue
        if s.look is None:
            _finish(exp, results, console, baseline, trained)
            return 0
        if not s.todo:  # trained, and still not read: a value the table cannot use
            console.print(f"[red]--until-resolved:[/] look {s.look}'s runs are all done but its "
                          f"decisions cannot be read (a run without a value of the table's "
                          f"metric?); see `lesa-bench report`", soft_wrap=True)
            return 1
        console.print(f"[bold]look {s.look} of {len(looks)}[/] ({looks[s.look - 1]} seeds per "
                      f"cell where a comparison is open): {summary(s)}", highlight=False)
        code = train(s.todo, False)
        trained += len(s.todo)
        if code == 130:
            console.print("[yellow]stopped: run the same command to go on at this look")
            return 130
        if code != 0:
            console.print("[red]--until-resolved:[/] runs of this look failed: fix the cause "
                          "and re-run with --retry-failed", soft_wrap=True)
            return code


def _finish(exp: Experiment, results: Path, console: Console, baseline: str | None,
            trained: int) -> None:
    s = step(exp, results, baseline)
    done = sum(1 for r in collect(exp, exp.runs, results) if r.state == RunState.DONE)
    looks = exp.analysis["looks"]
    fixed = len({(r.config["data"]["name"], row_key(r)) for r in exp.runs}) * looks[-1]
    console.print(f"[bold]design finished[/]: every comparison stopped "
                  f"({', '.join(f'{n} {v}' for v, n in sorted(s.stopped.items()))}); "
                  f"{done} runs trained in all ({trained} now), against {fixed} for the fixed "
                  f"design at the last look. The verdicts: `lesa-bench report "
                  f"{escape(str(exp.path or exp.name))}`", highlight=False, soft_wrap=True)


def submit_look(exp: Experiment, results: Path, console: Console, submit, baseline=None,
                retry_failed: bool = False) -> int:
    """`slurm --until-resolved`: submit the next look's runs as one array (`submit(runs)`, the
    failed ones too with `retry_failed`), or say that the design is finished. Re-invoked after
    the array finished, it moves on."""
    s = step(exp, results, baseline)
    looks = exp.analysis["looks"]
    if s.look is None:
        _finish(exp, results, console, baseline, 0)
        return 0
    if s.blocked and not retry_failed:
        console.print(f"[red]--until-resolved:[/] the next look reads runs that failed: "
                      f"{', '.join(s.blocked)}; fix the cause and submit with --retry-failed",
                      soft_wrap=True)
        return 1
    console.print(f"[bold]look {s.look} of {len(looks)}[/]: {summary(s)}", highlight=False)
    code = submit(s.todo + [r for r in exp.runs if r.id in s.blocked])
    command = shlex.join(["lesa-bench", "slurm", str(exp.path or exp.name), "--until-resolved"])
    console.print(f"when this array has finished, run `{escape(command)}` again: it reads the "
                  f"look's decisions and submits the next look (or says the design is done)",
                  soft_wrap=True)
    return code
