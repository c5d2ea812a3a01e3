"""`lesa-bench profile`: speed, memory and FLOPs of every fusion strategy next to its peers.

The parts, each timed by measure.py and also written to --json:

    table       attention.py: per shape, every strategy, its peers (BoTNet, HaloAttn), the
                attention core alone and two ceilings (SDPA, matmul), inference and training
    window      attention.py: the windowed binary term's time per token over growing maps
    network     network.py: LESA-ResNet-26 (dynamic) against the conv ResNet-26, training
    lightning   network.py: a ClassificationTask step under Lightning against a plain loop

A targets table closes the report (targets.py). CPU timings include the allocator (glibc hands
large buffers back to the OS after each call), so the JSON records any MALLOC_* variables.

torch, timm and lightning are imported inside run(): `lesa-bench --help` stays fast. timm is a
dev/bench dependency; without it the peer rows are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.profile.attention import table_part, window_part
from bench.profile.measure import PeakMemory
from bench.profile.network import lightning_part, network_part
from bench.profile.targets import TARGETS_TEXT, check_targets, print_tables

__all__ = ["PARTS", "TARGETS_TEXT", "add_arguments", "device_defaults", "run"]

DEFAULT_SHAPES = ("8,256,16,16", "8,256,32,32", "8,256,64,64")
QUICK_SHAPES = ("2,32,8,8",)
PARTS = ("table", "window", "network", "lightning")


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


def device_defaults(args) -> None:
    """Fill the sizes left unset with the device's defaults (see --network-batch and
    --matmul-size): a GPU needs larger problems before it measures more than launches."""
    on_gpu = args.device == "cuda"
    if args.network_batch is None:
        args.network_batch = 64 if on_gpu else 8
    if args.matmul_size is None:
        args.matmul_size = 8192 if on_gpu else 2048


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        b, c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--shape wants B,C,H,W (four integers), not {text!r}") from None
    return b, c, h, w


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
        console.print(f"[dim]fused CPU attention kernel (lesa/kernels/fused_cpu.py): "
                      f"{result['meta']['fused_cpu_attention']}")
    if device.type == "cuda":
        result["meta"]["gpu"] = torch.cuda.get_device_name(device)
    if "table" in parts:
        result["shapes"] = table_part(torch, args, shapes, device, dtype, sync, memory,
                                      timm_layers, console, notes)
    if "window" in parts:
        result["window"] = window_part(torch, args, shapes[0][1], device, dtype, sync, memory,
                                       timm_layers, console)
    if "network" in parts:
        result["network"] = network_part(torch, args, device, dtype, sync, memory, console)
    if "lightning" in parts:
        result["lightning"] = lightning_part(torch, args, device, console)
    result["targets"] = check_targets(result)
    result["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print_tables(result, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0
