"""The targets the profile checks, and the report printed in the terminal (the JSON has the
same numbers)."""
from __future__ import annotations

TARGETS_TEXT = {
    "sa_train_time": "sa fwd+bwd time <= 0.8x BottleneckAttn (L = 1024, 4096)",
    "sa_train_memory": "sa fwd+bwd peak memory <= 0.7x BottleneckAttn (L = 1024, 4096)",
    "dynamic_train_time": "dynamic fwd+bwd time <= 1.3x BottleneckAttn (every shape)",
    "core_vs_matmul": "attention core inference GFLOP/s >= 50% of matmul (L = 4096)",
    "window_flat": "windowed binary term time per token flat within 1.3x (L 1024 -> 16384)",
    "network_train": "LESA-ResNet-26 training images/s >= 0.6x conv ResNet-26",
    "lightning_step": "ClassificationTask step under Lightning <= 1.10x a plain loop",
}


def check_targets(result: dict) -> list[dict]:
    """Each target with its measured value, threshold and whether it is met (None: not
    measured)."""
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


def print_tables(result: dict, console) -> None:
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
            table.add_row(e["module"], str(e["tokens"]), str(e["batch"]),
                          _fmt(e["infer"]["us_per_token"], ".2f"),
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
