"""One headline across datasets and the training curves in `lesa-bench report` (issue 35, items
3 and 4), through the real command line on planted stores: the headline row is in the terminal
and every export, its bootstrap keeps the seed pairs (a strategy identical to the baseline
differs by exactly 0 in every resample), and its numbers are the stats core's on the cells;
the curves are read from each run's metrics.csv; the HTML page with the curves, the headline
chart and the fixed and broken images loads in headless Chromium with no console message
(slow, .ci/setup/chromium.sh)."""
from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from bench.cli import main
from bench.config import load_experiment
from bench.report import analyse, collect
from bench.report.plots import curves_figure, headline_figure
from bench.stats.aggregate import headline
from bench.store import RunDir

SEEDS = [0, 1, 2, 3]
DATASETS = ["digits", "cifar10"]
ENV = {"torch": "2.x", "lightning": "2.x", "device": "cpu", "threads": 2}
GAIN = {"digits": 0.03, "cifar10": 0.01}


def _acc(dataset, fusion, seed) -> float:
    """conv and static are identical run for run; dynamic gains on both datasets."""
    base = {"digits": 0.80, "cifar10": 0.55}[dataset] + 0.02 * np.sin(3 * seed + len(dataset))
    return base + (GAIN[dataset] + 0.004 * (seed % 2) if fusion == "dynamic" else 0.0)


def _log(rd: RunDir, dataset: str, fusion: str, seed: int, epochs: int = 4) -> None:
    """A metrics.csv as Lightning's CSV logger writes it: a validation row and a training row
    per epoch, then the test row."""
    path = rd.path / "logs" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "test/acc1", "train/loss_epoch", "val/acc1"])
        for e in range(epochs):
            val = _acc(dataset, fusion, seed) * (e + 1) / epochs
            w.writerow([e, 10 * e + 9, "", "", val])
            w.writerow([e, 10 * e + 9, "", 2.0 / (e + 1) + 0.01 * seed, ""])
        w.writerow([epochs, 10 * epochs, _acc(dataset, fusion, seed), "", ""])


@pytest.fixture
def two_tasks(tiny_experiment, tmp_path):
    path = tiny_experiment(matrix={"data.name": DATASETS,
                                   "model.fusion": ["conv", "static", "dynamic"],
                                   "seed": SEEDS})
    results = tmp_path / "results"
    exp = load_experiment(path)
    for run in exp.runs:
        c = run.config
        d, f, s = c["data"]["name"], c["model"]["fusion"], c["seed"]
        rd = RunDir(results / exp.name / run.id)
        rd.create(c)
        rd.write_metrics({"test": {"test/acc1": _acc(d, f, s)}, "costs": {"params": 1000},
                          "environment": ENV})
        _log(rd, d, f, s)
        rd.update_status(state="done", elapsed_s=1.0)
    return path, results


def _json(path, results, capsys) -> dict:
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_identical_strategies_give_exactly_zero_in_every_resample(two_tasks):
    path, results = two_tasks
    exp = load_experiment(path)
    a = analyse(exp, collect(exp, exp.runs, results))
    (h,) = a.headlines
    assert h.baseline == "conv" and h.datasets == DATASETS
    static = h.result.rows["static"]
    for e in (static.mean_gain, static.iqm_gain):
        assert e.estimate == 0 and np.all(e.seed_samples == 0) and np.all(e.task_samples == 0)
    assert np.all(static.p_improvement_paired.seed_samples == 0.5)
    # a paired gain on every seed: every resample sees it, the interval excludes 0
    dyn = h.result.rows["dynamic"]
    assert dyn.mean_gain.seeds.ci_low > 0 and dyn.p_improvement_paired.estimate == 1.0
    # the numbers are the stats core's on the cells, in points
    scores = {d: {f: {s: 100 * _acc(d, f, s) for s in SEEDS} for f in ("conv", "static",
                                                                         "dynamic")}
              for d in DATASETS}
    ref = headline(scores, "conv", confidence=0.95)
    assert dyn.mean_gain.estimate == pytest.approx(ref.rows["dynamic"].mean_gain.estimate)
    assert dyn.mean_gain.seeds.ci_low == pytest.approx(ref.rows["dynamic"].mean_gain.seeds.ci_low)
    assert dyn.per_task_gain == pytest.approx(
        {d: 100 * np.mean([_acc(d, "dynamic", s) - _acc(d, "conv", s) for s in SEEDS])
         for d in DATASETS})


def test_the_headline_row_is_in_the_terminal_and_every_export(two_tasks, capsys, monkeypatch):
    path, results = two_tasks
    monkeypatch.setenv("COLUMNS", "300")
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny: headline across 2 datasets (digits acc1, cifar10 acc1) vs conv" in out
    assert "P(improvement) [95% CI]" in out and "digits +3.20; cifar10 +1.20" in out
    report = _json(path, results, capsys)
    (h,) = report["headline"]
    assert set(h["strategies"]) == {"static", "dynamic"}
    assert h["strategies"]["static"]["mean_gain"]["seeds"] == {"estimate": 0.0, "ci_low": 0.0,
                                                               "ci_high": 0.0}
    for fmt, needle in (("csv", "headline/p_improvement"), ("md", "headline across 2 datasets"),
                        ("latex", "headline across 2 datasets")):
        capsys.readouterr()
        assert main(["report", str(path), "--results", str(results), "--format", fmt]) == 0
        assert needle in capsys.readouterr().out, fmt


def test_curves_are_read_from_each_runs_metrics_csv(two_tasks):
    path, results = two_tasks
    exp = load_experiment(path)
    a = analyse(exp, collect(exp, exp.runs, results))
    digits = next(d for d in a.curves if d.dataset == "digits")
    assert digits.metric == "val/acc1" and set(digits.val) == {"conv", "static", "dynamic"}
    c = digits.val["dynamic"]
    assert list(c.epochs) == [0, 1, 2, 3] and list(c.n) == [4] * 4
    last = [100 * _acc("digits", "dynamic", s) for s in SEEDS]
    assert c.mean[-1] == pytest.approx(np.mean(last))
    half = 3.182446305284263 * np.std(last, ddof=1) / 2  # t(0.975, 3)
    assert c.ci_high[-1] == pytest.approx(np.mean(last) + half)
    assert digits.loss["conv"].mean[0] == pytest.approx(2.0 + 0.015)
    for fig in (curves_figure(a, "tiny"), headline_figure(a, "tiny")):
        assert fig is not None and fig.axes


def test_plot_draws_the_ablation_and_the_curves(two_tasks, tmp_path):
    from PIL import Image

    path, results = two_tasks
    png = tmp_path / "p.png"
    assert main(["report", str(path), "--results", str(results), "--plot", str(png)]) == 0
    assert Image.open(png).size[1] > 900  # two rows: the ablation, then the curves


@pytest.mark.slow
def test_the_page_with_curves_headline_and_images_loads_without_console_messages(
        two_tasks, tmp_path, capsys):
    """The digits runs get per-image records, so the page also draws fixed and broken images;
    cifar10's test set is not on this machine, which the page says (no thumbnails there)."""
    from test_html_report import Page, chromium
    from test_report_images import digits_test_labels

    path, results = two_tasks
    exp = load_experiment(path)
    y = digits_test_labels()
    rng = np.random.default_rng(0)
    for run in exp.runs:
        c = run.config
        ok = rng.random(len(y)) < (0.9 if c["model"]["fusion"] == "dynamic" else 0.8)
        RunDir(results / exp.name / run.id).write_predictions(
            {"index": np.arange(len(y)), "labels": y, "pred": np.where(ok, y, (y + 1) % 10),
             "correct": ok})
    out = tmp_path / "page.html"
    assert main(["report", str(path), "--results", str(results), "--html", str(out)]) == 0
    page = Page(out.read_text())
    alts = [img["alt"] for img in page.all("img")]
    assert any(a.startswith("training curves") for a in alts)
    assert any(a.startswith("headline across datasets") for a in alts)
    assert sum(a.startswith("test image") for a in alts) >= 8
    browser = chromium()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    rendered = Page(dom.stdout)
    assert "Test images fixed and broken" in rendered.plain
    assert "cifar10" in rendered.plain and "cannot be rebuilt here" in rendered.plain
    assert "headline across 2 datasets" in rendered.plain
    assert len(rendered.all("img")) == len(page.all("img"))
