"""The share analysis beside every shares table (issue 24; statistics.md, "Nulls for the
unary/binary shares"): is a strategy's unary share learned, or built in?

Per dataset, strategy and scope (every stage, every module of a stage with several, and "all"):
the trained share over seeds with its 95 % CI; the same model's share at initialisation
(metrics.json["shares_init"], bench/train/shares.py); the null (1/L for `sa` and `softmax`,
E[1/(1+sigmoid(z))] = 68.0 % for the dynamic gates); L x mean(a_ii); the trained - initial
difference paired by seed, Holm-adjusted over the table, with the verdict "learned" (CI
excludes 0 and p Holm < 0.05) or "built in"; and for the dynamic gates the quantiles of omega
and the gate's last BatchNorm gamma / beta. On detection, the unary share inside the
ground-truth boxes of each AI-TOD size bucket and on the background. No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from bench.report.records import RunRecord, cell_key, row_key, sort_rows, strategy_of
from bench.stats.compare import CellStats, Comparison, compare, describe, holm, verdict
from bench.store import RunState

LEARNED, BUILT_IN, NO_TEST = "learned", "built in", "no test (n < 2)"
DIAGONAL = ("sa", "softmax")           # unary share = mean a_ii: null 1/L
GATED = ("dynamic", "dynamic_frozen")  # unary share = mean 1/(1+omega): null 68.0 %
ALL = "all"


@lru_cache(maxsize=1)
def dynamic_null() -> float:
    """E[1 / (1 + sigmoid(z))], z ~ N(0, 1), in percent (68.0): the gate's share at gamma 1,
    beta 0, before any learning."""
    from scipy import integrate, special, stats

    f = lambda z: stats.norm.pdf(z) / (1 + special.expit(z))  # noqa: E731
    return 100 * integrate.quad(f, -math.inf, math.inf)[0]


@dataclass
class ShareRow:
    strategy: str
    scope: str                          # "all", a stage ("layer3") or a module ("layer3.1.conv2")
    trained: CellStats
    initial: CellStats
    null: float | None = None           # percent
    null_kind: str = ""
    self_ratio: CellStats | None = None  # L x mean(a_ii), trained
    self_ratio_init: float | None = None
    L: float | None = None
    comparison: Comparison | None = None  # trained - initial, paired by seed
    verdict: str = "-"
    gates: dict | None = None           # omega quantiles, gamma, beta: means over seeds


@dataclass
class BoxRow:
    strategy: str
    scope: str
    buckets: dict[str, tuple[CellStats, int]]  # bucket -> (share over seeds, n boxes)
    background: tuple[CellStats, int]          # (share over seeds, n positions)
    initial: dict[str, float | None] = field(default_factory=dict)  # bucket -> mean at init
    smallest_vs_background: Comparison | None = None


@dataclass
class ShareTables:
    rows: list[ShareRow]
    boxes: list[BoxRow]
    buckets: dict[str, list[float]]
    smallest: str | None = None  # the bucket compared with the background


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _value(shares: dict | None, scope: str, kind: str = "share"):
    """A run's unary share (kind "share") or geometry value for a scope."""
    if not shares:
        return None
    if kind == "share":
        if scope == ALL:
            return shares.get("unary")
        if "." in scope:
            return _get(shares, "per_module", scope, "unary")
        return _get(shares, "per_stage", scope)
    modules = _get(shares, "modules", "per_module") or {}
    if scope == ALL:
        values = [v.get(kind) for v in modules.values() if v.get(kind) is not None]
        return sum(values) / len(values) if values else None
    if "." in scope:
        return _get(modules, scope, kind)
    return _get(shares, "modules", "per_stage", scope, kind)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _gates(runs: list[dict], scope: str) -> dict | None:
    """Omega quantiles and gamma / beta over seeds: quantiles and means averaged, min of the
    minima, max of the maxima."""
    level = "per_module" if "." in scope else "per_stage"
    found = [_get(m, "gates", level, scope) for m in runs]
    found = [g for g in found if g]
    if not found:
        return None
    out = {}
    for key in ("omega_quantiles", "omega_channel_quantiles"):
        qs = [g.get(key) for g in found if g.get(key)]
        if qs:
            out[key] = {q: _mean(x[q] for x in qs) for q in qs[0]}
    for key in ("gamma", "beta"):
        s = [g.get(key) for g in found if g.get(key)]
        out[key] = ({"mean": _mean(x["mean"] for x in s), "min": min(x["min"] for x in s),
                     "max": max(x["max"] for x in s)} if s else None)
    return out


def _scopes(metrics: list[dict]) -> list[str]:
    stages, modules = {}, {}
    for m in metrics:
        for name in (_get(m, "shares", "per_module") or {}):
            stage = name.split(".")[0]
            modules.setdefault(stage, [])
            if name not in modules[stage]:
                modules[stage].append(name)
        for stage in (_get(m, "shares", "per_stage") or {}):
            stages[stage] = True
    out = [ALL]
    for stage in sorted(stages):
        out.append(stage)
        if len(modules.get(stage, [])) > 1:
            out += sorted(modules[stage])
    return out


def _by_row(records: list[RunRecord]) -> dict[str, dict]:
    """row -> {seed (or (split, seed) with splits as blocks): metrics} of the finished runs
    that recorded shares."""
    rows: dict[str, dict] = {}
    for r in records:
        if r.state != RunState.DONE or not r.metrics or not r.metrics.get("shares"):
            continue
        rows.setdefault(row_key(r.run), {})[cell_key(r.run)] = r.metrics
    return {name: rows[name] for name in sort_rows(rows)}


def share_rows(records: list[RunRecord], alpha: float = 0.05) -> list[ShareRow]:
    rows = []
    for name, by_seed in _by_row(records).items():
        strategy = strategy_of(name)
        metrics = list(by_seed.values())
        for scope in _scopes(metrics):
            trained = {s: _value(m.get("shares"), scope) for s, m in by_seed.items()}
            initial = {s: _value(m.get("shares_init"), scope) for s, m in by_seed.items()}
            row = ShareRow(name, scope, describe(trained), describe(initial))
            if strategy in DIAGONAL:
                row.null = _mean(_value(m.get("shares"), scope, "uniform") for m in metrics)
                row.null_kind = "1/L"
                row.L = _mean(_value(m.get("shares"), scope, "L") for m in metrics)
                row.self_ratio = describe({s: _value(m.get("shares"), scope, "self_ratio")
                                           for s, m in by_seed.items()})
                row.self_ratio_init = _mean(_value(m.get("shares_init"), scope, "self_ratio")
                                            for m in metrics)
            elif strategy in GATED:
                row.null, row.null_kind = dynamic_null(), "gate"
                if scope != ALL:
                    row.gates = _gates([m.get("shares") for m in metrics], scope)
            if row.trained.n and row.initial.n:
                row.comparison = compare(trained, initial, True, alpha, name=name,
                                         baseline="init")
            rows.append(row)
    # Holm over every trained - initial test of the table
    adjusted = holm([r.comparison.p if r.comparison else None for r in rows])
    for row, p in zip(rows, adjusted):
        c = row.comparison
        if c is None:
            continue
        c.p_adjusted = p
        resolved = verdict(c.diff, c.ci_low, c.ci_high, p, alpha) != "not resolved"
        row.verdict = NO_TEST if p is None else (LEARNED if resolved else BUILT_IN)
    return rows


def box_rows(records: list[RunRecord], alpha: float = 0.05) -> tuple[list[BoxRow], dict,
                                                                   str | None]:
    rows, buckets = [], {}
    for name, by_seed in _by_row(records).items():
        found = {s: _get(m, "shares", "boxes") for s, m in by_seed.items()}
        found = {s: b for s, b in found.items() if b}
        if not found:
            continue
        first = next(iter(found.values()))
        buckets = first.get("buckets") or buckets
        scopes = [ALL] + sorted(first.get("per_stage") or {})
        for scope in scopes:
            def cell(source, key, n_key):
                values, counts = {}, []
                for s, b in source.items():
                    entries = ([v.get(key) for v in (b.get("per_stage") or {}).values()]
                               if scope == ALL else [_get(b, "per_stage", scope, key)])
                    entries = [e for e in entries if e]
                    values[s] = _mean(e.get("share") for e in entries)
                    counts += [e.get(n_key) or 0 for e in entries]
                return values, max(counts, default=0)

            by_bucket, raw = {}, {}
            for bucket in buckets:
                values, n = cell(found, bucket, "n_boxes")
                raw[bucket] = values
                by_bucket[bucket] = (describe(values), n)
            bg_values, n_bg = cell(found, "background", "n_positions")
            init = {s: _get(by_seed[s], "shares_init", "boxes") for s in found}
            init = {s: b for s, b in init.items() if b}
            row = BoxRow(name, scope, by_bucket, (describe(bg_values), n_bg),
                         {k: _mean(cell(init, k, "n_boxes")[0].values())
                          for k in [*buckets, "background"]} if init else {})
            smallest = next((k for k in buckets if by_bucket[k][0].n), None)
            if smallest is not None:
                row.smallest_vs_background = compare(raw[smallest], bg_values, True, alpha,
                                                     name=smallest, baseline="background")
            rows.append(row)
    smallest = next(iter(buckets), None)
    return rows, buckets, smallest


def analyse_shares(records: list[RunRecord], alpha: float = 0.05) -> ShareTables | None:
    rows = share_rows(records, alpha)
    if not rows:
        return None
    boxes, buckets, smallest = box_rows(records, alpha)
    return ShareTables(rows, boxes, buckets, smallest)


# --- text ---------------------------------------------------------------------------------------
def _cell(s: CellStats | None, digits: int = 2) -> str:
    if s is None or s.mean is None:
        return "-"
    if s.ci_low is None:
        return f"{s.mean:.{digits}f} (n={s.n})"
    return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}] (n={s.n})"


def _diff(c: Comparison | None) -> str:
    if c is None or c.diff is None:
        return "-"
    if c.ci_low is None:
        return f"{c.diff:+.2f} (no CI)"
    return f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]"


def _num(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _gate_text(g: dict | None) -> tuple[str, str]:
    if not g:
        return "-", "-"
    q = g.get("omega_quantiles") or {}
    omega = " / ".join(_num(q.get(k), ".2f") for k in ("5", "25", "50", "75", "95")) if q else "-"
    parts = []
    for key in ("gamma", "beta"):
        s = g.get(key)
        parts.append(f"{key[0]} {s['mean']:.2f} [{s['min']:.2f}, {s['max']:.2f}]" if s
                     else f"{key[0]} frozen")
    return omega, "; ".join(parts)


SHARE_HEADER = ["strategy", "scope", "trained [95% CI] (n)", "init [95% CI] (n)",
                "trained - init [95% CI]", "p Holm", "verdict"]
NULL_HEADER = ["strategy", "scope", "null", "L", "L x mean a_ii: trained (init)",
               "omega q5/25/50/75/95", "gate BN gamma; beta: mean [min, max]"]


def share_table_cells(t: ShareTables) -> list[list[str]]:
    out = []
    for r in t.rows:
        p = r.comparison.p_adjusted if r.comparison else None
        out.append([r.strategy, r.scope, _cell(r.trained), _cell(r.initial),
                    _diff(r.comparison), "-" if p is None else f"{p:.3g}", r.verdict])
    return out


def null_table_cells(t: ShareTables) -> list[list[str]]:
    """The rows with a null: sa / softmax (1/L) and the dynamic gates."""
    out = []
    for r in t.rows:
        if r.null is None:
            continue
        ratio = "-"
        if r.self_ratio is not None and r.self_ratio.mean is not None:
            ratio = f"{r.self_ratio.mean:.2f} ({_num(r.self_ratio_init)})"
        omega, gate = _gate_text(r.gates)
        out.append([r.strategy, r.scope, f"{r.null:.2f} ({r.null_kind})", _num(r.L, ".4g"),
                    ratio, omega, gate])
    return out


def box_header(t: ShareTables) -> list[str]:
    first = t.boxes[0] if t.boxes else None
    heads = ["strategy", "stage", "seeds"]
    for name, (low, high) in t.buckets.items():
        n = first.buckets[name][1] if first else 0
        heads.append(f"{name} {low:g}-{high:g}px n={n}")
    heads.append(f"bg n={first.background[1] if first else 0}")
    heads.append(f"{t.smallest} - bg")
    return heads


def _short(s: CellStats) -> str:
    if s.mean is None:
        return "-"
    if s.ci_low is None:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"


def box_table_cells(t: ShareTables) -> list[list[str]]:
    """A row per strategy and stage (mean [95% CI] over seeds) and, below it, the same model
    at initialisation (means)."""
    out = []
    for r in t.boxes:
        line = [r.strategy, r.scope, str(r.background[0].n)]
        line += ["-" if not n else _short(s) for s, n in r.buckets.values()]
        line += [_short(r.background[0]), _diff(r.smallest_vs_background)]
        out.append(line)
        if r.initial:
            out.append([r.strategy, f"{r.scope} init", "", *[_num(r.initial.get(k))
                        for k in [*t.buckets, "background"]], ""])
    return out


SHARE_NOTES = [
    "unary share in %, test set; init: the same model (same seed, same test batches) at "
    "initialisation, BatchNorm statistics re-estimated on training batches without any weight "
    "update",
    "verdict: learned where the trained - init difference, paired by seed, has a 95% CI "
    "excluding 0 and a Holm-adjusted (over this table) paired-t p < 0.05; else built in",
]
NULL_NOTES = [
    "null (%): 1/L, uniform attention's share (sa, softmax; L = keys per query, the mean over "
    "seeds), or gate: E[1/(1+sigmoid(z))], z ~ N(0, 1) (a dynamic gate at gamma 1, beta 0); "
    "L x mean a_ii: how much more than uniform a position attends to itself",
    "omega (trained): quantiles over test images, positions and channels; gate BN (trained): "
    "the gate's last BatchNorm (frozen: dynamic_frozen has none to learn); means over seeds, "
    "min / max over seeds",
]
BOX_NOTES = [
    "unary share in % of the positions whose centres fall inside the ground-truth boxes of "
    "each AI-TOD size bucket (a box smaller than the stride: the position holding its centre), "
    "mean over boxes, then over seeds [95% CI]; background: every other unpadded position; "
    "n: boxes (buckets) or positions (bg, the background); init: the same model at "
    "initialisation (mean over seeds); last column: the smallest "
    "bucket minus the background, paired by seed",
]


# --- exports ------------------------------------------------------------------------------------
def _stats(s: CellStats | None) -> dict | None:
    if s is None:
        return None
    seeds = sorted(s.values, key=str)
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
            "seeds": seeds, "values": [s.values[k] for k in seeds]}


def _comparison(c: Comparison | None) -> dict | None:
    if c is None:
        return None
    return {"diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p,
            "p_adjusted": c.p_adjusted, "n_pairs": c.n_pairs, "method": c.method,
            "note": c.note}


def export_shares(t: ShareTables) -> dict:
    """The JSON export's "shares" entry of one dataset: the numbers the tables show."""
    return {
        "rows": [{"strategy": r.strategy, "scope": r.scope, "trained": _stats(r.trained),
                  "initial": _stats(r.initial), "null": r.null, "null_kind": r.null_kind,
                  "L": r.L, "self_ratio": _stats(r.self_ratio),
                  "self_ratio_init": r.self_ratio_init,
                  "trained_minus_initial": _comparison(r.comparison), "verdict": r.verdict,
                  "gates": r.gates} for r in t.rows],
        "boxes": [{"strategy": r.strategy, "stage": r.scope,
                   "buckets": {k: {"share": _stats(s), "n_boxes": n}
                               for k, (s, n) in r.buckets.items()},
                   "background": {"share": _stats(r.background[0]),
                                  "n_positions": r.background[1]},
                   "initial": r.initial,
                   "smallest_minus_background": _comparison(r.smallest_vs_background)}
                  for r in t.boxes],
        "buckets": t.buckets, "smallest": t.smallest}


def csv_rows(t: ShareTables, dataset: str) -> list[dict]:
    """CSV lines (by the export's column names): trained share, diff and verdict against the
    share at initialisation, per strategy and scope; the box shares per bucket."""
    out = []
    for r in t.rows:
        c = r.comparison
        out.append({"strategy": r.strategy, "dataset": dataset,
                    "metric": f"share_analysis/{r.scope}/unary", "unit": "%",
                    "n": r.trained.n, "mean": r.trained.mean, "std": r.trained.std,
                    "ci_low": r.trained.ci_low, "ci_high": r.trained.ci_high,
                    "baseline": "init", "diff": c.diff if c else None,
                    "diff_ci_low": c.ci_low if c else None,
                    "diff_ci_high": c.ci_high if c else None, "p": c.p if c else None,
                    "p_adjusted": c.p_adjusted if c else None,
                    "method": c.method if c else None, "verdict": r.verdict,
                    "note": f"init {_num(r.initial.mean, '.4g')}; null {_num(r.null, '.4g')} "
                            f"{r.null_kind}".strip()})
    for r in t.boxes:
        for key, (s, n) in [*r.buckets.items(), ("background", r.background)]:
            out.append({"strategy": r.strategy, "dataset": dataset,
                        "metric": f"share_boxes/{r.scope}/{key}", "unit": "%", "n": s.n,
                        "mean": s.mean, "std": s.std, "ci_low": s.ci_low,
                        "ci_high": s.ci_high,
                        "note": f"{n} {'positions' if key == 'background' else 'boxes'}"})
    return out
