"""`lesa-bench models`: parameters, FLOPs and output shape of a backbone for every strategy, and
the conv baseline's width that matches each strategy's parameters and FLOPs (`model.width`), so
that conv, sa and LESA can be compared at equal size."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from bench.config import ConfigError

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


def attention_maps(net, forward) -> list[tuple[int, int]]:
    """(height, width) of the map each attention module of `net` sees while `forward()` runs."""
    import lesa

    maps: list[tuple[int, int]] = []
    hooks = [module.register_forward_pre_hook(
                 lambda module, args: maps.append(tuple(args[0].shape[-2:])))
             for _, module in lesa.attention_modules(net)]
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def table_reach(backbone: str, size: int, classes: int, output_stride: int, **options) -> int:
    """The default max_map_size: 64, or the largest map an attention stage sees at `size`."""
    import torch

    import lesa

    with torch.device("meta"):
        net = lesa.build_backbone(backbone, fusion="sa", num_classes=classes,
                                  output_stride=output_stride,
                                  **{**options, "max_map_size": size})
        lesa.record_shares(net, False)
        with torch.no_grad():
            try:
                maps = attention_maps(net, lambda: net(torch.empty(1, 3, size, size)))
            except RuntimeError:  # a tensor past 2^63 bytes: the maps seen so far are the largest
                maps = _seen_maps(net, size)
    return max([64] + [max(h, w) for h, w in maps])


def _seen_maps(net, size: int) -> list[tuple[int, int]]:
    """The first attention module's map (a ResNet's maps only shrink with depth)."""
    import torch

    import lesa

    class Enough(Exception):
        pass

    def stop(module, args):
        raise Enough(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(stop) for _, m in lesa.attention_modules(net)]
    try:
        net(torch.empty(1, 3, size, size))
    except Enough as first:
        return [first.args[0]]
    finally:
        for hook in hooks:
            hook.remove()
    return []


def _forward_floor(backbone: str, fusion: str, size: int, classes: int, output_stride: int,
                   **options) -> int:
    """Bytes of the input plus the largest tensor of one forward at size x size (meta device)."""
    import torch

    import lesa
    from bench.costs.memory import largest_tensor

    with torch.device("meta"):
        model = lesa.build_backbone(backbone, fusion=fusion, num_classes=classes,
                                    output_stride=output_stride, **options)
        lesa.record_shares(model, False)
        model.eval()
        x = torch.empty(1, 3, size, size)
        with torch.no_grad():
            try:
                return x.untyped_storage().nbytes() + largest_tensor(lambda: model(x))
            except RuntimeError as err:  # "Storage size calculation overflowed": past 2^63 B
                if "overflow" not in str(err):
                    raise
                return 2**63


def check_size(backbone: str, size: int, classes: int, output_stride: int, **options) -> None:
    """ConfigError naming --size when one forward at size x size cannot fit in the memory this
    machine has now: the input plus the largest tensor any strategy's forward makes (measured
    on the meta device) is a floor under the forward's peak. It names the largest size (a
    multiple of 32) whose floor fits."""
    import lesa
    from bench.costs.memory import available_memory, gigabytes

    room = available_memory("cpu")
    if room is None:
        return
    _, free, _, where = room
    floors = {f: _forward_floor(backbone, f, size, classes, output_stride, **options)
              for f in lesa.FUSIONS}
    worst = max(floors, key=floors.get)
    if floors[worst] <= free:
        return
    low, high = 0, size // 32  # in steps of 32 px: the floor of low * 32 fits, high's not
    while high - low > 1:
        mid = (low + high) // 2
        reach = {**options, "max_map_size": table_reach(backbone, mid * 32, classes,
                                                        output_stride, **options)}
        if _forward_floor(backbone, worst, mid * 32, classes, output_stride, **reach) <= free:
            low = mid
        else:
            high = mid
    advice = f"at most about {low * 32}" if low else "a smaller one"
    raise ConfigError(f"--size {size}: one forward at {size}x{size} holds at least "
                      f"{gigabytes(floors[worst])} (the input and the largest tensor of "
                      f"{worst}'s forward), and {gigabytes(free)} is {where}; give --size "
                      f"{advice}")


def model_costs(backbone: str, size: int, classes: int, output_stride: int = 32,
                match: bool = True, fusions: list[str] | None = None, **options) -> list[dict]:
    """One row per strategy (`fusions`, default every one lesa.FUSIONS has); `options` go to
    build_backbone (e.g. release=True, width=0.5). With `match`, each row also names the conv
    widths whose parameters and FLOPs match it."""
    import torch

    import lesa
    from bench.costs.flops import forward_flops

    rows = []
    if "max_map_size" not in options:
        options["max_map_size"] = table_reach(backbone, size, classes, output_stride, **options)
    check_size(backbone, size, classes, output_stride, **options)
    x = torch.zeros(1, 3, size, size)
    cache: dict = {}
    for fusion in fusions or lesa.FUSIONS:
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


# how torch words a failed allocation (as bench/run/runner.py's OUT_OF_MEMORY)
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def print_models(backbone: str, size: int, classes: int, output_stride: int, console: Console,
                 fmt: str | None = None, fusions: list[str] | None = None, **options) -> int:
    try:
        rows = model_costs(backbone, size, classes, output_stride, fusions=fusions, **options)
    except (MemoryError, RuntimeError) as error:  # past check_size: the allocator said no
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, RuntimeError) and not any(t in first for t in OUT_OF_MEMORY):
            raise
        raise ConfigError(f"--size {size}: out of memory at {size}x{size} ({first}); give a "
                          f"smaller --size") from None
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--output-stride", type=int, default=32, choices=[16, 32])
    p.add_argument("--format", choices=["md"], help="print a Markdown table")
    p.add_argument("--width", type=float, default=1.0,
                   help="width multiplier of the bottlenecks (model.width), default 1.0")
    p.add_argument("--release", choices=["classification", "detection"],
                   help="the released LESA's choices (model.release; docs/library.md)")
    p.add_argument("--max-size", type=int, metavar="N",
                   help="positional tables' reach, as model.max_size (14: the ImageNet release)")


def run(args) -> int:
    """`lesa-bench models`: checks the options, prints the table."""
    from bench.config import backbone_names
    from bench.config import check_flags
    from lesa.names import did_you_mean

    check_flags(args, size="a positive integer (the input's height and width in pixels)",
                classes="a positive integer (the classifier's outputs)",
                width="a positive number (the width multiplier)",
                max_size="a positive integer (the tables' reach in positions per side)")
    if args.backbone not in backbone_names():
        raise ConfigError(f"--backbone {args.backbone}: not a backbone"
                          f"{did_you_mean(args.backbone, backbone_names())}; choose from "
                          f"{', '.join(backbone_names())}")
    options = {"width": args.width} if args.width != 1.0 else {}
    if args.release:
        options["release"] = args.release
    if args.max_size:
        options["max_map_size"] = args.max_size
    try:
        return print_models(args.backbone, args.size, args.classes, args.output_stride,
                            getattr(args, "console", None) or Console(), args.format,
                            fusions=args.fusion or None, **options)
    except ConfigError:  # --size past what memory holds (check_size)
        raise
    except ValueError as error:  # lesa's refusal of a size/option combination, as typed
        raise ConfigError(f"models: {error}") from None
