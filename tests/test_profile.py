"""`lesa-bench profile` on a tiny shape: it runs through run(args) and writes the JSON report.

Only structure is checked (keys, counts, finite positive numbers): timings on the shared test
machine are noise, so no speed or memory claim is ever asserted here.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys

import pytest

from bench import profile
from bench.profile import measure

ROW_KEYS = {"name", "kind", "note", "infer", "train", "ratio_to_botnet", "pct_of_ceiling"}
MODE_KEYS = {"time_s", "time_min_s", "cpu_s", "sys_s", "repeats", "peak_mem_bytes", "flops",
             "images_per_s", "gflops_per_s"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    profile.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_profile_module_does_not_import_torch():
    code = "import sys, bench.profile; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quick_profile_writes_json(tmp_path):
    pytest.importorskip("timm")
    target = tmp_path / "profile.json"
    args = parse("--quick", "--shape", "2,16,4,4", "--heads", "2",
                 "--parts", "table,window,network", "--json", str(target))
    assert profile.run(args) == 0
    report = json.loads(target.read_text())
    assert set(report) >= {"meta", "shapes", "window", "network", "targets"}
    assert report["meta"]["memory"] and report["meta"]["flops"]

    (shape,) = report["shapes"]
    assert shape["shape"] == [2, 16, 4, 4] and shape["tokens"] == 16
    names = [r["name"] for r in shape["rows"]]
    import lesa

    for fusion in lesa.FUSIONS:
        assert fusion in names
    assert {"BottleneckAttn", "HaloAttn", "sa·w4", "dynamic·w4"} <= set(names)
    kinds = {r["kind"] for r in shape["rows"]}
    assert {"strategy", "peer", "core", "core:recompute", "core:sdpa", "ceiling:sdpa",
            "ceiling:matmul"} <= kinds
    paths = {r["kind"]: r["path"] for r in shape["rows"] if r["kind"].startswith("core")}
    from lesa import fused_cpu

    default = ("fused CPU kernel (inference), chunked (training)" if fused_cpu.available()
               else "chunked explicit")
    assert paths == {"core": default, "core:torch-ops": "chunked explicit",
                     "core:recompute": "chunked explicit",
                     "core:sdpa": "fused SDPA"}  # the suite's CPU paths, and the other one
    for r in shape["rows"]:
        assert ROW_KEYS <= set(r), r["name"]
        assert MODE_KEYS <= set(r["infer"]), r["name"]
        assert r["infer"]["time_s"] > 0 and math.isfinite(r["infer"]["time_s"])
        if r["kind"] in ("ceiling:matmul", "core:torch-ops"):  # inference only
            assert r["train"] is None
            continue
        assert MODE_KEYS <= set(r["train"]), r["name"]
        assert r["train"]["flops"] > 0, r["name"]  # every row runs a conv, matmul or SDPA
        assert r["ratio_to_botnet"]["train_time"] > 0
        assert r["pct_of_ceiling"]["infer_matmul"] > 0
    botnet = next(r for r in shape["rows"] if r["name"] == "BottleneckAttn")
    assert botnet["ratio_to_botnet"]["train_time"] == pytest.approx(1.0)

    assert {e["module"] for e in report["window"]} == {"WindowedBinaryTerm", "HaloAttn"}
    for e in report["window"]:
        assert e["infer"]["us_per_token"] > 0 and e["train"]["us_per_token"] > 0
    # every side of the scan does the same work per call (B x H x W constant), so time per
    # token compares the algorithm, not per-call overhead
    assert {e["batch"] * e["tokens"] for e in report["window"]} == {256}
    net = report["network"]
    assert [r["name"] for r in net["rows"]] == ["resnet_tiny conv", "resnet_tiny dynamic"]
    assert net["dynamic_over_conv_images_per_s"] > 0

    targets = {t["target"]: t for t in report["targets"]}
    assert set(targets) == set(profile.TARGETS_TEXT)
    assert targets["network_train"]["value"] is not None
    assert targets["core_vs_matmul"]["met"] is None  # L = 4096 was not measured
    assert targets["lightning_step"]["met"] is None  # the lightning part was not run


def test_profile_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="B,C,H,W"):
        profile.run(parse("--quick", "--shape", "2,16,4", "--parts", "table"))
    with pytest.raises(SystemExit, match="unknown"):
        profile.run(parse("--quick", "--parts", "tables"))


@pytest.mark.slow
def test_quick_profile_lightning_overhead(tmp_path):
    pytest.importorskip("lightning")
    target = tmp_path / "profile.json"
    assert profile.run(parse("--quick", "--parts", "lightning", "--json", str(target))) == 0
    report = json.loads(target.read_text())
    lit = report["lightning"]
    assert "skipped" not in lit, lit
    assert lit["lightning_step_s"] > 0 and lit["plain_step_s"] > 0
    # the ratio is the median over back-to-back pairs, not a ratio of pooled medians
    assert len(lit["pair_ratios"]) == 2
    assert lit["overhead_ratio"] == pytest.approx(statistics.median(lit["pair_ratios"]))
    target_row = next(t for t in report["targets"] if t["target"] == "lightning_step")
    assert target_row["value"] == pytest.approx(lit["overhead_ratio"])


def test_fast_calls_get_more_timings_per_round(monkeypatch):
    """A call under FAST_CALL_S is timed INNER times per round, a slow one once: where a slow
    row limits the rounds, the fast rows' medians rest on more samples."""
    import time

    import torch

    class NoMemory:
        def measure(self, fn):
            return None

    monkeypatch.setattr(measure, "FAST_CALL_S", 0.02)
    fast = measure.Row("fast", "strategy", lambda: None, None)
    slow = measure.Row("slow", "strategy", lambda: time.sleep(0.03), None)
    measure.run_rows(torch, [fast, slow], repeats=2, warmup=1, sync=lambda: None,
                     memory=NoMemory(), progress=lambda text: None)
    assert len(fast.times["infer"]) == 2 * measure.INNER
    assert len(slow.times["infer"]) == 2
    assert fast.result["infer"]["repeats"] == 2 * measure.INNER
    cold = measure.Row("cold", "strategy", lambda: None, None)  # no warm-up: no estimate
    measure.run_rows(torch, [cold], repeats=2, warmup=0, sync=lambda: None, memory=NoMemory(),
                     progress=lambda text: None)
    assert len(cold.times["infer"]) == 2


def test_rounds_rotate_the_row_order(monkeypatch):
    """Each round starts one row further on: every row runs first once in len(rows) rounds, so
    no row always follows the same neighbour (whose leftover heap or caches would bias it)."""
    import torch

    class NoMemory:
        def measure(self, fn):
            return None

    monkeypatch.setattr(measure, "FAST_CALL_S", 0.0)  # one call per round per row
    order = []
    rows = [measure.Row(name, "strategy", lambda name=name: order.append(name), None)
            for name in "abc"]
    measure.run_rows(torch, rows, repeats=3, warmup=0, sync=lambda: None, memory=NoMemory(),
                     progress=lambda text: None)
    rounds = [order[i:i + 3] for i in range(0, 9, 3)]
    assert rounds == [list("abc"), list("bca"), list("cab")]
    assert all(len(row.times["infer"]) == 3 for row in rows)


@pytest.mark.parametrize("device,batch,matmul", [("cpu", 8, 2048), ("cuda", 64, 8192)])
def test_sizes_default_by_device_and_stay_when_given(device, batch, matmul):
    parser = argparse.ArgumentParser()
    profile.add_arguments(parser)
    args = parser.parse_args(["--device", device])
    profile.device_defaults(args)
    assert (args.network_batch, args.matmul_size) == (batch, matmul)
    args = parser.parse_args(["--device", device, "--network-batch", "3", "--matmul-size", "100"])
    profile.device_defaults(args)
    assert (args.network_batch, args.matmul_size) == (3, 100)
