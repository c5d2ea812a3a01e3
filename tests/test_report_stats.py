"""The statistics in `lesa-bench report` (issue 23), through the real report code on planted
stores: verdicts, CIs, seeds needed, the best marker, n = 1, the paired bootstrap over test
images and the bucket box counts, and the same numbers in every export."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml

from bench.cli import main
from bench.config import load_experiment
from bench.stats.ap import pack_detections
from bench.store import RunDir


def save_predictions(path, preds, targets):
    np.savez_compressed(path, **pack_detections(preds, targets))


BASE = [0.710, 0.745, 0.698, 0.731, 0.724]
SEEDS = [0, 1, 2, 3, 4]


def _text(capsys) -> str:
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())


def _plant(exp_path, results, values: dict, metric="test/acc1", extra=None):
    """values: (fusion, seed) -> the metric (a fraction), as the runner stores it."""
    exp = load_experiment(exp_path)
    by_cell = {(r.config["model"]["fusion"], r.config["seed"]): r for r in exp.runs}
    dirs = {}
    for cell, value in values.items():
        rd = RunDir(results / exp.name / by_cell[cell].id)
        rd.create(by_cell[cell].config)
        rd.write_metrics({"test": {metric: value, **(extra or {})}, "costs": {"params": 1000},
                          "shares": {"unary": 60.0, "binary": 40.0}})
        rd.update_status(state="done")
        dirs[cell] = rd
    return dirs


@pytest.fixture
def five_seeds(tiny_experiment):
    return tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], "seed": SEEDS})


def _report(exp, results, *extra) -> dict:
    assert main(["report", str(exp), "--results", str(results), "--format", "json", *extra]) == 0


def _json(exp, results, capsys, *extra) -> dict:
    capsys.readouterr()
    _report(exp, results, *extra)
    return json.loads(capsys.readouterr().out)


def _cells(report, metric="test/acc1") -> dict:
    return {c["strategy"]: c for c in report["cells"] if c["metric"] == metric}


def test_five_points_better_on_every_seed(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    noise = [0.002, -0.001, 0.0015, -0.002, 0.0005]
    _plant(five_seeds, results, {**{("conv", s): BASE[s] for s in SEEDS},
                                 **{("dynamic", s): BASE[s] + 0.05 + noise[s] for s in SEEDS}})
    report = _json(five_seeds, results, capsys)
    cells = _cells(report)
    c = cells["dynamic"]["comparison"]
    assert c["verdict"] == "better" and c["baseline"] == "conv" and c["method"] == "paired t"
    assert c["diff"] == pytest.approx(5.02) and 0 < c["ci_low"] < c["diff"] < c["ci_high"]
    assert c["p_adjusted"] < 0.05 and c["seeds_needed"] is None and c["n_pairs"] == 5
    assert cells["dynamic"]["seeds"] == SEEDS and len(cells["dynamic"]["values"]) == 5
    assert cells["conv"]["is_baseline"] and cells["conv"]["comparison"] is None
    assert cells["dynamic"]["best"] is True and cells["conv"]["best"] is False  # resolved
    assert list(report["states"]) == sorted(report["states"])
    assert main(["report", str(five_seeds), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "better" in text and "Δ vs conv" in text
    assert f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" in text


def test_overlapping_values_are_not_resolved_and_both_best(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    d = [0.005, -0.003, 0.004, -0.002, 0.003]
    _plant(five_seeds, results, {**{("conv", s): BASE[s] for s in SEEDS},
                                 **{("dynamic", s): BASE[s] + d[s] for s in SEEDS}})
    cells = _cells(_json(five_seeds, results, capsys))
    c = cells["dynamic"]["comparison"]
    assert c["verdict"] == "not resolved" and c["ci_low"] < 0 < c["ci_high"]
    assert isinstance(c["seeds_needed"], int) and c["seeds_needed"] > 5
    assert cells["dynamic"]["best"] and cells["conv"]["best"]  # never a lone mean
    # --min-effect (display units: points) sets the power analysis' difference
    big = _cells(_json(five_seeds, results, capsys, "--min-effect", "5"))
    assert big["dynamic"]["comparison"]["seeds_needed"] < c["seeds_needed"]
    assert main(["report", str(five_seeds), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "not resolved" in text and f" {c['seeds_needed']} " in text
    assert text.count(" best ") >= 2


def test_one_seed_has_no_ci_and_says_so(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    _plant(five_seeds, results, {("conv", 0): 0.7, ("dynamic", 0): 0.8})
    cells = _cells(_json(five_seeds, results, capsys))
    assert cells["dynamic"]["n"] == 1 and cells["dynamic"]["ci_low"] is None
    assert "n = 1: no CI" in cells["dynamic"]["note"]
    assert cells["dynamic"]["comparison"]["verdict"] == "not resolved"
    assert cells["dynamic"]["comparison"]["ci_low"] is None
    assert main(["report", str(five_seeds), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "no CI (n = 1)" in text and "dynamic: n = 1, no CI and no test" in text


def test_unpaired_cells_fall_back_to_welch_and_say_so(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    _plant(five_seeds, results, {("conv", 0): 0.70, ("conv", 1): 0.72, ("dynamic", 2): 0.75,
                                 ("dynamic", 3): 0.78})
    c = _cells(_json(five_seeds, results, capsys))["dynamic"]["comparison"]
    assert c["method"] == "Welch t" and c["paired"] is False
    assert main(["report", str(five_seeds), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "†" in text and "unpaired" in text


def test_bad_baseline_names_the_choices(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    _plant(five_seeds, results, {("conv", 0): 0.7, ("dynamic", 0): 0.8})
    assert main(["report", str(five_seeds), "--results", str(results), "--baseline", "dynamc"]) == 2
    text = _text(capsys)
    assert "unknown strategy 'dynamc'" in text and "did you mean 'dynamic'" in text
    assert "conv, dynamic" in text and "Traceback" not in text
    # a good one: rows compared with it
    report = _json(five_seeds, results, capsys, "--baseline", "dynamic")
    assert report["baseline"] == "dynamic"
    assert _cells(report)["conv"]["comparison"]["baseline"] == "dynamic"


def test_every_export_carries_the_same_verdicts_and_cis(five_seeds, tmp_path, capsys):
    results = tmp_path / "results"
    noise = [0.002, -0.001, 0.0015, -0.002, 0.0005]
    _plant(five_seeds, results, {**{("conv", s): BASE[s] for s in SEEDS},
                                 **{("dynamic", s): BASE[s] + 0.05 + noise[s] for s in SEEDS}})
    report = _json(five_seeds, results, capsys)
    cell = _cells(report)["dynamic"]
    c = cell["comparison"]
    ci = f"[{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"
    delta = f"{c['diff']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
    out = {}
    for fmt in ("md", "latex", "csv"):
        assert main(["report", str(five_seeds), "--results", str(results), "--format", fmt]) == 0
        out[fmt] = capsys.readouterr().out
    assert ci in out["md"] and delta in out["md"] and "better" in out["md"]
    assert "**best**" in out["md"]
    assert ci in out["latex"] and delta in out["latex"] and "better" in out["latex"]
    rows = {(r["strategy"], r["metric"]): r for r in csv.DictReader(io.StringIO(out["csv"]))}
    row = rows[("dynamic", "test/acc1")]
    assert row["verdict"] == "better" and float(row["diff"]) == pytest.approx(c["diff"])
    assert float(row["diff_ci_low"]) == pytest.approx(c["ci_low"])
    assert float(row["p_adjusted"]) == pytest.approx(c["p_adjusted"])
    assert float(row["ci_low"]) == pytest.approx(cell["ci_low"]) and row["best"] == "True"
    assert json.loads(row["values"]) == pytest.approx(cell["values"])
    assert rows[("conv", "test/acc1")]["verdict"] == "baseline"
    # deterministic JSON: the same bytes twice
    again = tmp_path / "a.json"
    assert main(["report", str(five_seeds), "--results", str(results), "--format", "json",
                 "-o", str(again)]) == 0
    assert json.loads(again.read_text()) == report


def test_plot_whiskers_inside_the_axis(five_seeds, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    _plant(five_seeds, results, {**{("conv", s): BASE[s] for s in SEEDS},
                                 ("dynamic", 0): 0.2, ("dynamic", 1): 0.95})
    png = tmp_path / "plot.png"
    assert main(["report", str(five_seeds), "--results", str(results), "--plot", str(png)]) == 0
    assert png.stat().st_size > 0


# --- detection: the bootstrap over test images and the bucket box counts ---------------------
def _scene(n_images=20, seed=0, pred_seed=0):
    """Ground truth with 3 boxes per image of ~5 px (AI-TOD 'very tiny': 60 boxes) and one of
    ~12 px ('tiny': 20 boxes, too few); detections near some of them."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        xy = rng.uniform(0, 40, (4, 2))
        wh = np.array([[5, 5], [5, 5], [5, 5], [12, 12]], float)
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, 4)
        noise = np.random.default_rng([pred_seed, len(preds)])
        boxes = gt + noise.normal(0, 1.0, gt.shape)
        preds.append({"boxes": boxes, "scores": noise.random(4), "labels": labels})
        targets.append({"boxes": gt, "labels": labels, "iscrowd": np.zeros(4, bool)})
    return preds, targets


@pytest.fixture
def detection(tiny_experiment, tmp_path):
    exp = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], "seed": [0, 1]})
    cfg = yaml.safe_load(exp.read_text())
    cfg["data"] = {"name": "digit_scenes", "image_size": 64, "batch_size": 4}
    exp.write_text(yaml.safe_dump(cfg))
    results = tmp_path / "results"
    dirs = _plant(exp, results, {(f, s): 0.3 + 0.01 * s for f in ("conv", "dynamic")
                                 for s in (0, 1)}, metric="test/map_50",
                  extra={"test/map": 0.1, "test/ap_vt": 0.2, "test/ap_t": 0.3})
    return exp, results, dirs


def test_identical_predictions_differ_by_exactly_zero(detection, capsys):
    exp, results, dirs = detection
    for (fusion, seed), rd in dirs.items():
        # one test set; each seed's detections differ, conv's and dynamic's are the same
        save_predictions(rd.path / "predictions.npz", *_scene(pred_seed=seed))
    report = _json(exp, results, capsys)
    boot = report["bootstrap"]["digit_scenes"]
    assert boot["note"] == "" and boot["n_images"] == 20 and boot["n_resamples"] == 1000
    diff = boot["strategies"]["dynamic"]["differences"]
    for stat in ("map_50", "map"):
        assert diff[stat]["estimate"] == 0 and diff[stat]["ci_low"] == 0 == diff[stat]["ci_high"]
        iv = boot["strategies"]["conv"]["intervals"][stat]
        assert iv["ci_low"] < iv["ci_high"]  # the test images' spread, not zero
    buckets = report["buckets"]["digit_scenes"]
    assert buckets["ap_vt"]["n_boxes"] == 60 and buckets["ap_vt"]["too_few"] is False
    assert buckets["ap_t"]["n_boxes"] == 20 and buckets["ap_t"]["too_few"] is True
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "test-image uncertainty (bootstrap over 20 images, 1000 resamples)" in text
    assert "+0.00 [+0.00, +0.00]" in text
    assert "ap_t (8-16 px, 20 boxes) too few" in text and "too few to trust" in text
    assert "ap_vt (2-8 px, 60 boxes)" in text


def test_different_test_sets_and_missing_predictions_are_said(detection, capsys):
    exp, results, dirs = detection
    report = _json(exp, results, capsys)  # older runs: no predictions.npz
    assert "no predictions.npz" in report["bootstrap"]["digit_scenes"]["note"]
    assert report["buckets"]["digit_scenes"]["ap_vt"]["n_boxes"] is None
    for (fusion, seed), rd in dirs.items():
        save_predictions(rd.path / "predictions.npz", *_scene(seed=seed if fusion == "conv" else 7))
    report = _json(exp, results, capsys)
    assert report["bootstrap"]["digit_scenes"]["note"] == "test sets differ: no paired bootstrap"
    assert main(["report", str(exp), "--results", str(results)]) == 0
    assert "test sets differ: no paired bootstrap" in _text(capsys)
