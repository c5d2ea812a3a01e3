"""`lesa-bench models`: parameters, FLOPs and output shape of a backbone for every strategy, and
the conv baseline's width that matches each strategy's parameters and FLOPs (`model.width`), so
that conv, sa and LESA can be compared at equal size."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

# the conv widths searched (model.width), to 0.01
WIDTH_RANGE = (0.25, 4.0)


def _conv_costs(backbone: str, size: int, classes: int, output_stride: int, width: float,
                flops: bool, cache: dict) -> int:
    """Parameters or forward FLOPs of the conv baseline at `width`, built on the meta device
    (shapes only: no memory, no arithmetic)."""
    import torch

    import lesa
    from bench.costs.flops import forward_flops

    key = (round(width, 2), flops)
    if key not in cache:
        with torch.device("meta"):
            model = lesa.build_backbone(backbone, fusion="conv", num_classes=classes,
                                        output_stride=output_stride, width=key[0])
            cache[key] = (forward_flops(model, torch.zeros(1, 3, size, size)) if flops
                          else sum(p.numel() for p in model.parameters()))
    return cache[key]


def matched_width(target: float, measure) -> float:
    """The width in WIDTH_RANGE (to 0.01) whose `measure(width)` (non-decreasing in width) is
    closest to `target`, by bisection."""
    lo, hi = round(WIDTH_RANGE[0] * 100), round(WIDTH_RANGE[1] * 100)
    if measure(hi / 100) < target:
        return hi / 100
    while hi - lo > 1:  # invariant: measure(hi) >= target, or hi is the range's low end
        mid = (lo + hi) // 2
        if measure(mid / 100) >= target:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda w: abs(measure(w / 100) - target))
    return best / 100


def model_costs(backbone: str, size: int, classes: int, output_stride: int = 32,
                match: bool = True, **options) -> list[dict]:
    """One row per strategy; `options` go to build_backbone (e.g. release=True, width=0.5).
    With `match`, each row also names the conv widths whose parameters and FLOPs match it."""
    import torch

    import lesa
    from bench.costs.flops import forward_flops

    rows = []
    x = torch.zeros(1, 3, size, size)
    options.setdefault("max_map_size", max(64, size // 8))
    cache: dict = {}
    for fusion in lesa.FUSIONS:
        model = lesa.build_backbone(backbone, fusion=fusion, num_classes=classes,
                                    output_stride=output_stride, **options)
        lesa.record_shares(model, False)
        flops = forward_flops(model, x)
        with torch.no_grad():
            model.eval()
            features = model.forward_features(x)
            out = model(x)
        row = {
            "fusion": fusion,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": flops / 1e9,
            "attention_modules": sum(1 for _ in lesa.attention_modules(model)),
            "stage4_shape": list(features["layer4"].shape),
            "output_shape": list(out.shape),
        }
        if match:
            for kind, target in (("params", row["params"]), ("flops", flops)):
                def measure(w, kind=kind):
                    return _conv_costs(backbone, size, classes, output_stride, w,
                                       kind == "flops", cache)
                row[f"conv_width_{kind}"] = matched_width(target, measure)
        rows.append(row)
    return rows


def _matched(row: dict, kind: str) -> str:
    return f"{row[f'conv_width_{kind}']:.2f}" if f"conv_width_{kind}" in row else "-"


def print_models(backbone: str, size: int, classes: int, output_stride: int, console: Console,
                 fmt: str | None = None, **options) -> int:
    rows = model_costs(backbone, size, classes, output_stride, **options)
    title = f"{backbone} at {size}x{size}, {classes} classes, output stride {output_stride}"
    extra = ", ".join(f"{k}={v}" for k, v in options.items())
    title += f" ({extra})" if extra else ""
    note = ("conv width = params / FLOPs: the `model.width` at which the conv baseline has this "
            "row's parameters / forward FLOPs (nearest 0.01)")
    columns = ("fusion", "params", "GFLOPs", "LESA modules", "stage-4 map", "output",
               "conv width = params", "conv width = FLOPs")
    cells = [(r["fusion"], f"{r['params']:,}", f"{r['gflops']:.2f}",
              str(r["attention_modules"]), str(tuple(r["stage4_shape"])),
              str(tuple(r["output_shape"])), _matched(r, "params"), _matched(r, "flops"))
             for r in rows]
    if fmt == "md":
        print(f"{title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|---|---:|---:|---:|---|---|---:|---:|")
        for c in cells:
            print("| " + " | ".join(c) + " |")
        print(f"\n{note}")
        return 0
    table = Table(title=title, caption=note)
    for col in columns:
        table.add_column(col, justify="left" if col in ("fusion",) else "right")
    for c in cells:
        table.add_row(*c)
    console.print(table)
    return 0
