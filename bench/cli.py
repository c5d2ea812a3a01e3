"""The `lesa-bench` command line. Thin: it parses arguments and calls the modules that do the
work (each subcommand names its module below). Heavy imports (torch, lightning) happen inside
the subcommands that need them, so --help, `status` and `report` stay fast (`run --dry-run`
imports torch alone, for the model check on the meta device: bench/train/preflight.py).

    run      bench/run/runner.py    train the matrix (skip done, resume unfinished); one run's
                                    fit and test in bench/train/trainer.py; stopping and
                                    resuming in bench/resume/; --jobs: bench/run/workers.py
    status   bench/report/          each run's state and progress
    report   bench/report/          ablation, shares and cost tables; exports and plots
    sweep    bench/sweep/study.py   Optuna studies, one per strategy; --workers: run/workers.py
    slurm    bench/cluster/slurm.py the pending runs as one SLURM job array; in a task:
                                    bench/cluster/requeue.py (save and requeue on the signal)
    design   bench/report/design.py the planned analysis: bounds per look, simulated error rates
    models   bench/costs/models.py  parameters, FLOPs and output shape of every strategy
    profile  bench/profile/         speed and memory of the attention strategies and peers
    convert  bench/convert.py  dataset converters (VisDrone -> COCO)
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment file (YAML), e.g. experiments/quick.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set trainer.max_epochs=2")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="keep only runs with this value (repeatable), e.g. --only model.fusion=sa")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results directory (default: results/)")


def _add_best_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--best-params", action="store_true",
                   help="the matrix with each strategy's best sweep parameters (see `sweep`)")


def _load(args, console: Console):
    """The experiment the command works on: the file with --set/--only, and with --best-params
    each strategy's best sweep parameters (so run, status and report see the same runs)."""
    from bench.config import load_experiment

    exp = load_experiment(args.experiment, args.set, args.only)
    if getattr(args, "best_params", False):
        from bench.sweep import apply_best_params

        # an export printed to stdout stays parseable: the "best ..." lines go to stderr
        exporting = getattr(args, "format", None) and not getattr(args, "output", None)
        exp = apply_best_params(exp, args.results, Console(stderr=True) if exporting else console)
    return exp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesa-bench", description="Benchmark LESA fusion strategies: train an experiment "
        "matrix, resume it, report ablation tables, tune with Optuna.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train every run of an experiment that is not done yet")
    _add_selection(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state only")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based), e.g. 0/4")
    p.add_argument("--retry-failed", action="store_true", help="re-run only the failed runs")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="train this many runs at once in worker processes (default 1; on a "
                   "CPU, N single-threaded workers beat one N-threaded process on small models)")
    p.add_argument("--until-resolved", action="store_true",
                   help="carry out the planned sequential design (analysis.looks): train a "
                   "look's seeds, read the decisions, add seeds only where a comparison is open "
                   "(docs/statistics.md)")
    p.add_argument("--baseline", metavar="NAME",
                   help="with --until-resolved: the row every comparison is with (default: conv)")
    p.add_argument("--run-ids", help=argparse.SUPPRESS)  # a look's runs, for --jobs workers
    _add_best_params(p)

    p = sub.add_parser("status", help="each run's state and progress")
    _add_selection(p)
    _add_best_params(p)

    p = sub.add_parser("report", help="ablation, shares and cost tables")
    _add_selection(p)
    _add_best_params(p)
    p.add_argument("--format", choices=["md", "csv", "latex", "json"],
                   help="print the tables in this format instead of rich tables")
    p.add_argument("--output", "-o", type=Path, help="write the export to this file")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="chart of the ablation: each strategy's mean with its 95%% CI")
    p.add_argument("--html", type=Path, metavar="FILE.html",
                   help="the whole report (tables, charts, runs, environment) as one "
                   "self-contained HTML page (docs/views.md)")
    p.add_argument("--baseline", metavar="NAME",
                   help="the strategy every row is compared with (default: conv); with "
                   "--compare, the value of that axis (default: its first)")
    p.add_argument("--compare", metavar="AXIS",
                   help="compare the values of this matrix axis (e.g. model.release) instead "
                   "of the strategies, paired by seed within equal values of the other axes")
    p.add_argument("--min-effect", type=float, metavar="X",
                   help="the difference (in the table's units, e.g. 1.0 = 1 point of "
                   "accuracy) the 'seeds needed' column is computed for (default: the observed "
                   "difference)")
    p.add_argument("--sweep", action="store_true", help="show the sweep studies instead")

    p = sub.add_parser("sweep", help="tune each strategy with an Optuna study")
    _add_selection(p)
    p.add_argument("--trials", type=int, help="total trials per study (default: sweep.trials "
                   "or sweep.budget; with --hours, whichever comes first)")
    p.add_argument("--hours", type=float, metavar="H",
                   help="training hours per study (summed over its trials), instead of the "
                   "file's budget")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="K independent studies per strategy (sampler seeds seed..seed+K-1): "
                   "the spread of the best value; re-run continues the same K (default 1)")
    p.add_argument("--storage", help="Optuna storage URL (default: a journal file under "
                   "results/<experiment>/)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="RDB storage: workers beat every S seconds; a trial silent for 5 beats "
                   "is failed and run again (default 60)")

    p = sub.add_parser("slurm", help="submit the pending runs as one SLURM job array")
    _add_selection(p)
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    p.add_argument("--time", help="wall time per run, e.g. 4:00:00 (default: the partition's)")
    p.add_argument("--gpus", type=int, help="GPUs per run (default: trainer.devices with "
                   "trainer.accelerator gpu/cuda, else 0)")
    p.add_argument("--cpus", type=int,
                   help="CPUs per run (default: data.num_workers + 1 per process)")
    p.add_argument("--mem", help="memory per run, e.g. 16G (default: the partition's)")
    p.add_argument("--signal-seconds", type=int, default=300, metavar="S",
                   help="USR1 this long before the wall time: save and requeue (default 300)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="at most N tasks at once")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="an extra sbatch option (repeatable), e.g. --sbatch=--account=abc")
    p.add_argument("--retry-failed", action="store_true", help="submit failed runs again too")
    p.add_argument("--until-resolved", action="store_true",
                   help="submit the next look of the planned sequential design (analysis.looks) "
                   "only; run it again once the array has finished to move to the next look")
    p.add_argument("--run", metavar="RUN_ID", help=argparse.SUPPRESS)  # inside an array task

    p = sub.add_parser("design", help="the planned analysis: bounds per look and, by "
                       "simulation, its error rates, power and expected seeds")
    _add_selection(p)
    p.add_argument("--sd", type=float, metavar="S",
                   help="the std of the paired differences to plan with, in the table's units "
                   "(default: pooled from the runs already stored)")
    p.add_argument("--effect", type=float, metavar="X",
                   help="the true difference to compute the power at (default: the margin)")
    p.add_argument("--baseline", metavar="NAME", help="the row compared with (default: conv)")
    p.add_argument("--format", choices=["json"], help="print the designs as JSON")

    import bench.conformance
    import bench.convert
    import bench.costs.models
    import bench.profile

    for name, module, text in (
            ("models", bench.costs.models, "parameters, FLOPs and output shape of every strategy"),
            ("profile", bench.profile, "speed and memory of attention strategies"),
            ("convert", bench.convert, "convert a dataset to COCO format"),
            ("check-plugin", bench.conformance, "test a plugin against the built-ins' contract")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(module=module)
        module.add_arguments(p)  # these modules import torch only when they run
        if name in ("models", "profile"):
            p.add_argument("--fusion", action="append", default=[], metavar="NAME",
                           help="only this strategy (repeatable; a plugin's too)")
            p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                           help="load this plugin first (repeatable): its strategies join")
    return parser


def cmd_run(args, console: Console) -> int:
    from bench.config import shard

    _check_numbers(args, jobs="a positive integer (worker processes)")
    exp = _load(args, console)
    runs = shard(exp.runs, args.shard)
    if args.run_ids:  # a worker of an --until-resolved look: the runs its parent chose
        wanted = set(args.run_ids.split(","))
        runs = [r for r in runs if r.id in wanted]
    _check_models(exp, runs, args)
    if args.until_resolved and not args.dry_run:
        from bench.looks import run_until_resolved
        from bench.resume.stops import install_stop_signals

        install_stop_signals()
        return run_until_resolved(exp, args.results, console, args.jobs, args.argv,
                                  args.baseline, args.retry_failed)
    if args.dry_run:
        from bench.report import print_status

        print_status(exp, runs, args.results, console, title="dry run")
        return 0
    from bench.resume.stops import install_stop_signals
    from bench.run.runner import run_experiment, run_workers

    install_stop_signals()
    if args.jobs > 1:
        return run_workers(args.argv, args.jobs, exp, runs, args.results, console)
    return run_experiment(exp, runs, args.results, console, retry_failed=args.retry_failed)


def _check_models(exp, runs, args) -> None:
    """What lesa would refuse once a run starts, refused now (bench/train/preflight.py); not in
    a --jobs/--workers worker: its parent checked."""
    from bench.run.workers import worker_slot
    from bench.train.preflight import check_models

    if not worker_slot():
        check_models(runs, exp, args.set)


def cmd_status(args, console: Console) -> int:
    from bench.report import print_status

    exp = _load(args, console)
    print_status(exp, exp.runs, args.results, console)
    if exp.sweep:
        from bench.sweep import trial_runs

        print_status(exp, trial_runs(exp, args.results), args.results, console,
                     title="sweep trials")
    return 0


def cmd_report(args, console: Console) -> int:
    from bench import report
    from bench.config import ConfigError
    from bench.report.exports import check_output, plot_formats

    _check_numbers(args, min_effect="a positive number (the difference to power for)")
    # before the report is computed: an output that cannot be written fails now, whole
    if args.output and not args.format:  # -o alone: the format from the name, else say so
        args.format = {".json": "json", ".csv": "csv", ".md": "md", ".tex": "latex"}.get(
            args.output.suffix.lower())
        if args.format is None:
            raise ConfigError(f"--output {args.output}: give --format (md, csv, latex, json) "
                              f"or end the name in .md, .csv, .tex or .json")
    if args.output:
        suffix = {"latex": "tex"}.get(args.format, args.format)
        check_output(args.output, "--output", example=f"report.{suffix}")
    if args.plot:
        check_output(args.plot, "--plot", plot_formats(), example="ablation.png")
    if args.html:
        check_output(args.html, "--html", ["html", "htm"])
    if args.sweep and args.best_params:
        raise ConfigError("--sweep and --best-params: give one; the sweep report already "
                          "compares the tuned runs with the default settings")
    exp = _load(args, console)
    if args.sweep:  # bench/sweep/summary.py: studies, budget curves, tuned vs default
        from bench.sweep import print_sweep_report

        return print_sweep_report(exp, args.results, console, args.format, args.output,
                                  args.plot, args.html, args.baseline)
    code = report.main(exp, args.results, console, args.format, args.output, args.plot,
                       args.baseline, args.min_effect, rerun=_rerun_command(args),
                       html_path=args.html, compare=args.compare)
    if args.best_params:  # after the tuned matrix's tables: tuned vs default settings
        from bench.config import load_experiment
        from bench.sweep import print_tuned

        print_tuned(load_experiment(args.experiment, args.set, args.only), args.results,
                    Console(stderr=True) if args.format and not args.output else console,
                    args.baseline)
    return code


def _rerun_command(args) -> str:
    """`lesa-bench run` with this command's experiment, --results, --set and --only."""
    import shlex

    words = ["lesa-bench", "run", str(args.experiment)]
    if args.results != Path("results"):
        words += ["--results", str(args.results)]
    for flag in ("set", "only"):
        for text in getattr(args, flag):
            words += [f"--{flag}", text]
    if getattr(args, "best_params", False):
        words.append("--best-params")
    return shlex.join(words)


def _check_numbers(args, **wanted: str) -> None:
    from bench.config import check_flags

    check_flags(args, **wanted)


def cmd_sweep(args, console: Console) -> int:
    from bench.config import load_experiment
    from bench.resume.stops import install_stop_signals
    from bench.sweep import run_sweep

    _check_numbers(args, trials="a positive integer (trials per study)",
                   hours="a positive number (training hours per study)",
                   repeat="a positive integer (independent studies per strategy)",
                   workers="a positive integer (worker processes)")
    exp = load_experiment(args.experiment, args.set, args.only)
    _check_models(exp, exp.runs, args)
    install_stop_signals()
    return run_sweep(exp, args.results, console, trials=args.trials, storage=args.storage,
                     workers=args.workers, argv=args.argv, heartbeat=args.heartbeat,
                     hours=args.hours, repeat=args.repeat)


def cmd_slurm(args, console: Console) -> int:
    from bench.cluster import slurm

    if args.run:  # inside an array task: the warning signal must not kill it while it loads
        slurm.catch_warning_signal()
    from bench.config import load_experiment

    exp = load_experiment(args.experiment, args.set, args.only)
    if args.run:  # inside an array task: train that run
        from bench.cluster.requeue import run_task
        from bench.resume.stops import install_stop_signals

        install_stop_signals()
        return run_task(exp, args.run, args.results, console)
    notes = Console(stderr=True) if args.dry_run else console  # a dry run's stdout: the script

    def warn(text: str) -> None:
        notes.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    res = slurm.resources_for(exp.runs, args.partition, args.time, args.gpus, args.cpus,
                              args.mem, args.signal_seconds, args.max_parallel, args.sbatch,
                              warn=warn)
    _check_models(exp, exp.runs, args)
    if args.until_resolved:
        from bench.looks import submit_look

        return submit_look(exp, args.results, console, lambda runs: slurm.submit(
            exp, runs, res, args.results, slurm.selection_args(args), console, args.dry_run,
            args.retry_failed), retry_failed=args.retry_failed)
    return slurm.submit(exp, exp.runs, res, args.results, slurm.selection_args(args), console,
                        args.dry_run, args.retry_failed)


def cmd_design(args, console: Console) -> int:
    from bench.report.design import main as design

    _check_numbers(args, sd="a positive number (the std of the paired differences)")
    if args.effect is not None and not (args.effect != 0 and abs(args.effect) < float("inf")):
        from bench.config import ConfigError

        raise ConfigError(f"--effect {args.effect}: must be a finite non-zero difference")
    exp = _load(args, console)
    return design(exp, args.results, console, args.sd, args.effect, args.format, args.baseline)


def _data_warnings(console: Console, show):
    """A warnings hook: what the suite repaired in the user's data (bench.data.DataWarning) is
    one `warning:` line, not a Python warning with its source line."""
    from bench.data import DataWarning

    shown = set()  # the preflight and the run both read the data: say it once

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            if str(message) not in shown:
                shown.add(str(message))
                console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False,
                              soft_wrap=True)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    from bench.run.pipes import guard_output
    from bench.run.workers import follow_parent

    # a reader of the output that goes away (`| head`) stops a training command as Ctrl-C
    # would, and is no error elsewhere (bench/run/pipes.py); a worker stops with its parent
    restore_output = guard_output(stop=_trains(args))
    follow_parent()
    # the width: COLUMNS where set (rich reads it), else the terminal's; in a log file (no
    # terminal) rich would take 80 columns, and logs can be wide
    columns = os.environ.get("COLUMNS", "").strip()
    console = Console() if sys.stdout.isatty() or columns.isdigit() else Console(width=160)
    from bench.config import ConfigError
    from bench.data import DataError, DataWarning
    from bench.store import StoreWriteError  # a results file that cannot be written (disk full)

    from bench.plugins import PluginError, activate, unload_all

    handlers = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "sweep": cmd_sweep,
                "slurm": cmd_slurm, "design": cmd_design}
    try:
        with warnings.catch_warnings():  # restores the hook when main returns
            warnings.showwarning = _data_warnings(console, warnings.showwarning)
            warnings.filterwarnings("always", category=DataWarning)  # even under -W ignore
            if getattr(args, "plugin", None) is not None:  # models, profile: and installed ones
                activate(args.plugin, Path.cwd(), "--plugin")
            if getattr(args, "fusion", None):  # models, profile: names the registry has
                _check_fusions(args.fusion)
            if args.command in handlers:
                return handlers[args.command](args, console)
            args.console = console
            return args.module.run(args)
    except (ConfigError, DataError, FileNotFoundError, PermissionError, StoreWriteError,
            PluginError) as err:
        if args.debug:
            raise
        # the message quotes user input ([x, y, w, h], --set k=[a, b]): printed as typed
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        restore_output()
        unload_all()  # the registries as they were: a caller in this process sees no plugin


def _check_fusions(names: list[str]) -> None:
    from bench.config import ConfigError, fusion_names
    from lesa.names import unknown

    for name in names:
        if name not in fusion_names():
            raise ConfigError(f"--fusion: {unknown('strategy', name, fusion_names())}")


def _trains(args) -> bool:
    """Whether the command trains (a closed output stops it instead of being ignored)."""
    return (args.command == "run" and not args.dry_run) or args.command == "sweep" or (
        args.command == "slurm" and bool(args.run))


if __name__ == "__main__":
    sys.exit(main())
