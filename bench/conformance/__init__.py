"""`lesa-bench check-plugin FILE_OR_MODULE`: every item a plugin registers, through the contract
the built-ins are tested against (tests/test_conformance.py runs the same checks on them).

    strategies.py  a fusion strategy: shapes and dtype at several map sizes and strides,
                   gradients to every parameter, determinism, seeded init, float64 vs float32,
                   state_dict round trip, its share a fraction or None, the meta-device model
                   check, a few training steps in resnet_tiny, pickling
    datasets.py    a dataset: its spec, bad options refused at load, build and setup, labels
                   in range, the split fixed by split_seed, determinism, pickling

A backbone (lesa.backbone.register_backbone) is built with conv and dynamic on the meta device;
a task (bench.tasks.register_task) has its spec and class checked. The result is a table of
the checks passed and failed; the exit code is 1 when any failed. Importing this package does
not import torch (the CLI builds its parser from it); running the checks does.
"""
from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FILE_OR_MODULE",
                   help="a plugin: a Python file or an importable module name")


def run(args: argparse.Namespace) -> int:
    """`lesa-bench check-plugin`: 0 when every check passed, 1 when one failed."""
    import os

    columns = os.environ.get("COLUMNS", "")
    console = Console() if Console().is_terminal or columns.isdigit() else Console(width=140)
    return check_plugin(args.source, console)


@dataclass
class Result:
    item: str  # "strategy scalar_gate"
    check: str
    ok: bool
    detail: str
    seconds: float


def _backbone_builds(name: str) -> str:
    """The Arch builds with conv and dynamic on the meta device, and gives four feature maps."""
    import torch

    import lesa

    shapes = []
    for fusion in ("conv", "dynamic"):
        with torch.device("meta"):
            net = lesa.build_backbone(name, fusion=fusion, num_classes=4, max_map_size=64)
            lesa.record_shares(net, False)
            with torch.no_grad():
                features = net.forward_features(torch.empty(2, 3, 64, 64))
        assert list(features) == [f"layer{i}" for i in range(1, 5)], list(features)
        shapes.append("x".join(map(str, features["layer4"].shape[1:])))
    return f"layer4 {shapes[0]} (conv), {shapes[1]} (dynamic) on 64x64"


def _task_declared(name: str) -> str:
    """A TaskSpec whose target has from_config; its monitor a val/ metric."""
    from bench.data import target_class
    from bench.tasks import TASKS

    spec = TASKS[name]
    cls = target_class(spec.target, "bench.tasks")
    assert callable(getattr(cls, "from_config", None)), f"{cls!r} has no from_config"
    assert spec.monitor.startswith("val/"), f"monitor {spec.monitor!r} is not a val/ metric"
    assert all(m.startswith("test/") for m in spec.metrics), "metrics are test/... names"
    return f"monitor {spec.monitor} ({spec.mode}), headline {', '.join(spec.headline)}"


def checks() -> dict[str, dict]:
    """kind -> {check name: function of the item's name}."""
    from bench.conformance import datasets, strategies

    return {"strategy": strategies.CHECKS, "dataset": datasets.CHECKS,
            "backbone": {"builds": _backbone_builds}, "task": {"declared": _task_declared}}


def run_checks(kind: str, name: str, only: tuple[str, ...] = ()) -> list[Result]:
    """Every check of `kind` on the registered item `name` (those named in `only`, if any)."""
    out = []
    for check, fn in checks()[kind].items():
        if only and check not in only:
            continue
        t0 = time.perf_counter()
        try:
            detail, ok = fn(name), True
        except Exception as err:  # noqa: BLE001 - a failed check is a row, not a traceback
            detail, ok = _why(err), False
        out.append(Result(f"{kind} {name}", check, ok, detail, time.perf_counter() - t0))
    return out


def _why(err: Exception) -> str:
    """The failure in a line: the message, and for an error the strategy raised, where."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, AssertionError):
        return text or "failed"
    from bench.plugins import loaded_files

    own = loaded_files()
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() in own]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {text}{where}"


def check_plugin(text: str, console: Console, base: Path | None = None) -> int:
    """Load the plugin and run its items through their contracts; print the table. 0 when
    every check passed, 1 otherwise (a plugin that does not load: PluginError)."""
    import torch

    from bench.plugins import activate

    torch.set_num_threads(min(torch.get_num_threads(), 2))  # small tensors: threads only cost
    plugin = activate([text], base or Path.cwd(), "check-plugin")[-1]  # and entry points
    results = [r for kind, names in plugin.provides.items() for name in names
               for r in run_checks(kind, name)]
    table = Table(title=escape(f"check-plugin {plugin.source} (sha256 {plugin.sha256[:8]}): "
                               f"{plugin.items()}"))
    for column in ("item", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        mark = "[green]passed[/]" if r.ok else "[bold red]FAILED[/]"
        table.add_row(escape(r.item), escape(r.check), mark, escape(r.detail))
    console.print(table)
    failed = [r for r in results if not r.ok]
    summary = f"{len(results) - len(failed)} passed, {len(failed)} failed"
    if failed:
        console.print(f"[bold red]{summary}:[/] " + escape("; ".join(
            f"{r.item}: {r.check}" for r in failed)), soft_wrap=True)
        return 1
    console.print(f"[green]{summary}[/] ({sum(r.seconds for r in results):.1f} s)")
    return 0
