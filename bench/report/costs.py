"""`lesa-bench models`: parameters, FLOPs and output shape of a backbone for every strategy."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def model_costs(backbone: str, size: int, classes: int, output_stride: int = 32) -> list[dict]:
    import torch

    import lesa
    from bench.run.callbacks import forward_flops

    rows = []
    x = torch.zeros(1, 3, size, size)
    for fusion in lesa.FUSIONS:
        model = lesa.build_backbone(backbone, fusion=fusion, num_classes=classes,
                                    output_stride=output_stride, max_map_size=max(64, size // 8))
        lesa.record_shares(model, False)
        flops = forward_flops(model, x)
        with torch.no_grad():
            model.eval()
            features = model.forward_features(x)
            out = model(x)
        rows.append({
            "fusion": fusion,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": flops / 1e9,
            "attention_modules": sum(1 for _ in lesa.block._fusions(model)),
            "stage4_shape": list(features["layer4"].shape),
            "output_shape": list(out.shape),
        })
    return rows


def print_models(backbone: str, size: int, classes: int, output_stride: int, console: Console,
                 fmt: str | None = None) -> int:
    rows = model_costs(backbone, size, classes, output_stride)
    title = f"{backbone} at {size}x{size}, {classes} classes, output stride {output_stride}"
    if fmt == "md":
        print(f"{title}\n")
        print("| fusion | params | GFLOPs | LESA modules | stage-4 map | output |")
        print("|---|---:|---:|---:|---|---|")
        for r in rows:
            print(f"| {r['fusion']} | {r['params']:,} | {r['gflops']:.2f} | "
                  f"{r['attention_modules']} | {tuple(r['stage4_shape'])} | "
                  f"{tuple(r['output_shape'])} |")
        return 0
    table = Table(title=title)
    for col in ("fusion", "params", "GFLOPs", "LESA modules", "stage-4 map", "output"):
        table.add_column(col, justify="left" if col in ("fusion",) else "right")
    for r in rows:
        table.add_row(r["fusion"], f"{r['params']:,}", f"{r['gflops']:.2f}",
                      str(r["attention_modules"]), str(tuple(r["stage4_shape"])),
                      str(tuple(r["output_shape"])))
    console.print(table)
    return 0
