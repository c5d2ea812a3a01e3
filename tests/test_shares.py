"""The share analysis (issue 24): nulls, learned vs built in, shares inside boxes, and the
share at initialisation a real run records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import lesa
from bench.cli import main
from bench.config import load_experiment
from bench.report.shares import BUILT_IN, LEARNED, dynamic_null
from bench.train.shares import BoxShares, histogram_quantiles
from bench.store import RunDir, run_dirs


def _expected_dynamic_share() -> float:
    """E[1 / (1 + sigmoid(z))], z ~ N(0, 1), by quadrature (not the code under test)."""
    f = lambda z: stats.norm.pdf(z) / (1 + 1 / (1 + math.exp(-z)))  # noqa: E731
    return integrate.quad(f, -40, 40)[0]


def test_dynamic_share_at_initialisation_is_the_gate_null():
    expected = _expected_dynamic_share()
    assert abs(expected - 0.680) < 5e-4
    assert abs(dynamic_null() - 100 * expected) < 1e-6
    torch.manual_seed(0)
    block = lesa.LESA2d(64, heads=8, fusion="dynamic").train()  # batch statistics
    with torch.no_grad():
        block(torch.randn(32, 64, 8, 8))
    share = lesa.shares(block)["unary"] / 100
    # 32 x 64 x 64 omegas, but correlated within a channel: a generous sampling bound
    assert abs(share - expected) < 0.01, (share, expected)
    # and not the mean of omega's share, 1 / (1 + E[omega]) = 2/3
    assert abs(share - 2 / 3) > 0.5 * abs(expected - 2 / 3)


def test_histogram_quantiles_match_the_sample():
    x = np.random.default_rng(0).beta(2, 5, 200_000)
    hist, _ = np.histogram(x, bins=1000, range=(0, 1))
    q = histogram_quantiles(hist)
    for level in (5, 25, 50, 75, 95):
        assert abs(q[str(level)] - np.percentile(x, level)) < 2e-3


def test_share_inside_boxes_on_a_hand_made_map():
    m = torch.full((1, 8, 8), 0.2)  # 64 x 64 frame, stride 8: centres at 4, 12, ..., 60
    m[0, 1, 1] = 0.9                # the very tiny box [10, 10, 16, 16] holds centre (12, 12)
    m[0, 2, 2] = 0.7                # [17, 17, 19, 19] holds no centre: its centre's cell (2, 2)
    m[0, 3:8, 1:5] = 0.5            # the medium box [8, 24, 40, 64]: x centres 12-36, y 28-60
    m[0, :, 6:] = 0.0               # padding: the image is 64 x 48
    boxes = torch.tensor([[10, 10, 16, 16], [17, 17, 19, 19], [8, 24, 40, 64.0]])
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    acc = BoxShares()
    acc.add({"layer3.1.conv2": m}, (64, 64), [boxes], [sizes], [(64, 48)])
    out = acc.result()["per_module"]["layer3.1.conv2"]
    assert out["ap_vt"]["n_boxes"] == 2 and out["ap_vt"]["share"] == pytest.approx(80.0)
    assert out["ap_m"]["n_boxes"] == 1 and out["ap_m"]["share"] == pytest.approx(50.0)
    assert out["ap_t"]["n_boxes"] == 0 and out["ap_t"]["share"] is None
    assert out["background"]["share"] == pytest.approx(20.0)
    assert out["background"]["n_positions"] == 8 * 6 - 2 - 5 * 4
    stage = acc.result()["per_stage"]["layer3"]
    assert stage["ap_vt"] == {"share": pytest.approx(80.0), "n_boxes": 2}


def _planted(unary: float, init: float) -> dict:
    def shares(u):
        return {"unary": u, "binary": 100 - u, "per_stage": {"layer3": u, "layer4": u},
                "per_module": {"layer3.1.conv2": {"unary": u, "binary": 100 - u},
                               "layer4.0.conv2": {"unary": u, "binary": 100 - u}},
                "modules": {"per_module": {m: {"map": [4, 4], "L": 16.0, "uniform": 6.25,
                                               "self_ratio": u / 6.25}
                                           for m in ("layer3.1.conv2", "layer4.0.conv2")},
                            "per_stage": {s: {"L": 16.0, "uniform": 6.25, "self_ratio": u / 6.25}
                                          for s in ("layer3", "layer4")}}}
    return {"test": {"test/acc1": 0.5}, "costs": {"params": 1000}, "shares": shares(unary),
            "shares_init": shares(init)}


def test_a_planted_store_says_built_in_or_learned(tiny_experiment, tmp_path, capsys):
    exp_path = tiny_experiment(matrix={"model.fusion": ["sa", "dynamic"],
                                       "seed": [0, 1, 2, 3, 4]})
    results = tmp_path / "results"
    exp = load_experiment(exp_path)
    noise = [0.3, -0.2, 0.1, -0.3, 0.15]
    for run in exp.runs:
        seed, fusion = run.config["seed"], run.config["model"]["fusion"]
        init = 68.0 + 0.5 * seed if fusion == "dynamic" else 6.0 + 0.1 * seed
        shift = 0.0 if fusion == "dynamic" else 5.0  # sa: several points above its init
        rd = RunDir(results / exp.name / run.id)
        rd.create(run.config)
        rd.write_metrics(_planted(init + shift + noise[seed] * (fusion == "sa") +
                                  noise[::-1][seed] * 0.1 * (fusion == "dynamic"), init))
        rd.update_status(state="done")
    out = tmp_path / "report.json"
    assert main(["report", str(exp_path), "--results", str(results), "--format", "json",
                 "-o", str(out)]) == 0
    rows = json.loads(out.read_text())["shares"]["digits"]["rows"]
    verdicts = {(r["strategy"], r["scope"]): r["verdict"] for r in rows}
    assert verdicts[("dynamic", "all")] == BUILT_IN
    assert verdicts[("dynamic", "layer3")] == BUILT_IN
    assert verdicts[("sa", "all")] == LEARNED
    assert verdicts[("sa", "layer4")] == LEARNED
    sa = next(r for r in rows if (r["strategy"], r["scope"]) == ("sa", "all"))
    assert sa["null"] == pytest.approx(6.25)
    assert sa["trained_minus_initial"]["diff"] == pytest.approx(5.0 + sum(noise) / 5)
    assert sa["trained_minus_initial"]["ci_low"] > 0
    dyn = next(r for r in rows if (r["strategy"], r["scope"]) == ("dynamic", "all"))
    assert dyn["null"] == pytest.approx(68.0, abs=0.05)
    assert dyn["trained"]["n"] == 5 and dyn["initial"]["n"] == 5
    capsys.readouterr()
    assert main(["report", str(exp_path), "--results", str(results)]) == 0
    text = capsys.readouterr().out
    assert "learned or built in" in text and LEARNED in text and BUILT_IN in text
    for fmt in ("md", "csv"):
        assert main(["report", str(exp_path), "--results", str(results), "--format", fmt]) == 0
        assert "built in" in capsys.readouterr().out


def test_a_tiny_run_records_the_share_at_initialisation(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(matrix={"model.fusion": ["sa", "dynamic"], "seed": [0]},
                          trainer={"max_epochs": 1, "limit_train_batches": 2,
                                   "limit_val_batches": 1, "limit_test_batches": 2})
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 0
    for rd in run_dirs(results, "tiny").values():
        fusion = rd.config()["model"]["fusion"]
        m = rd.metrics()
        init = m["shares_init"]
        assert set(init["per_stage"]) == {"layer3", "layer4"}
        assert set(init["per_module"]) == set(m["shares"]["per_module"])
        assert init["per_stage"] != m["shares"]["per_stage"]  # the weights were swapped
        modules = init["modules"]["per_module"]
        for name, g in modules.items():
            h, w = g["map"]
            assert g["L"] == h * w and g["uniform"] == pytest.approx(100 / (h * w))
        if fusion == "sa":
            for name, g in modules.items():  # random weights attend about uniformly
                share = init["per_module"][name]["unary"]
                assert 0.5 * g["uniform"] < share < 2 * g["uniform"], (name, share, g)
                assert g["self_ratio"] == pytest.approx(share / g["uniform"])
            assert m["shares"]["gates"] is None
        else:
            assert abs(init["unary"] - dynamic_null()) < 5  # eval mode, re-estimated BN
            gates = m["shares"]["gates"]["per_module"]
            for g in gates.values():
                q = g["omega_quantiles"]
                assert 0 <= q["5"] <= q["50"] <= q["95"] <= 1
                assert g["gamma"]["min"] <= g["gamma"]["mean"] <= g["gamma"]["max"]
            init_gates = init["gates"]["per_module"]
            assert all(g["gamma"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
                       for g in init_gates.values())
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = capsys.readouterr().out
    assert "learned or built in" in text and "1/L" in text


def test_a_tiny_detection_run_records_the_share_inside_boxes(tmp_path):
    exp = tmp_path / "det.yaml"
    exp.write_text(json.dumps({
        "name": "tiny", "seed": 0,
        "data": {"name": "digit_scenes", "image_size": 64, "train_images": 4, "val_images": 2,
                 "test_images": 4, "object_size": [4, 40], "objects": [3, 6], "batch_size": 2},
        "model": {"backbone": "resnet_small", "heads": 2,
                  "detection": {"fpn_channels": 32, "head_convs": 1, "topk_candidates": 100,
                                "detections_per_img": 100}},
        "optim": {"name": "sgd", "lr": 0.01}, "trainer": {"max_epochs": 1},
        "matrix": {"model.fusion": ["dynamic"], "seed": [0]}}))
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 0
    (rd,) = run_dirs(results, "tiny").values()
    m = rd.metrics()
    for key in ("shares", "shares_init"):
        boxes = m[key]["boxes"]
        assert set(boxes["per_stage"]) == {"layer3", "layer4"}
        stage = boxes["per_stage"]["layer3"]
        assert sum(stage[b]["n_boxes"] for b in boxes["buckets"]) > 0
        assert stage["background"]["n_positions"] > 0
        assert 0 < stage["background"]["share"] < 100
