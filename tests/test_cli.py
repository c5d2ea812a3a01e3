"""The command line: light commands stay light, help works, lesa-bench models prints its table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]

LIGHT = """
import sys
from bench.cli import main
argv = [sys.argv[2], "experiments/quick.yaml", *sys.argv[3:], "--results", sys.argv[1]]
assert main(argv) == 0, argv
heavy = [m for m in ("torch", "lightning", "torchvision", "optuna") if m in sys.modules]
print("HEAVY", heavy)
"""


def _imports(tmp_path, *command) -> str:
    return subprocess.run([sys.executable, "-c", LIGHT, str(tmp_path), *command], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_status_and_report_do_not_import_torch(tmp_path):
    assert "HEAVY []" in _imports(tmp_path, "status")
    assert "HEAVY []" in _imports(tmp_path, "report")


def test_dry_run_imports_torch_for_the_model_check_only(tmp_path):
    # each model is built on the meta device (bench/train/preflight.py): torch, not Lightning
    assert "HEAVY ['torch']" in _imports(tmp_path, "run", "--dry-run")


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    text = capsys.readouterr().out
    for command in ("run", "status", "report", "sweep", "models", "profile", "convert"):
        assert command in text


def test_models_table_counts_parameters(capsys):
    assert main(["models", "--backbone", "resnet_tiny", "--size", "32", "--classes", "10",
                 "--format", "md"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "fusion" not in line}
    assert set(rows) == {"conv", "sa", "binary", "unary", "softmax", "sum", "dynamic", "static",
                         "dynamic_frozen"}
    params = {k: int(v.split("|")[2].strip().replace(",", "")) for k, v in rows.items()}
    assert params["sa"] == params["binary"]  # the same weights, a different mask
    assert params["softmax"] == params["sum"] < params["dynamic"]  # the gate costs parameters


def test_report_without_results_keeps_stdout_parseable_and_gives_the_full_command(tmp_path,
                                                                                capsys):
    import json

    exp = ROOT / "experiments" / "digits.yaml"
    argv = ["report", str(exp), "--results", str(tmp_path), "--set", "trainer.max_epochs=3",
            "--only", "seed=0", "--format", "json"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["runs"] > 0  # nothing but the JSON on stdout
    advice = " ".join(out.err.split())
    assert "no results yet" in advice
    assert (f"lesa-bench run {exp} --results {tmp_path} --set trainer.max_epochs=3 --only "
            f"seed=0` first") in advice


def test_report_output_is_written_whole_and_its_format_follows_its_name(tmp_path, capsys):
    import json

    exp = ROOT / "experiments" / "digits.yaml"
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()  # a missing folder is refused, not created (tests/test_outputs.py)
    assert main(["report", str(exp), "--results", str(tmp_path), "-o", str(target)]) == 0
    assert json.loads(target.read_text())["experiment"] == "digits"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left
    assert target.stat().st_mode & 0o044  # the usual mode, not mkstemp's 0600
    assert main(["report", str(exp), "--results", str(tmp_path), "-o",
                 str(tmp_path / "report.txt")]) == 2
    assert "give --format" in capsys.readouterr().out
    assert not (tmp_path / "report.txt").exists()
