"""What the report shows and how (issue 33, items 12-16), through the real command line on
planted stores: no number cut at any width and COLUMNS honoured; which rows each comparison
family holds, against which baseline and with which Holm count, and `--compare AXIS`; every
table and line of the terminal in the md and LaTeX exports; the experiment's description in
every format; a status column per extra matrix axis."""
from __future__ import annotations

import io
import json
import re

import pytest
import yaml
from rich.console import Console

from bench.cli import main
from bench.config import load_experiment
from bench.report import analyse, collect
from bench.report.tables import print_tables
from bench.report.views import Line, TextTable, report_items
from bench.stats.compare import holm
from bench.store import RunDir

ENV = {"torch": "2.14.1", "lightning": "2.6.6", "device": "cpu", "threads": 2}
SEEDS = [0, 1, 2, 3]
STRATEGIES = ["conv", "sa", "dynamic"]
NOISE = [0.004, -0.003, 0.006, -0.002]
DESCRIPTION = "does the release preset help every strategy?"


def _write(path, matrix, description=DESCRIPTION):
    cfg = yaml.safe_load(path.read_text())
    cfg["matrix"] = matrix
    if description:
        cfg["description"] = description
    path.write_text(yaml.safe_dump(cfg))
    return path


def _plant(exp_path, results, acc, skip=()):
    """acc(run) -> the metric (a fraction); every run done but those in skip."""
    exp = load_experiment(exp_path)
    for run in exp.runs:
        if run.id in skip:
            continue
        rd = RunDir(results / exp.name / run.id)
        rd.create(run.config)
        rd.write_metrics({"test": {"test/acc1": acc(run)},
                          "costs": {"params": 12345, "gflops": 0.25,
                                    "train_images_per_s": 321.0},
                          "shares": {"unary": 61.5, "binary": 38.5}, "environment": ENV})
        rd.update_status(state="done", elapsed_s=2.0)
    return exp


def _release_acc(run):
    c = run.config
    return (0.5 + 0.1 * STRATEGIES.index(c["model"]["fusion"])
            + (0.02 + 0.01 * STRATEGIES.index(c["model"]["fusion"])) * c["model"]["release"]
            + NOISE[c["seed"]] * (1 + STRATEGIES.index(c["model"]["fusion"])))


@pytest.fixture
def release_axis(tiny_experiment, tmp_path):
    """3 strategies x model.release [false, true] x 4 seeds, all done."""
    path = _write(tiny_experiment(), {"model.fusion": STRATEGIES,
                                      "model.release": [False, True], "seed": SEEDS})
    results = tmp_path / "results"
    _plant(path, results, _release_acc)
    return path, results


def _json(path, results, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _acc(report) -> dict:
    return {c["strategy"]: c for c in report["cells"] if c["metric"] == "test/acc1"}


def _terminal(path, results, capsys, *extra) -> str:
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), *extra]) == 0
    out = capsys.readouterr()
    return out.out + out.err


# ------------------------------------------------------------------------ item 12: widths

def _table_lines(text: str) -> list[str]:
    """The lines of the tables (the notes are soft-wrapped: one line each, the terminal wraps)."""
    return [line for line in text.splitlines() if set(line) & set("┃│┏┗└┡")]


def _words(table: TextTable) -> set[str]:
    return {w for row in table.rows for cell in row for w in cell.split()}


@pytest.mark.parametrize("width", [100, 72])
def test_no_number_is_cut_at_a_narrow_console(release_axis, width):
    path, results = release_axis
    exp = load_experiment(path)
    records = collect(exp, exp.runs, results)
    a = analyse(exp, records)
    buf = io.StringIO()
    print_tables(exp, records, Console(width=width, file=buf, force_terminal=False), a)
    text = buf.getvalue()
    assert "…" not in text
    assert max(map(len, _table_lines(text))) <= width
    tables = [t for t in report_items(a, records) if isinstance(t, TextTable)]
    ps = [row[i] for t in tables for i, h in enumerate(t.header) if h.startswith("p ")
          for row in t.rows if row[i] != "-"]
    assert len(ps) >= 12 and all(re.search(rf"(?<![\d.]){re.escape(p)}(?![\d])", text)
                                 for p in ps), ps
    for t in tables:  # every word of every cell, whole (row names may wrap at their spaces)
        assert all(w in text for w in _words(t)), t.title


def test_the_command_line_honours_columns(release_axis, capsys, monkeypatch):
    path, results = release_axis
    monkeypatch.setenv("COLUMNS", "90")
    text = _terminal(path, results, capsys)
    assert max(map(len, _table_lines(text))) <= 90 and "…" not in text
    assert "(continued: " in text  # the 11 columns do not fit: split, the row names repeated
    monkeypatch.delenv("COLUMNS")
    wide = _terminal(path, results, capsys)  # not a terminal, no COLUMNS: 160 columns
    assert 90 < max(map(len, _table_lines(wide))) <= 160 and "(continued: " not in wide
    for p in re.findall(r"\b0\.0\d+\b", wide):
        assert p in text


# ------------------------------------------------------------------------ item 13: families

def test_each_release_value_is_its_own_family_and_the_tables_say_so(release_axis, capsys):
    path, results = release_axis
    report = _json(path, results, capsys)
    cells = _acc(report)
    families = report["families"]["digits"]
    assert [f["fixed"] for f in families] == [{"model.release": "False"},
                                              {"model.release": "True"}]
    for family in families:
        release = family["fixed"]["model.release"]
        assert family["baseline"] == f"conv model.release={release}"
        assert family["members"] == [f"sa model.release={release}",
                                     f"dynamic model.release={release}"]
        comparisons = [cells[m]["comparison"] for m in family["members"]]
        assert all(c["baseline"] == family["baseline"] for c in comparisons)
        # Holm over the family's two comparisons, not over the table's four
        assert [c["p_adjusted"] for c in comparisons] == pytest.approx(
            holm([c["p"] for c in comparisons]))
    text = " ".join(_terminal(path, results, capsys).split())
    assert "over seeds; model.release=False" in text and "over seeds; model.release=True" in text
    assert ("p Holm: Holm-adjusted over 2 comparisons: sa model.release=True, dynamic "
            "model.release=True vs conv model.release=True") in text
    assert "over 4 comparisons" not in text


def test_compare_an_axis_pairs_its_values_within_each_strategy(release_axis, capsys):
    path, results = release_axis
    report = _json(path, results, capsys, "--compare", "model.release")
    assert report["varies"] == "model.release" and report["baseline"] == "False"
    cells = _acc(report)
    for i, s in enumerate(STRATEGIES):
        c = cells[f"{s} model.release=True"]["comparison"]
        # planted: release adds 2 + i points on every seed (the noise is shared): paired
        assert c["baseline"] == f"{s} model.release=False" and c["n_pairs"] == len(SEEDS)
        assert c["diff"] == pytest.approx(2.0 + i) and c["ci_low"] == pytest.approx(2.0 + i)
        assert cells[f"{s} model.release=False"]["is_baseline"]
    assert [f["fixed"] for f in report["families"]["digits"]] == [
        {"strategy": s} for s in STRATEGIES]
    text = " ".join(_terminal(path, results, capsys, "--compare", "model.release").split())
    assert "| Δ vs model.release=False [95% CI] |" in _terminal(
        path, results, capsys, "--compare", "model.release", "--format", "md")
    assert ("dynamic: dynamic model.release=True vs dynamic model.release=False; one "
            "comparison (p Holm = p t)") in text
    # the other value as the baseline (YAML spelling accepted), and the strategy axis by name
    flipped = _acc(_json(path, results, capsys, "--compare", "model.release", "--baseline",
                         "true"))
    assert flipped["sa model.release=False"]["comparison"]["diff"] == pytest.approx(-3.0)
    by_sa = _json(path, results, capsys, "--compare", "model.fusion", "--baseline", "sa")
    assert _acc(by_sa)["conv model.release=True"]["comparison"]["baseline"] \
        == "sa model.release=True"


def test_compare_a_bundle_axis(tiny_experiment, tmp_path, capsys):
    path = _write(tiny_experiment(), {"model.fusion": ["static"], "seed": SEEDS, "mix": [
        {"model.static_weight": 0.5}, {"model.static_weight": 0.25, "optim.lr": 0.05}]})
    results = tmp_path / "results"
    _plant(path, results, lambda run: 0.6 + 0.04 * (run.config["optim"]["lr"] == 0.05)
           + NOISE[run.config["seed"]])
    report = _json(path, results, capsys, "--compare", "mix")
    row = "static mix=model.static_weight=0.25,optim.lr=0.05"
    c = _acc(report)[row]["comparison"]
    assert c["baseline"] == "static mix=model.static_weight=0.5" and c["diff"] == pytest.approx(4)
    # without --compare there is no conv row: said once, before the tables
    text = _terminal(path, results, capsys)
    assert text.count("no conv row in this experiment") == 1


def test_a_selection_that_leaves_no_comparison_says_so(release_axis, capsys):
    path, results = release_axis
    report = _json(path, results, capsys, "--baseline", "dynamic", "--only",
                   "model.fusion=dynamic")
    assert not any(c["comparison"] for c in report["cells"])
    assert report["baseline_note"].startswith("nothing to compare with dynamic")
    text = " ".join(_terminal(path, results, capsys, "--compare", "model.release", "--only",
                              "model.release=true").split())
    assert "warning: nothing to compare with model.release=True" in text


# ------------------------------------------------------------------------ items 14, 15: exports

@pytest.fixture
def with_failures(tiny_experiment, tmp_path):
    """conv and dynamic x 4 seeds: one run failed, one flagged (its config edited)."""
    path = _write(tiny_experiment(), {"model.fusion": ["conv", "dynamic"], "seed": SEEDS})
    results = tmp_path / "results"
    exp = load_experiment(path)
    failed, edited = exp.runs[3], exp.runs[5]
    _plant(path, results, lambda run: 0.6 + NOISE[run.config["seed"]], skip={failed.id})
    rd = RunDir(results / exp.name / failed.id)
    rd.create(failed.config)
    rd.update_status(state="failed", error="RuntimeError: planted")
    cfg = results / exp.name / edited.id / "config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.1", "lr: 0.2"))
    return path, results, failed.id, edited.id


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def test_md_and_latex_show_everything_the_terminal_shows(with_failures, capsys):
    path, results, failed, edited = with_failures
    exp = load_experiment(path)
    records = collect(exp, exp.runs, results)
    items = report_items(analyse(exp, records), records)
    titles = [t.title for t in items if isinstance(t, TextTable)]
    assert any("costs" in t for t in titles) and any("shares on test" in t for t in titles)
    assert any("against their nulls" in t for t in titles)
    terminal = " ".join(_terminal(path, results, capsys).split())
    md = _terminal(path, results, capsys, "--format", "md")
    latex = _terminal(path, results, capsys, "--format", "latex")
    from bench.report.exports import LATEX

    def tex(s):
        return "".join(LATEX.get(ch, ch) for ch in s)

    for item in items:
        if isinstance(item, Line):
            assert item.text in " ".join(terminal.split()) or item.kind == "legend"
            assert item.text in md and tex(item.plain()) in latex, item.plain()
            continue
        assert item.title in terminal and f"**{item.title}**" in md
        assert f"% {tex(item.title)}" in latex
        for row in item.rows:
            assert " | ".join(map(_md_cell, row)) in md or f"**{_md_cell(row[0])}**" in md
            assert " & ".join(map(tex, row)) in latex or tex(row[0]) in latex
        for note in item.notes:
            assert note.strip() in md and tex(note.strip()) in latex
    for text in (f"failed: {failed}: RuntimeError: planted", f"flagged: {edited}",
                 "environment: torch 2.14.1, lightning 2.6.6, cpu, 2 threads"):
        assert text in md and tex(text) in latex, text
    assert f"failed {failed}: RuntimeError: planted" in terminal


def test_the_description_is_in_every_format(with_failures, capsys, tmp_path):
    path, results, *_ = with_failures
    terminal = _terminal(path, results, capsys)
    assert terminal.splitlines()[0] == f"tiny: {DESCRIPTION}"
    md = _terminal(path, results, capsys, "--format", "md")
    assert md.splitlines()[0] == f"**tiny:** {DESCRIPTION}"
    latex = _terminal(path, results, capsys, "--format", "latex")
    assert latex.splitlines()[0] == f"% tiny: {DESCRIPTION}"
    assert _json(path, results, capsys)["description"] == DESCRIPTION
    page = tmp_path / "report.html"
    assert main(["report", str(path), "--results", str(results), "--html", str(page)]) == 0
    header = page.read_text().split("</header>")[0]
    assert DESCRIPTION.replace("?", "") in header


# ------------------------------------------------------------------------ item 16: status

def test_dry_run_and_status_have_a_column_per_extra_axis(tiny_experiment, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path = _write(tiny_experiment(), {"model.fusion": ["conv"], "model.release": [False, True],
                                      "seed": [0], "arm": [{"model.width": 1.0},
                                                           {"model.width": 1.5}]})
    for command in (["run", "--dry-run"], ["status"]):
        capsys.readouterr()
        assert main([command[0], str(path), "--results", str(tmp_path), *command[1:]]) == 0
        text = capsys.readouterr().out
        header = next(line for line in text.splitlines() if "fusion" in line)
        assert "model.release" in header and "arm" in header
        rows = [" ".join(line.split()[2:]) for line in text.splitlines() if "conv-digits" in line]
        assert len(rows) == 4 and len(set(rows)) == 4  # told apart without the run id
        assert any("False" in r and "model.width=1.5" in r for r in rows)
