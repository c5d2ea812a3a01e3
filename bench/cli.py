"""The `lesa-bench` command line. Thin: it parses arguments and calls the modules that do the
work (each subcommand names its module below). Heavy imports (torch, lightning) happen inside
the subcommands that need them, so --help, `run --dry-run`, `status` and `report` stay fast.

    run      bench/run/runner.py    train the matrix (skip done, resume unfinished); one run's
                                    fit and test in bench/run/train.py; --jobs: run/workers.py
    status   bench/report/          each run's state and progress
    report   bench/report/          ablation, shares and cost tables; exports and plots
    sweep    bench/sweep/study.py   Optuna studies, one per strategy; --workers: run/workers.py
    models   bench/report/costs.py  parameters, FLOPs and output shape of every strategy
    profile  bench/profile/         speed and memory of the attention strategies and peers
    convert  bench/data/convert.py  dataset converters (VisDrone -> COCO)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console


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

    p = sub.add_parser("models", help="parameters, FLOPs and output shape of every strategy")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--output-stride", type=int, default=32, choices=[16, 32])
    p.add_argument("--format", choices=["md"], help="print a Markdown table")

    for name, module, text in (("profile", "profile", "speed and memory of attention strategies"),
                               ("convert", "data.convert", "convert a dataset to COCO format")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(module=f"bench.{module}")
        try:
            __import__(f"bench.{module}", fromlist=["add_arguments"]).add_arguments(p)
        except ImportError:
            pass
    return parser


def cmd_run(args, console: Console) -> int:
    from bench.config import shard

    exp = _load(args, console)
    runs = shard(exp.runs, args.shard)
    if args.dry_run:
        from bench.report import print_status

        print_status(exp, runs, args.results, console, title="dry run")
        return 0
    from bench.run.runner import run_experiment, run_workers
    from bench.run.signals import install_stop_signals

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

    exp = _load(args, console)
    if args.sweep:
        from bench.sweep import print_sweep_report

        return print_sweep_report(exp, args.results, console)
    return report.main(exp, args.results, console, args.format, args.output, args.plot,
                       args.baseline, args.min_effect)


def cmd_sweep(args, console: Console) -> int:
    from bench.config import load_experiment
    from bench.run.signals import install_stop_signals
    from bench.sweep import run_sweep

    exp = load_experiment(args.experiment, args.set, args.only)
    install_stop_signals()
    return run_sweep(exp, args.results, console, trials=args.trials, storage=args.storage,
                     workers=args.workers, argv=args.argv)


def cmd_models(args, console: Console) -> int:
    from bench.report.costs import print_models

    return print_models(args.backbone, args.size, args.classes, args.output_stride, console,
                        args.format)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    # in a log file (no terminal) rich would wrap tables at 80 columns; logs can be wide
    console = Console() if sys.stdout.isatty() else Console(width=160)
    from bench.config import ConfigError
    from bench.data import DataError

    handlers = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "sweep": cmd_sweep,
                "models": cmd_models}
    try:
        if args.command in handlers:
            return handlers[args.command](args, console)
        module = __import__(args.module, fromlist=["run"])
        return module.run(args)
    except (ConfigError, DataError, FileNotFoundError, PermissionError) as err:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
