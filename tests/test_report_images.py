"""Classification over test images in `lesa-bench report` (issue 35, item 2), through the real
command line on stores with planted predictions.npz: the paired bootstrap of acc1 equals the
same resamples drawn here with numpy, McNemar's test equals scipy's binomial test per seed
pair, the images fixed and broken by every seed pair come first, the variance table's test
component is each run's binomial variance, `report` stays torch-free, and `--html` draws the
fixed and broken images from the rebuilt test set (its pixels, by test index)."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench.cli import main
from bench.config import load_experiment
from bench.store import RunDir

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
ENV = {"torch": "2.x", "lightning": "2.x", "device": "cpu", "threads": 2}
FIXED, BROKEN = 5, 7  # planted: every seed pair fixes image 5 and breaks image 7


def digits_test_labels(split_seed: int = 0) -> np.ndarray:
    """The tiny experiment's digits test split, as DigitsData draws it (no torch needed)."""
    from sklearn.datasets import load_digits

    from bench.data.base import stratified_split

    target = load_digits().target
    return target[stratified_split(target, [0.15, 0.2], split_seed)[2]]


def plant(path, results, correct) -> list:
    """correct(fusion, split, seed, labels) -> bool per test image; metrics.json's acc1 is its
    mean, predictions.npz holds it as the classification task writes it."""
    exp = load_experiment(path)
    labels = {}
    for run in exp.runs:
        c = run.config
        split = c["data"]["split_seed"]
        y = labels.setdefault(split, digits_test_labels(split))
        ok = correct(c["model"]["fusion"], split, c["seed"], y)
        pred = np.where(ok, y, (y + 1) % 10)
        rd = RunDir(results / exp.name / run.id)
        rd.create(c)
        rd.write_metrics({"test": {"test/acc1": float(ok.mean())}, "costs": {"params": 1000},
                          "environment": ENV})
        rd.write_predictions({"index": np.arange(len(y)), "labels": y, "pred": pred,
                              "correct": pred == y})
        rd.update_status(state="done", elapsed_s=1.0)
    return exp.runs


def planted_correct(seed_base=0):
    rng = np.random.default_rng(seed_base)
    cache = {}

    def correct(fusion, split, seed, y):
        key = (fusion, split, seed)
        if key not in cache:
            p = {"conv": 0.8, "dynamic": 0.86}[fusion]
            ok = rng.random(len(y)) < p
            ok[FIXED] = fusion == "dynamic"
            ok[BROKEN] = fusion == "conv"
            cache[key] = ok
        return cache[key]
    return correct


@pytest.fixture
def stored(tiny_experiment, tmp_path):
    path = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], "seed": SEEDS})
    results = tmp_path / "results"
    correct = planted_correct()
    plant(path, results, correct)
    return path, results, correct


def _json(path, results, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_bootstrap_and_mcnemar_equal_numpy_and_scipy(stored, capsys):
    path, results, correct = stored
    report = _json(path, results, capsys)
    split = report["images"]["digits"]["splits"][0]
    y = digits_test_labels()
    n = len(y)
    assert split["split"] is None and split["n_images"] == n
    runs = {f: np.stack([correct(f, 0, s, y) for s in SEEDS]) for f in ("conv", "dynamic")}
    # the bootstrap drawn here: 1000 resamples of the n images from default_rng(0)
    draws = np.random.default_rng(0).integers(0, n, size=(1000, n))
    boot = {f: 100 * x[:, draws].mean(axis=(0, 2)) for f, x in runs.items()}
    diff = boot["dynamic"] - boot["conv"]
    low, high = np.quantile(diff, [0.025, 0.975])
    got = split["strategies"]["dynamic"]
    assert got["baseline"] == "conv" and got["seeds"] == SEEDS
    assert got["difference"]["estimate"] == pytest.approx(
        100 * (runs["dynamic"].mean() - runs["conv"].mean()))
    assert (got["difference"]["ci_low"], got["difference"]["ci_high"]) == pytest.approx(
        (low, high), rel=1e-12)
    lo_a, hi_a = np.quantile(boot["dynamic"], [0.025, 0.975])
    assert (got["acc1"]["ci_low"], got["acc1"]["ci_high"]) == pytest.approx((lo_a, hi_a))
    # McNemar per seed pair: the exact binomial test of the discordant images
    for m in got["mcnemar"]:
        a, b = runs["dynamic"][m["seed"]], runs["conv"][m["seed"]]
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        assert (m["a_only"], m["b_only"]) == (a_only, b_only)
        assert m["p"] == pytest.approx(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    assert [m["seed"] for m in got["mcnemar"]] == SEEDS
    # fixed and broken by all three pairs: first in their lists
    assert got["fixes"][0] == {"index": FIXED, "pairs": 3}
    assert got["breaks"][0] == {"index": BROKEN, "pairs": 3}
    # the baseline row has no difference, and the seed interval sits beside it in the table
    assert split["strategies"]["conv"]["difference"] is None


def test_the_table_and_the_csv_show_the_test_image_intervals(stored, capsys, monkeypatch):
    path, results, _ = stored
    monkeypatch.setenv("COLUMNS", "300")
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "digits acc1 over test images (paired bootstrap over 359 images, 1000 resamples)" in out
    assert "Δ vs baseline [95% CI] test images" in out and "Δ [95% CI] seeds" in out
    assert re.search(r"s0 \d+:\d+ p=", out)
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "csv"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ",images/acc1," in line]
    assert len(lines) == 2 and any("McNemar s0" in line for line in lines)


def test_variance_table_test_component_is_the_binomial_variance(tiny_experiment, tmp_path,
                                                                capsys):
    path = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"],
                                   "data.split_seed": [0, 1], "seed": SEEDS})
    results = tmp_path / "results"
    correct = planted_correct(1)
    plant(path, results, correct)
    cell = next(c for c in _json(path, results, capsys)["cells"]
                if c["metric"] == "test/acc1" and c["strategy"] == "dynamic")
    v = []
    for split in (0, 1):
        y = digits_test_labels(split)
        v += [1e4 * correct("dynamic", split, s, y).var() / len(y) for s in SEEDS]
    assert cell["variance"]["var_test"] == pytest.approx(np.mean(v), rel=1e-9)
    assert cell["variance"]["test_shared"] is not None


LIGHT = """
import sys
from bench.cli import main
assert main(["report", sys.argv[1], "--results", sys.argv[2]]) == 0
heavy = [m for m in ("torch", "lightning", "torchvision", "optuna") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_report_with_per_image_records_stays_torch_free(stored):
    path, results, _ = stored
    out = subprocess.run([sys.executable, "-c", LIGHT, str(path), str(results)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_html_draws_the_fixed_and_broken_images_from_the_test_set(stored, tmp_path, capsys):
    from PIL import Image

    from bench.data import build_datamodule

    path, results, _ = stored
    page = tmp_path / "r.html"
    assert main(["report", str(path), "--results", str(results), "--html", str(page)]) == 0
    text = page.read_text()
    assert 'id="images"' in text and "Test images fixed and broken" in text
    section = text[text.index('id="images"'):]
    found = re.findall(r'<img alt="test image (\d+) \(label (\d+)\)" '
                       r'src="data:image/png;base64,([^"]+)"', section)
    assert found and int(found[0][0]) == FIXED and "#5, label" in section and "3/3" in section
    # the thumbnail is test image 5 of the run's own test split, upscaled
    module = build_datamodule(load_experiment(path).runs[0].config["data"], 0)
    module.setup("test")
    expected = (255 * module.test_set.images[FIXED, 0].numpy()).round().astype(np.uint8)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(found[0][2]))))
    k = image.shape[0] // expected.shape[0]
    assert k >= 2 and np.array_equal(image[::k, ::k], expected)
    assert int(found[0][1]) == int(module.test_set.labels[FIXED])
