"""The `lesa-bench` command line. Thin: it parses arguments and calls the modules that do the
work (each subcommand names its module below). Heavy imports (torch, lightning) happen inside
the subcommands that need them, so --help, `run --dry-run`, `status` and `report` stay fast.

    run      bench/run/runner.py    train the matrix (skip done, resume unfinished); one run's
                                    fit and test in bench/train/trainer.py; stopping and
                                    resuming in bench/resume/; --jobs: bench/run/workers.py
    status   bench/report/          each run's state and progress
    report   bench/report/          ablation, shares and cost tables; exports and plots
    sweep    bench/sweep/study.py   Optuna studies, one per strategy; --workers: run/workers.py
    slurm    bench/cluster/slurm.py the pending runs as one SLURM job array; in a task:
                                    bench/cluster/requeue.py (save and requeue on the signal)
    models   bench/costs/models.py  parameters, FLOPs and output shape of every strategy
    profile  bench/profile/         speed and memory of the attention strategies and peers
    convert  bench/convert.py  dataset converters (VisDrone -> COCO)
"""
from __future__ import annotations

import argparse
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
                   help="the strategy every row is compared with (default: conv)")
    p.add_argument("--min-effect", type=float, metavar="X",
                   help="the difference (in the table's units, e.g. 1.0 = 1 point of "
                   "accuracy) the 'seeds needed' column is computed for (default: the observed "
                   "difference)")
    p.add_argument("--sweep", action="store_true", help="show the sweep studies instead")

    p = sub.add_parser("sweep", help="tune each strategy with an Optuna study")
    _add_selection(p)
    p.add_argument("--trials", type=int, help="total trials per study (default: sweep.trials)")
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
    p.add_argument("--run", metavar="RUN_ID", help=argparse.SUPPRESS)  # inside an array task

    p = sub.add_parser("models", help="parameters, FLOPs and output shape of every strategy")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--output-stride", type=int, default=32, choices=[16, 32])
    p.add_argument("--format", choices=["md"], help="print a Markdown table")
    p.add_argument("--width", type=float, default=1.0,
                   help="width multiplier of the bottlenecks (model.width), default 1.0")
    p.add_argument("--release", choices=["classification", "detection"],
                   help="the released LESA's choices (model.release; docs/library.md)")
    p.add_argument("--max-size", type=int, metavar="N",
                   help="positional tables' reach, as model.max_size (14: the ImageNet release)")

    import bench.convert
    import bench.profile

    for name, module, text in (
            ("profile", bench.profile, "speed and memory of attention strategies"),
            ("convert", bench.convert, "convert a dataset to COCO format")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(module=module)
        module.add_arguments(p)  # both modules import torch only when they run
    return parser


def cmd_run(args, console: Console) -> int:
    from bench.config import shard

    _check_numbers(args, jobs="a positive integer (worker processes)")
    exp = _load(args, console)
    runs = shard(exp.runs, args.shard)
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
    exp = _load(args, console)
    if args.sweep:
        from bench.sweep import print_sweep_report

        return print_sweep_report(exp, args.results, console)
    return report.main(exp, args.results, console, args.format, args.output, args.plot,
                       args.baseline, args.min_effect, rerun=_rerun_command(args),
                       html_path=args.html)


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
    """ConfigError naming the flag when a numeric option is out of range (argparse checks the
    type only); wanted: option name -> what it must be ("a positive integer"/"number ...")."""
    import math

    from bench.config import ConfigError

    for name, allowed in wanted.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        bad = value <= 0 or (isinstance(value, float) and not math.isfinite(value))
        if bad:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value}: must be {allowed}")


def cmd_sweep(args, console: Console) -> int:
    from bench.config import load_experiment
    from bench.resume.stops import install_stop_signals
    from bench.sweep import run_sweep

    _check_numbers(args, trials="a positive integer (trials per study)",
                   workers="a positive integer (worker processes)")
    exp = load_experiment(args.experiment, args.set, args.only)
    install_stop_signals()
    return run_sweep(exp, args.results, console, trials=args.trials, storage=args.storage,
                     workers=args.workers, argv=args.argv, heartbeat=args.heartbeat)


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
    res = slurm.resources_for(exp.runs, args.partition, args.time, args.gpus, args.cpus,
                              args.mem, args.signal_seconds, args.max_parallel, args.sbatch)
    return slurm.submit(exp, exp.runs, res, args.results, slurm.selection_args(args), console,
                        args.dry_run, args.retry_failed)


def cmd_models(args, console: Console) -> int:
    from bench.costs.models import print_models

    from bench.config import ConfigError, backbone_names
    from lesa.names import did_you_mean

    _check_numbers(args, size="a positive integer (the input's height and width in pixels)",
                   classes="a positive integer (the classifier's outputs)",
                   width="a positive number (the width multiplier)",
                   max_size="a positive integer (the tables' reach in positions per side)")
    if args.backbone not in backbone_names():
        raise ConfigError(f"--backbone {args.backbone}: not a backbone"
                          f"{did_you_mean(args.backbone, backbone_names())}; choose from "
                          f"{', '.join(backbone_names())}")
    options = {"width": args.width} if args.width != 1.0 else {}
    if args.release:
        options["release"] = args.release
    if args.max_size:
        options["max_map_size"] = args.max_size
    try:
        return print_models(args.backbone, args.size, args.classes, args.output_stride,
                            console, args.format, **options)
    except ValueError as error:  # lesa's refusal of a size/option combination, as typed
        raise ConfigError(f"models: {error}") from None


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
    # in a log file (no terminal) rich would wrap tables at 80 columns; logs can be wide
    console = Console() if sys.stdout.isatty() else Console(width=160)
    from bench.config import ConfigError
    from bench.data import DataError, DataWarning
    from bench.store import StoreWriteError  # a results file that cannot be written (disk full)

    handlers = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "sweep": cmd_sweep,
                "slurm": cmd_slurm, "models": cmd_models}
    try:
        with warnings.catch_warnings():  # restores the hook when main returns
            warnings.showwarning = _data_warnings(console, warnings.showwarning)
            warnings.filterwarnings("always", category=DataWarning)  # even under -W ignore
            if args.command in handlers:
                return handlers[args.command](args, console)
            return args.module.run(args)
    except (ConfigError, DataError, FileNotFoundError, PermissionError, StoreWriteError) as err:
        if args.debug:
            raise
        # the message quotes user input ([x, y, w, h], --set k=[a, b]): printed as typed
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
