"""The profile's attention parts.

"table": per shape B,C,H,W one row per module, timed together,

    strategies  every entry of lesa.FUSIONS (`conv` is the plain 3x3 conv + BN peer), and `sa`
                and `dynamic` with the windowed binary term (lesa/window.py, --window)
    peers       timm.layers BottleneckAttn (BoTNet: global attention with 2-D relative logits)
                and HaloAttn (blocked local attention; same block and halo as --window)
    core        BinaryTerm.attend alone on random q, k, v: the device's default path, the
                chunked path's torch ops in inference, the chunked path with recompute=True,
                and the fused SDPA path (the default off CPU)
    ceilings    scaled_dot_product_attention without a mask on the q/k/v shapes the fused core
                path feeds it, and a square matmul (--matmul-size)

each shown as a ratio to BottleneckAttn (time and peak memory) and as a percent of the two
ceilings' GFLOP/s. BottleneckAttn builds B x heads x L x L tensors; where that would not fit in
--mem-budget, the whole shape runs at a smaller batch (all rows alike) and says so.

"window": the windowed binary term's time per token over growing maps, at a constant number
of tokens per call.
"""
from __future__ import annotations

from bench.profile.measure import Row, mem_available, run_rows


def module_row(torch, name, kind, module, x, device, dtype):
    """Inference: forward in eval mode without grad. Training: forward + backward in train
    mode, parameter grads reset to None before each call, the input requiring grad."""
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


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _build_rows(torch, shape, heads, window, device, dtype, timm_layers, notes, fusions=None):
    """The rows of one shape: every strategy (or those of `fusions`, --fusion), the windowed
    sa and dynamic, timm's peers and the ceilings."""
    import torch.nn.functional as F

    import lesa
    from lesa.binary import BinaryTerm

    b, c, h, w = shape
    max_map_size = max(64, h, w)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=gen).to(device=device, dtype=dtype)
    rows = []
    for fusion in fusions or lesa.FUSIONS:
        torch.manual_seed(0)
        module = lesa.LESA2d(c, heads=heads, fusion=fusion, max_map_size=max_map_size)
        lesa.record_shares(module, False)  # as training loops do: sa takes its plain path
        rows.append(module_row(torch, fusion, "strategy", module, x, device, dtype))
        if fusion == "conv":
            rows[-1].result["note"] = "3x3 conv + BN: the conv peer"
    for fusion in [f for f in ("sa", "dynamic") if not fusions or f in fusions]:
        torch.manual_seed(0)
        module = lesa.LESA2d(c, heads=heads, fusion=fusion, max_map_size=max_map_size,
                             window=window)
        lesa.record_shares(module, False)
        rows.append(module_row(torch, f"{fusion}·w{window}", "strategy", module, x, device,
                               dtype))
    if timm_layers is not None:
        torch.manual_seed(0)
        rows.append(module_row(torch, "BottleneckAttn", "peer", timm_layers.BottleneckAttn(
            c, c, feat_size=(h, w), num_heads=heads), x, device, dtype))
        if h % window == 0 and w % window == 0:
            torch.manual_seed(0)
            rows.append(module_row(torch, "HaloAttn", "peer", timm_layers.HaloAttn(
                c, c, feat_size=(h, w), num_heads=heads, block_size=window,
                halo_size=window // 2), x, device, dtype))
        else:
            notes.append(f"HaloAttn skipped at {h}x{w}: not a multiple of its block {window}")
    # the attention core (chunked, chunked with recompute, fused SDPA) and the
    # SDPA ceiling on the very shapes the fused path feeds SDPA
    d, dv, length = BinaryTerm(c, heads, max_map_size).qk_dim, c // heads, h * w
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
    default_is_sdpa = BinaryTerm(c, heads, max_map_size).uses_sdpa(q)
    for name, kind, kernel, recompute, train in cores:
        if kind == "core:sdpa" and default_is_sdpa:
            continue  # off CPU the default row already is the fused path
        term = BinaryTerm(c, heads, max_map_size).to(device=device, dtype=dtype)
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


def table_part(torch, args, shapes, device, dtype, sync, memory, timm_layers, console, notes):
    out = []
    itemsize = torch.tensor([], dtype=dtype).element_size()
    budget = (args.mem_budget * 2**30 if args.mem_budget
              else 0.3 * (mem_available() or 8 * 2**30))
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
                           timm_layers, notes, getattr(args, "fusion", None))
        rows.append(_matmul_row(torch, args.matmul_size, device, dtype))
        run_rows(torch, rows, args.repeats, args.warmup, sync, memory,
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


def window_part(torch, args, c, device, dtype, sync, memory, timm_layers, console):
    from lesa.window import WindowedBinaryTerm

    sides = [int(s) for s in args.window_sides.split(",")]
    rows, meta = [], []
    for side in sides:
        b = max(1, args.window_tokens // (side * side))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, c, side, side, generator=gen).to(device=device, dtype=dtype)
        torch.manual_seed(0)
        term = WindowedBinaryTerm(c, args.heads, max_map_size=2 * args.window, window=args.window)
        rows.append(module_row(torch, f"WindowedBinaryTerm {side}x{side}", "window", term, x,
                               device, dtype))
        meta.append((side, b, "WindowedBinaryTerm"))
        if timm_layers is not None and side % args.window == 0:
            torch.manual_seed(0)
            halo = timm_layers.HaloAttn(c, c, feat_size=(side, side), num_heads=args.heads,
                                        block_size=args.window, halo_size=args.window // 2)
            rows.append(module_row(torch, f"HaloAttn {side}x{side}", "peer", halo, x, device,
                                   dtype))
            meta.append((side, b, "HaloAttn"))
    console.print(f"[bold]profile[/] windowed binary term, {args.window_tokens} tokens per call "
                  f"(B x H x W), C={c}, window {args.window}, sides {sides}")
    run_rows(torch, rows, args.repeats, args.warmup, sync, memory,
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
