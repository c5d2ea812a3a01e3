"""`lesa-bench profile`: speed, memory and FLOPs of every fusion strategy next to its peers.

For each shape B,C,H,W (default: B=8, C=256 at 16x16, 32x32 and 64x64, i.e. L = 256, 1024 and
4096 tokens, 8 heads) it builds one module per row,

    strategies  every entry of lesa.FUSIONS (`conv` is the plain 3x3 conv + BN peer), and `sa`
                and `dynamic` with the windowed binary term (lesa/window.py, --window)
    peers       timm.layers BottleneckAttn (BoTNet: global attention with 2-D relative logits)
                and HaloAttn (blocked local attention; same block and halo as --window)
    core        BinaryTerm.attend alone (the attention core, on random q, k, v): the device's
                default path (on CPU the fused kernel of lesa/fused_cpu.py in inference where
                it applies, the chunked explicit path of lesa/chunked.py in training), the
                chunked path's torch ops in inference, the chunked path with recompute=True,
                and the fused SDPA path (the default off CPU)
    ceilings    scaled_dot_product_attention without a mask on the q/k/v shapes the fused core
                path feeds it, and a square matmul (--matmul-size)

and measures, for inference (forward, no grad, eval mode) and training (forward + backward,
train mode, parameter grads reset to None before each call, input requiring grad):

    time        median wall time of --repeats calls after --warmup calls; rows are interleaved
                call by call (round robin, each round starting one row further on), so load
                from other processes hits all rows alike;
                calls under 0.5 s are timed 3 times per round (more samples where a slow row
                limits the rounds).
                The median CPU time of the process (user + sys, all threads) is kept as well.
    images/s    B / median time
    peak memory CPU: growth of the process's peak resident set over one call (Linux VmHWM,
                reset through /proc/self/clear_refs, after gc and malloc_trim): everything the
                call made the OS provide (tensors, autograd buffers, kernel scratch, allocator
                slack). CUDA: growth of torch.cuda.max_memory_allocated over one call.
    FLOPs       torch.utils.flop_counter.FlopCounterMode over one call (matmuls, convolutions and
                attention kernels as executed, zero padding included; elementwise ops not
                counted), and GFLOP/s = FLOPs / median time.

Each row is shown as a ratio to BottleneckAttn (time and peak memory) and as a percent of the two
ceilings' GFLOP/s. BottleneckAttn builds B x heads x L x L tensors; where that would not fit in
--mem-budget, the whole shape runs at a smaller batch (all rows alike) and says so.

Then (parts `window`, `network`, `lightning`): the windowed binary term's time per token over
growing maps, LESA-ResNet-26 (dynamic) against the conv ResNet-26 in training images/s at
128x128, and one training step of bench.tasks.classification.ClassificationTask under Lightning
against a plain PyTorch loop doing the same work. A targets table closes the report. Everything
also goes to --json.

CPU timings include the allocator: glibc hands large buffers back to the OS after each call, so
the next call page-faults them in again (the "sys" time columns). To see the share, run with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (glibc then keeps and reuses freed
memory, as jemalloc or tcmalloc would); the JSON records any MALLOC_* variables.

torch, timm and lightning are imported inside run(): `lesa-bench --help` stays fast. timm is a
dev/bench dependency (`pip install -e .[dev]`); without it the peer rows are skipped with a note.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

from bench.report.flops import count_flops

DEFAULT_SHAPES = ("8,256,16,16", "8,256,32,32", "8,256,64,64")
QUICK_SHAPES = ("2,32,8,8",)
PARTS = ("table", "window", "network", "lightning")

TARGETS_TEXT = {
    "sa_train_time": "sa fwd+bwd time <= 0.8x BottleneckAttn (L = 1024, 4096)",
    "sa_train_memory": "sa fwd+bwd peak memory <= 0.7x BottleneckAttn (L = 1024, 4096)",
    "dynamic_train_time": "dynamic fwd+bwd time <= 1.3x BottleneckAttn (every shape)",
    "core_vs_matmul": "attention core inference GFLOP/s >= 50% of matmul (L = 4096)",
    "window_flat": "windowed binary term time per token flat within 1.3x (L 1024 -> 16384)",
    "network_train": "LESA-ResNet-26 training images/s >= 0.6x conv ResNet-26",
    "lightning_step": "ClassificationTask step under Lightning <= 1.10x a plain loop",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", action="append", metavar="B,C,H,W",
                        help="input shape, repeatable (default: 8,256,16,16 8,256,32,32 "
                        "8,256,64,64)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row and mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per row and mode")
    parser.add_argument("--min-time", type=float, default=30.0, metavar="SECONDS",
                        help="keep adding rounds (up to 5x --repeats) until the timed rounds of "
                        "a shape took this long (default 30)")
    parser.add_argument("--window", type=int, default=8,
                        help="block size of the windowed rows and of HaloAttn (halo: half)")
    parser.add_argument("--window-sides", default="32,64,128",
                        help="map sides of the windowed time-per-token scan")
    parser.add_argument("--window-tokens", type=int, default=32768,
                        help="tokens per call in the window scan: the batch is this over H*W "
                             "(so every side does the same work; time per token is then "
                             "comparable, not swamped by per-call overhead at small maps)")
    parser.add_argument("--network-batch", type=int,
                        help="batch of the whole-network and Lightning rows (default: 8 on the "
                        "CPU, 64 on a GPU, where B=8 at 128x128 measures kernel launches)")
    parser.add_argument("--network-size", type=int, default=128)
    parser.add_argument("--matmul-size", type=int,
                        help="side of the square matmul ceiling (default: 2048 on the CPU, 8192 "
                        "on a GPU: an H100 in bf16 reached 260-305 TFLOP/s at 2048, ~800 at 8192)")
    parser.add_argument("--mem-budget", type=float, metavar="GB",
                        help="largest estimated peak for a shape (default: 30%% of available)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke configuration (2x32x8x8, 1 repeat, tiny nets)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")


# ---------------------------------------------------------------- measurement helpers

class PeakMemory:
    """Peak memory of one call, in bytes (see the module docstring for what it measures)."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self._trim = None
        if device.type == "cuda":
            self.method = ("growth of torch.cuda.max_memory_allocated over one call (tensor "
                           "memory; the caching allocator's reserve is not counted)")
            return
        try:
            import ctypes

            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            pass
        try:
            self._reset_hwm()
            self._status("VmHWM")
            self.method = ("growth of the process's peak resident set (VmHWM, reset through "
                           "/proc/self/clear_refs) over one call, after gc and malloc_trim: "
                           "tensors, autograd buffers, kernel scratch and allocator slack")
        except (OSError, ValueError):
            self.method = None  # not Linux, or clear_refs refused: no CPU peak memory

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise ValueError(key)

    @staticmethod
    def _reset_hwm() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def measure(self, fn) -> int | None:
        """Tensors die by reference counting; the caller runs one gc.collect() beforehand
        (a full collection per call costs up to 0.3 s in a big process)."""
        torch = self.torch
        if self.method is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return max(0, torch.cuda.max_memory_allocated() - base)
        if self._trim is not None:
            self._trim(0)
        base = self._status("VmRSS")
        self._reset_hwm()
        fn()
        return max(0, self._status("VmHWM") - base)


def _timed(fn, sync) -> tuple[float, float, float]:
    """(wall, CPU = user + sys of all threads, sys alone: page faults show up there)."""
    import resource

    sync()
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before.ru_stime


def _stats(times: list[tuple[float, float, float]]) -> dict:
    walls = [t[0] for t in times]
    return {"time_s": statistics.median(walls), "time_min_s": min(walls),
            "cpu_s": statistics.median(t[1] for t in times),
            "sys_s": statistics.median(t[2] for t in times), "repeats": len(walls)}


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        b, c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--shape wants B,C,H,W (four integers), not {text!r}") from None
    return b, c, h, w


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- rows

class Row:
    """One thing to time: `infer()` and `train()` calls (train may be None)."""

    def __init__(self, name: str, kind: str, infer, train, note: str = ""):
        self.name, self.kind, self.note = name, kind, note
        self.calls = {"infer": infer, "train": train}
        self.times: dict[str, list] = {"infer": [], "train": []}
        self.result: dict = {"name": name, "kind": kind, "note": note}


def _module_row(torch, name, kind, module, x, device, dtype):
    module = module.to(device=device, dtype=dtype)
    x_train = x.detach().clone().requires_grad_(True)
    grad = None

    def infer():
        module.eval()
        with torch.no_grad():
            module(x)

    def train():
        nonlocal grad
        module.train()
        for p in module.parameters():
            p.grad = None
        x_train.grad = None
        y = module(x_train)
        if grad is None or grad.shape != y.shape:
            grad = torch.randn_like(y)
        y.backward(grad)

    return Row(name, kind, infer, train)


def _tensor_row(torch, name, kind, fn, tensors):
    grads = [t.detach().clone().requires_grad_(True) for t in tensors]
    out_grad = []

    def infer():
        with torch.no_grad():
            fn(*tensors)

    def train():
        for t in grads:
            t.grad = None
        y = fn(*grads)
        if not out_grad:
            out_grad.append(torch.randn_like(y))
        y.backward(out_grad[0])

    return Row(name, kind, infer, train)


def _build_rows(torch, shape, heads, window, device, dtype, timm_layers, notes):
    import torch.nn.functional as F

    import lesa
    from lesa.binary import BinaryTerm

    b, c, h, w = shape
    max_size = max(64, h, w)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=gen).to(device=device, dtype=dtype)
    rows = []
    for fusion in lesa.FUSIONS:
        torch.manual_seed(0)
        module = lesa.LESA2d(c, heads=heads, fusion=fusion, max_size=max_size)
        lesa.record_shares(module, False)  # as training loops do: sa takes its plain path
        rows.append(_module_row(torch, fusion, "strategy", module, x, device, dtype))
        if fusion == "conv":
            rows[-1].result["note"] = "3x3 conv + BN: the conv peer"
    for fusion in ("sa", "dynamic"):
        torch.manual_seed(0)
        module = lesa.LESA2d(c, heads=heads, fusion=fusion, max_size=max_size, window=window)
        lesa.record_shares(module, False)
        rows.append(_module_row(torch, f"{fusion}·w{window}", "strategy", module, x, device,
                                dtype))
    if timm_layers is not None:
        torch.manual_seed(0)
        rows.append(_module_row(torch, "BottleneckAttn", "peer", timm_layers.BottleneckAttn(
            c, c, feat_size=(h, w), num_heads=heads), x, device, dtype))
        if h % window == 0 and w % window == 0:
            torch.manual_seed(0)
            rows.append(_module_row(torch, "HaloAttn", "peer", timm_layers.HaloAttn(
                c, c, feat_size=(h, w), num_heads=heads, block_size=window,
                halo_size=window // 2), x, device, dtype))
        else:
            notes.append(f"HaloAttn skipped at {h}x{w}: not a multiple of its block {window}")
    # the attention core (chunked, chunked with recompute, fused SDPA) and the
    # SDPA ceiling on the very shapes the fused path feeds SDPA
    d, dv, length = BinaryTerm(c, heads, max_size).qk_dim, c // heads, h * w
    q, k = (torch.randn(b, heads, length, d, generator=gen).to(device=device, dtype=dtype)
            for _ in range(2))
    v = torch.randn(b, heads, length, dv, generator=gen).to(device=device, dtype=dtype)
    width = _round_up(max(d + h + w, dv), 8)
    widened = 2 * b * heads * length * length * (d + h + w + dv)  # the fused path's dot products
    explicit = 2 * b * heads * length * length * (d + dv)  # q k^T and a v at the real widths
    # (name, kind, kernel, recompute, train): the torch-op row is inference only, its training
    # is the default row's on CPU
    cores = [("core: attend", "core", "auto", False, True),
             ("core: chunked, torch ops", "core:torch-ops", "chunked", False, False),
             ("core: attend, recompute", "core:recompute", "chunked", True, True),
             ("core: fused SDPA", "core:sdpa", "sdpa", False, True)]
    default_is_sdpa = BinaryTerm(c, heads, max_size).uses_sdpa(q)
    for name, kind, kernel, recompute, train in cores:
        if kind == "core:sdpa" and default_is_sdpa:
            continue  # off CPU the default row already is the fused path
        term = BinaryTerm(c, heads, max_size).to(device=device, dtype=dtype)
        term.kernel, term.recompute = kernel, recompute
        row = _tensor_row(torch, name, kind,
                          lambda q, k, v, term=term: term.attend(q, k, v, h, w)[0], [q, k, v])
        if not train:
            row.calls["train"] = None
        row.result["path"] = _core_path(term, q, v)
        row.result["useful_flops_infer"] = widened if term.uses_sdpa(q) else explicit
        row.result["sdpa_width"] = width if term.uses_sdpa(q) else None
        rows.append(row)
    qs, ks, vs = (torch.randn(b, heads, length, width, generator=gen).to(device=device,
                                                                          dtype=dtype)
                  for _ in range(3))
    rows.append(_tensor_row(torch, f"ceiling: SDPA E={width}", "ceiling:sdpa",
                            lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                            [qs, ks, vs]))
    return rows


def _core_path(term, q, v) -> str:
    from lesa import fused_cpu

    if term.uses_sdpa(q):
        return "fused SDPA"
    if term.kernel == "auto" and fused_cpu.applies(q, v):
        return "fused CPU kernel (inference), chunked (training)"
    return "chunked explicit"


def _matmul_row(torch, n, device, dtype):
    gen = torch.Generator().manual_seed(0)
    a, bm = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))

    def infer():
        torch.mm(a, bm)

    row = Row(f"ceiling: matmul {n}", "ceiling:matmul", infer, None)
    return row


def _botnet_bytes(shape, heads, itemsize) -> int:
    b, _, h, w = shape
    return 6 * b * heads * (h * w) ** 2 * itemsize  # ~6 live B x heads x L x L tensors (train)


FAST_CALL_S, INNER = 0.5, 3  # see _run_rows
LIGHTNING_PAIRS = 4  # Lightning / plain-loop pairs in the overhead measurement


def _run_rows(torch, rows, repeats, warmup, sync, memory, progress, min_time=0.0):
    """Warm up, then time round robin (so load spikes hit every row alike), each round starting
    one row further on (the heap and caches a row leaves behind vary the next one's time, so no
    row always runs right after the same one): at least `repeats` rounds, more (up to 5x)
    while the rounds so far took less than `min_time` seconds, which gives cheap shapes
    enough repeats for a stable median on a shared machine. Calls whose
    warm-up took under FAST_CALL_S are timed INNER times per round: in a shape where one slow
    row sets the number of rounds (BoTNet at L = 4096), the fast rows' medians then rest on
    3x the samples (two identical forwards in one run had measured 270 and 317 ms)."""
    modes = ("infer", "train")
    inner = {}
    for row in rows:
        for mode in modes:
            if row.calls[mode] is not None:
                took = None
                for _ in range(warmup):
                    took = _timed(row.calls[mode], sync)[0]
                inner[id(row), mode] = INNER if took is not None and took < FAST_CALL_S else 1
    start, r = time.perf_counter(), 0
    while r < repeats or (r < 5 * repeats and time.perf_counter() - start < min_time):
        r += 1
        progress(f"round {r} (at least {repeats})")
        for row in rows[(r - 1) % len(rows):] + rows[:(r - 1) % len(rows)]:
            for mode in modes:
                if row.calls[mode] is not None:
                    for _ in range(inner[id(row), mode]):
                        row.times[mode].append(_timed(row.calls[mode], sync))
    gc.collect()
    for row in rows:
        for mode in modes:
            fn = row.calls[mode]
            if fn is None:
                row.result[mode] = None
                continue
            result = _stats(row.times[mode])
            result["peak_mem_bytes"] = memory.measure(fn)
            result["flops"] = count_flops(fn)
            row.result[mode] = result


# ---------------------------------------------------------------- the parts

def device_defaults(args) -> None:
    """Fill the sizes left unset with the device's defaults (see --network-batch and
    --matmul-size): a GPU needs larger problems before it measures more than launches."""
    on_gpu = args.device == "cuda"
    if args.network_batch is None:
        args.network_batch = 64 if on_gpu else 8
    if args.matmul_size is None:
        args.matmul_size = 8192 if on_gpu else 2048


def _table_part(torch, args, shapes, device, dtype, sync, memory, timm_layers, console, notes):
    out = []
    itemsize = torch.tensor([], dtype=dtype).element_size()
    budget = (args.mem_budget * 2**30 if args.mem_budget
              else 0.3 * (_mem_available() or 8 * 2**30))
    for shape in shapes:
        b, c, h, w = shape
        if c % (2 * args.heads):
            raise SystemExit(f"shape {shape}: C must be divisible by 2 * heads")
        run_b = b
        if device.type == "cpu" and timm_layers is not None:
            while run_b > 1 and _botnet_bytes((run_b, c, h, w), args.heads, itemsize) > budget:
                run_b //= 2
        run_shape = (run_b, c, h, w)
        label = f"B={b} C={c} {h}x{w} (L={h * w})"
        if run_b != b:
            label += f", run at B={run_b}: BottleneckAttn's L x L tensors exceed the budget"
        console.print(f"[bold]profile[/] {label}")
        rows = _build_rows(torch, run_shape, args.heads, args.window, device, dtype,
                           timm_layers, notes)
        rows.append(_matmul_row(torch, args.matmul_size, device, dtype))
        _run_rows(torch, rows, args.repeats, args.warmup, sync, memory,
                  lambda text: console.print(f"  {text}", style="dim"), args.min_time)
        results = [row.result for row in rows]
        _derive(results, run_b)
        out.append({"shape": list(shape), "batch_run": run_b, "tokens": h * w,
                    "label": label, "rows": results})
    return out


def _derive(results: list[dict], batch: int) -> None:
    """images/s, GFLOP/s, ratios to BottleneckAttn and percent of the ceilings."""
    for r in results:
        for mode in ("infer", "train"):
            m = r.get(mode)
            if m:
                m["images_per_s"] = batch / m["time_s"] if r["kind"] in ("strategy", "peer") \
                    else None
                m["gflops_per_s"] = m["flops"] / m["time_s"] / 1e9 if m["flops"] else None
    by_name = {r["name"]: r for r in results}
    ref = by_name.get("BottleneckAttn")
    sdpa = next((r for r in results if r["kind"] == "ceiling:sdpa"), None)
    matmul = next((r for r in results if r["kind"] == "ceiling:matmul"), None)
    for r in results:
        ratio = {}
        for mode in ("infer", "train"):
            m, base = r.get(mode), ref.get(mode) if ref else None
            if m and base:
                ratio[f"{mode}_time"] = m["time_s"] / base["time_s"]
                ratio[f"{mode}_time_min"] = m["time_min_s"] / base["time_min_s"]
                if m["peak_mem_bytes"] is not None and base["peak_mem_bytes"]:
                    ratio[f"{mode}_mem"] = m["peak_mem_bytes"] / base["peak_mem_bytes"]
        r["ratio_to_botnet"] = ratio or None
        pct = {}
        for mode in ("infer", "train"):
            m = r.get(mode)
            if not m or not m.get("gflops_per_s"):
                continue
            ceiling = sdpa.get(mode) if sdpa else None
            if ceiling and ceiling.get("gflops_per_s"):
                pct[f"{mode}_sdpa"] = 100 * m["gflops_per_s"] / ceiling["gflops_per_s"]
            if matmul and matmul["infer"] and matmul["infer"].get("gflops_per_s"):
                pct[f"{mode}_matmul"] = 100 * m["gflops_per_s"] / matmul["infer"]["gflops_per_s"]
        r["pct_of_ceiling"] = pct or None
        if r["kind"] == "core" and r.get("infer") and matmul and matmul["infer"]:
            useful = r["useful_flops_infer"] / r["infer"]["time_s"] / 1e9
            r["useful_gflops_per_s_infer"] = useful
            r["pct_useful_of_matmul_infer"] = 100 * useful / matmul["infer"]["gflops_per_s"]


def _window_part(torch, args, c, device, dtype, sync, memory, timm_layers, console):
    from lesa.window import WindowedBinaryTerm

    sides = [int(s) for s in args.window_sides.split(",")]
    rows, meta = [], []
    for side in sides:
        b = max(1, args.window_tokens // (side * side))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, c, side, side, generator=gen).to(device=device, dtype=dtype)
        torch.manual_seed(0)
        term = WindowedBinaryTerm(c, args.heads, max_size=2 * args.window, window=args.window)
        rows.append(_module_row(torch, f"WindowedBinaryTerm {side}x{side}", "window", term, x,
                                device, dtype))
        meta.append((side, b, "WindowedBinaryTerm"))
        if timm_layers is not None and side % args.window == 0:
            torch.manual_seed(0)
            halo = timm_layers.HaloAttn(c, c, feat_size=(side, side), num_heads=args.heads,
                                        block_size=args.window, halo_size=args.window // 2)
            rows.append(_module_row(torch, f"HaloAttn {side}x{side}", "peer", halo, x, device,
                                    dtype))
            meta.append((side, b, "HaloAttn"))
    console.print(f"[bold]profile[/] windowed binary term, {args.window_tokens} tokens per call "
                  f"(B x H x W), C={c}, window {args.window}, sides {sides}")
    _run_rows(torch, rows, args.repeats, args.warmup, sync, memory,
              lambda text: console.print(f"  {text}", style="dim"), args.min_time)
    out = []
    for row, (side, b, module) in zip(rows, meta):
        r = row.result
        tokens = b * side * side
        entry = {"module": module, "side": side, "tokens": side * side, "batch": b}
        for mode in ("infer", "train"):
            m = r[mode]
            entry[mode] = dict(m, us_per_token=m["time_s"] / tokens * 1e6,
                               cpu_us_per_token=m["cpu_s"] / tokens * 1e6,
                               sys_us_per_token=m["sys_s"] / tokens * 1e6)
        out.append(entry)
    return out


def _train_step_fn(torch, model, x, y, lr=0.01):
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _network_part(torch, args, device, dtype, sync, memory, console):
    import lesa

    name, size, b = ("resnet_tiny", 32, 2) if args.quick else \
        ("resnet26", args.network_size, args.network_batch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    y = torch.randint(0, 10, (b,), generator=gen).to(device)
    from bench.config import DEFAULTS

    layout = DEFAULTS["model"]["channels_last"]  # as the suite trains them
    rows = []
    for fusion in ("conv", "dynamic"):
        torch.manual_seed(0)
        model = lesa.build_backbone(name, fusion=fusion, num_classes=10,
                                    channels_last=layout).to(device=device, dtype=dtype)
        lesa.record_shares(model, False)
        rows.append(Row(f"{name} {fusion}", "network", None,
                        _train_step_fn(torch, model, x, y)))
    console.print(f"[bold]profile[/] {name} training step, B={b} at {size}x{size}")
    _run_rows(torch, rows, args.repeats, max(1, args.warmup) if not args.quick else 0, sync,
              memory, lambda text: console.print(f"  {text}", style="dim"), args.min_time)
    out = {"backbone": name, "size": size, "batch": b, "channels_last": layout, "rows": []}
    for row in rows:
        m = row.result["train"]
        m["images_per_s"] = b / m["time_s"]
        out["rows"].append({"name": row.name, "train": m})
    conv, dyn = (r["train"]["images_per_s"] for r in out["rows"])
    out["dynamic_over_conv_images_per_s"] = dyn / conv
    return out


def _lightning_part(torch, args, device, console) -> dict:
    """One ClassificationTask training step under Lightning against a plain loop."""
    try:
        from bench.tasks.classification import ClassificationTask
    except ImportError as err:
        return {"skipped": f"bench.tasks.classification.ClassificationTask unavailable: {err}"}
    import logging
    import tempfile

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from bench.config import DEFAULTS
    from bench.tasks.optim import build_optimizers

    name, size, b = ("resnet_tiny", 32, 2) if args.quick else \
        ("resnet26", args.network_size, args.network_batch)
    warm, steps = (1, 2) if args.quick else (2, max(3, args.repeats))
    model_cfg = dict(DEFAULTS["model"], backbone=name, fusion="dynamic")
    optim_cfg = dict(DEFAULTS["optim"])
    gen = torch.Generator().manual_seed(0)
    n = b * (warm + steps)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=gen),
                         torch.randint(0, 10, (n,), generator=gen))

    def make_task():
        torch.manual_seed(0)
        return ClassificationTask(model_cfg, optim_cfg, num_classes=10, in_channels=3,
                                  image_size=size, max_epochs=1, batch_size=b)

    class Stamps(L.Callback):
        def __init__(self):
            self.t = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            self.t.append(time.perf_counter())

    def lightning_steps() -> list[float]:
        stamps = Stamps()
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:  # a timing harness: Lightning's warnings about its missing val loop are noise
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = L.Trainer(
                    accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                    max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0, callbacks=[stamps],
                    default_root_dir=tmp)
                trainer.fit(make_task(), DataLoader(data, batch_size=b))
        finally:
            quiet.setLevel(level)
        return [t1 - t0 for t0, t1 in zip(stamps.t, stamps.t[1:])][warm:]

    def plain_steps() -> list[float]:
        import torch.nn.functional as F

        task = make_task().to(device)
        model = task.backbone
        optim = build_optimizers(model, optim_cfg, 1, warm + steps, b)
        opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
        stamps = []
        model.train()
        for xb, yb in DataLoader(data, batch_size=b):
            stamps.append(time.perf_counter())
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb,
                                   label_smoothing=optim_cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])][warm:]

    console.print(f"[bold]profile[/] ClassificationTask step under Lightning vs a plain loop "
                  f"({name}, dynamic, B={b} at {size}x{size})")
    lightning_t, plain_t, ratios, gaps = [], [], [], []
    try:
        # A B A B ...: each pair is timed back to back and compared within itself. This
        # machine's speed drifts by up to 1.5x over tens of seconds (one run's steps went from
        # 340 to 550 ms), which a ratio of two pooled medians mistook for overhead (1.05-1.16x
        # in three runs of the same code).
        for _ in range(2 if args.quick else LIGHTNING_PAIRS):
            lit, plain = lightning_steps(), plain_steps()
            lightning_t += lit
            plain_t += plain
            ratios.append(statistics.median(lit) / statistics.median(plain))
            gaps.append(statistics.median(lit) - statistics.median(plain))
    except Exception as err:  # the task is another module's: report, do not crash the profile
        return {"skipped": f"ClassificationTask step failed: {type(err).__name__}: {err}"}
    return {"backbone": name, "size": size, "batch": b, "steps": len(lightning_t),
            "lightning_step_s": statistics.median(lightning_t),
            "plain_step_s": statistics.median(plain_t),
            "overhead_ratio": statistics.median(ratios), "pair_ratios": ratios,
            "overhead_ms_per_step": statistics.median(gaps) * 1e3}


# ---------------------------------------------------------------- targets and output

def _targets(result: dict) -> list[dict]:
    out = []

    def add(key, value, threshold, met, detail=""):
        out.append({"target": key, "text": TARGETS_TEXT[key], "value": value,
                    "threshold": threshold, "met": met, "detail": detail})

    shapes = result.get("shapes") or []
    for key, row_name, field, limit, lengths in (
            ("sa_train_time", "sa", "train_time", 0.8, (1024, 4096)),
            ("sa_train_memory", "sa", "train_mem", 0.7, (1024, 4096)),
            ("dynamic_train_time", "dynamic", "train_time", 1.3, None)):
        values = []
        for s in shapes:
            if lengths and s["tokens"] not in lengths:
                continue
            row = next((r for r in s["rows"] if r["name"] == row_name), None)
            ratio = (row or {}).get("ratio_to_botnet") or {}
            if field in ratio:
                # FLOPs as counted (our q/k carry one-hot relative keys: more than the math)
                bot = next((r for r in s["rows"] if r["name"] == "BottleneckAttn"), None)
                flops = bot_sys = None
                if bot and (row.get("train") or {}).get("flops") and bot.get("train"):
                    flops = row["train"]["flops"] / bot["train"]["flops"]
                    bot_sys = bot["train"].get("sys_s")  # page faults: why its median > min
                values.append((s["tokens"], ratio[field], ratio.get(field + "_min"), flops,
                               bot_sys))
        if values:
            worst = max(v[1] for v in values)
            add(key, worst, limit, worst <= limit, ", ".join(
                f"L={n}: {v:.2f}x" + (f" (fastest repeats: {m:.2f}x)" if m else "")
                + (f" [{f:.2f}x its counted FLOPs; BoT sys CPU {1e3 * bs:.0f} ms/step]"
                   if f and key.startswith("dynamic") and bs is not None else "")
                for n, v, m, f, bs in values))
        else:
            add(key, None, limit, None, "not measured")
    core = None
    for s in shapes:
        if s["tokens"] == 4096:
            core = next((r for r in s["rows"] if r["kind"] == "core"), None)
    if core and (core.get("pct_of_ceiling") or {}).get("infer_matmul") is not None:
        pct = core["pct_of_ceiling"]["infer_matmul"]
        detail = (f"{core.get('path', '?')} path, {core['infer']['gflops_per_s']:.0f} GFLOP/s "
                  f"(FlopCounterMode FLOPs)")
        if core.get("sdpa_width"):
            detail += (f" (zero padding of v included); without the padding "
                       f"{core['pct_useful_of_matmul_infer']:.0f}%")
        add("core_vs_matmul", pct, 50.0, pct >= 50.0, detail)
    else:
        add("core_vs_matmul", None, 50.0, None, "not measured (needs L = 4096)")
    scan = [e for e in result.get("window") or [] if e["module"] == "WindowedBinaryTerm"]
    if len(scan) >= 2:
        details, worst = [], 0.0
        for mode in ("infer", "train"):
            per = [e[mode]["us_per_token"] for e in scan]
            spread = max(per) / min(per)
            worst = max(worst, spread)
            fastest = [e[mode]["time_min_s"] / (e["batch"] * e["tokens"]) for e in scan]
            details.append(f"{mode} {spread:.2f}x (" + ", ".join(
                f"L={e['tokens']}: {e[mode]['us_per_token']:.1f}us" for e in scan)
                + f"; fastest repeats {max(fastest) / min(fastest):.2f}x)")
        add("window_flat", worst, 1.3, worst <= 1.3, "; ".join(details))
    else:
        add("window_flat", None, 1.3, None, "not measured")
    net = result.get("network")
    if net and "dynamic_over_conv_images_per_s" in net:
        v = net["dynamic_over_conv_images_per_s"]
        add("network_train", v, 0.6, v >= 0.6, f"{net['backbone']} at {net['size']}, "
            f"B={net['batch']}")
    else:
        add("network_train", None, 0.6, None, "not measured")
    lit = result.get("lightning")
    if lit and "overhead_ratio" in lit:
        v = lit["overhead_ratio"]
        add("lightning_step", v, 1.10, v <= 1.10, f"{lit['backbone']}, B={lit['batch']}; "
            "median of back-to-back pairs " + ", ".join(f"{r:.2f}x" for r in lit["pair_ratios"]))
    else:
        add("lightning_step", None, 1.10, None, "not measured")
    return out


def _fmt(value, spec=".1f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _print_tables(result: dict, console) -> None:
    from rich.table import Table

    for s in result.get("shapes") or []:
        table = Table(title=s["label"], title_justify="left")
        for col in ("row", "infer ms", "train ms", "train img/s", "train MiB", "infer GFLOP/s",
                    "xBoT infer", "xBoT train", "xBoT mem", "%SDPA", "%matmul"):
            table.add_column(col, justify="left" if col == "row" else "right")
        def group(r):  # sections: strategies, windowed strategies, peers, core, ceilings
            return ("w" if "·w" in r["name"] else "") + r["kind"].split(":")[0]

        rows = s["rows"]
        for i, r in enumerate(rows):
            inf, tr = r.get("infer") or {}, r.get("train") or {}
            ratio, pct = r.get("ratio_to_botnet") or {}, r.get("pct_of_ceiling") or {}
            mem = tr.get("peak_mem_bytes")
            table.add_row(
                r["name"], _fmt(inf.get("time_s") and inf["time_s"] * 1e3),
                _fmt(tr.get("time_s") and tr["time_s"] * 1e3), _fmt(tr.get("images_per_s")),
                _fmt(mem and mem / 2**20, ".0f"), _fmt(inf.get("gflops_per_s")),
                _fmt(ratio.get("infer_time"), ".2f", "x"),
                _fmt(ratio.get("train_time"), ".2f", "x"),
                _fmt(ratio.get("train_mem"), ".2f", "x"), _fmt(pct.get("infer_sdpa"), ".0f", "%"),
                _fmt(pct.get("infer_matmul"), ".0f", "%"),
                end_section=i + 1 < len(rows) and group(rows[i + 1]) != group(r))
        console.print(table)
    if result.get("window"):
        table = Table(title="time per token over growing maps (B x L held constant)",
                      title_justify="left")
        for col in ("module", "L", "B", "infer us/token", "train us/token", "infer cpu us/token",
                    "train cpu us/token", "train sys us/token", "peak MiB train"):
            table.add_column(col, justify="left" if col == "module" else "right")
        for e in result["window"]:
            table.add_row(e["module"], str(e["tokens"]), str(e["batch"]), _fmt(e["infer"]["us_per_token"], ".2f"),
                          _fmt(e["train"]["us_per_token"], ".2f"),
                          _fmt(e["infer"]["cpu_us_per_token"], ".2f"),
                          _fmt(e["train"]["cpu_us_per_token"], ".2f"),
                          _fmt(e["train"]["sys_us_per_token"], ".2f"),
                          _fmt(e["train"]["peak_mem_bytes"] and
                               e["train"]["peak_mem_bytes"] / 2**20, ".0f"))
        console.print(table)
    net = result.get("network")
    if net:
        table = Table(title=f"whole network: {net['backbone']} training step, B={net['batch']} "
                      f"at {net['size']}x{net['size']}"
                      f"{', channels last' if net.get('channels_last') else ''}",
                      title_justify="left")
        for col in ("model", "step ms", "images/s", "peak MiB"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in net["rows"]:
            m = r["train"]
            table.add_row(r["name"], _fmt(m["time_s"] * 1e3), _fmt(m["images_per_s"]),
                          _fmt(m["peak_mem_bytes"] and m["peak_mem_bytes"] / 2**20, ".0f"))
        console.print(table)
    lit = result.get("lightning")
    if lit:
        if "skipped" in lit:
            console.print(f"[yellow]Lightning overhead: skipped[/] ({lit['skipped']})")
        else:
            console.print(f"Lightning overhead ({lit['backbone']}, B={lit['batch']}): "
                          f"ClassificationTask step {lit['lightning_step_s'] * 1e3:.1f} ms vs "
                          f"plain loop {lit['plain_step_s'] * 1e3:.1f} ms = "
                          f"{lit['overhead_ratio']:.2f}x "
                          f"({lit['overhead_ms_per_step']:+.1f} ms/step; median of "
                          f"{len(lit['pair_ratios'])} back-to-back pairs, "
                          f"{min(lit['pair_ratios']):.2f}x-{max(lit['pair_ratios']):.2f}x; "
                          f"{lit['steps']} steps each side)")
    table = Table(title="targets", title_justify="left")
    for col in ("target", "value", "met", "detail"):
        table.add_column(col)
    for t in result["targets"]:
        met = {True: "[green]yes", False: "[red]no", None: "[dim]n/a"}[t["met"]]
        table.add_row(t["text"], _fmt(t["value"], ".2f"), met, t["detail"])
    console.print(table)
    for note in result["meta"]["notes"]:
        console.print(f"[dim]note: {note}")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    # tables are wide: when the output is a file or a pipe, do not squeeze them to 80 columns
    console = Console() if Console().is_terminal else Console(width=140)
    import torch

    from lesa import fused_cpu  # and lesa: fail early, before timm or lightning load

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    device_defaults(args)
    if args.quick:
        args.repeats, args.warmup, args.min_time = min(args.repeats, 1), 0, 0.0
        args.window, args.window_sides, args.window_tokens = 4, "8,16", 256
        args.matmul_size = min(args.matmul_size, 256)
    shapes = [_parse_shape(s) for s in (args.shape or (QUICK_SHAPES if args.quick
                                                         else DEFAULT_SHAPES))]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memory = PeakMemory(torch, device)
    notes = []
    if memory.method is None:
        notes.append("peak memory unavailable here (needs Linux /proc/self/clear_refs)")
    try:
        from types import SimpleNamespace

        from timm.layers.bottleneck_attn import BottleneckAttn
        from timm.layers.halo_attn import HaloAttn

        timm_layers = SimpleNamespace(BottleneckAttn=BottleneckAttn, HaloAttn=HaloAttn)
    except ImportError:
        timm_layers = None
        notes.append("timm is not installed: BottleneckAttn and HaloAttn rows skipped "
                     "(pip install 'timm>=1.0' or pip install -e .[dev])")
        console.print(f"[yellow]{notes[-1]}")
    result = {"meta": {
        "torch": torch.__version__, "device": str(device), "dtype": args.dtype,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "machine": platform.machine(), "repeats": args.repeats, "warmup": args.warmup,
        "heads": args.heads, "window": args.window, "quick": bool(args.quick),
        "matmul_size": args.matmul_size, "network_batch": args.network_batch,
        "min_time_s": args.min_time,
        "time": "median wall time of the repeats (round robin over rows, after warm-up); "
                "time_min_s is the fastest repeat",
        "memory": memory.method, "flops": "torch.utils.flop_counter.FlopCounterMode",
        "argv": sys.argv[1:], "notes": notes,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "timm": getattr(sys.modules.get("timm"), "__version__", None),
        "fused_cpu_attention": fused_cpu.status() if device.type == "cpu" else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    if device.type == "cpu":
        console.print(f"[dim]fused CPU attention kernel (lesa/fused_cpu.py): "
                      f"{result['meta']['fused_cpu_attention']}")
    if device.type == "cuda":
        result["meta"]["gpu"] = torch.cuda.get_device_name(device)
    if "table" in parts:
        result["shapes"] = _table_part(torch, args, shapes, device, dtype, sync, memory,
                                       timm_layers, console, notes)
    if "window" in parts:
        result["window"] = _window_part(torch, args, shapes[0][1], device, dtype, sync, memory,
                                        timm_layers, console)
    if "network" in parts:
        result["network"] = _network_part(torch, args, device, dtype, sync, memory, console)
    if "lightning" in parts:
        result["lightning"] = _lightning_part(torch, args, device, console)
    result["targets"] = _targets(result)
    result["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _print_tables(result, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0
