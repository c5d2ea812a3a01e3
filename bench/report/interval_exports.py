"""The JSON and CSV of what each interval covers (exports.py calls these): per cell the data
splits' fields (two-level comparison, each split's comparison, the variance table, what pairing
buys; init vs data order where trainer.seeds.* are axes), per classification dataset the tests
over test images (bootstrap, McNemar, the images fixed and broken), and the headline across
datasets. Splits are lists of records, not JSON keys
(a split is a number, and a one-split experiment's is null)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

from bench.report.analysis import Analysis, Row
from bench.report.splits import seed_split

BLOCK_KEYS = ("df", "n_splits", "sd_split", "sd_within", "splits_needed")
VARIANCE_KEYS = ("n_splits", "n_runs", "mean", "var_split", "var_seed", "var_test",
                 "share_split", "share_seed", "share_test", "total", "test_shared", "clamped",
                 "note")
SEED_KEYS = ("n_init", "n_order", "var_init", "var_order", "var_residual", "share_init",
             "share_order", "share_residual", "dropped", "clamped", "note")
PAIRING_KEYS = ("n_blocks", "n_splits", "var_a", "var_b", "cov", "corr", "var_diff",
                "variance_ratio", "corr_within", "variance_ratio_within", "note")


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _pick(obj, keys) -> dict | None:
    return None if obj is None else {k: _finite(getattr(obj, k, None)) for k in keys}


def comparison_extras(c) -> dict:
    """A two-level comparison's own fields (None on a seed comparison)."""
    out = {k: _finite(getattr(c, k, None)) for k in BLOCK_KEYS}
    pairs = getattr(c, "pairs_per_split", None) or {}
    out["pairs_per_split"] = [{"split": s, "pairs": n} for s, n in pairs.items()]
    return out


def cell_extras(row: Row, comparison: dict | None, keys: tuple[str, ...]) -> dict:
    """Added to a cell of the JSON: per split its comparison (the fields `keys`), the variance
    table, what pairing buys."""
    if comparison is not None and row.comparison is not None:
        comparison.update(comparison_extras(row.comparison))
    per_split = []
    for split, c in row.per_split.items():
        entry = {"split": split, **{k: _finite(getattr(c, k)) for k in keys}}
        entry["looks"] = None
        per_split.append(entry)
    out = {"per_split": per_split, "variance": _pick(row.variance, VARIANCE_KEYS),
           "pairing": _pick(row.pairing, PAIRING_KEYS)}
    found = seed_split(row.values())
    if found is not None:  # trainer.seeds.* as axes: init vs data order (absent otherwise)
        out["seed_components"] = {
            "n_runs": found.n_runs, **_seeds(found.pooled),
            "per_split": [{"split": s, **_seeds(c)} for s, c in found.per_split.items()]}
    return out


def _seeds(c) -> dict:
    out = _pick(c, SEED_KEYS)
    out["dropped"] = [list(d) for d in c.dropped]
    return out


def _interval(iv) -> dict | None:
    if iv is None:
        return None
    return {"estimate": _finite(iv.estimate), "ci_low": _finite(iv.ci_low),
            "ci_high": _finite(iv.ci_high)}


def images_export(a: Analysis) -> dict:
    """{dataset: tests over test images}, by split."""
    out = {}
    for dataset, t in sorted(a.images.items()):
        splits = []
        for split, s in t.splits.items():
            strategies = {}
            for name, acc in (s.bootstrap.strategies.items() if s.bootstrap else []):
                fb = s.fixes.get(name)
                strategies[name] = {
                    "seeds": acc.seeds, "acc1": _interval(acc.interval),
                    "baseline": t.baselines.get(name),
                    "difference": _interval(s.differences.get(name)),
                    "mcnemar": [{"seed": seed, **asdict(m)}
                                for seed, m in s.mcnemar.get(name, {}).items()],
                    "fixes": None if fb is None else [{"index": i, "pairs": n}
                                                      for i, n in fb.top_fixes],
                    "breaks": None if fb is None else [{"index": i, "pairs": n}
                                                       for i, n in fb.top_breaks]}
            splits.append({"split": split, "n_images": s.n_images, "note": s.note,
                           "strategies": strategies})
        out[dataset] = {"n_resamples": t.n_resamples, "seed": t.seed,
                        "confidence": t.confidence, "note": t.note,
                        "method": "percentile, paired over test images; exact McNemar per "
                                  "seed pair", "splits": splits}
    return out


def _estimate(e) -> dict:
    return {"estimate": _finite(e.estimate), "seeds": _interval(e.seeds),
            "tasks": _interval(e.tasks)}


def headline_export(a: Analysis) -> list[dict]:
    out = []
    for h in a.headlines:
        r = h.result
        out.append({
            "label": h.label, "baseline": h.baseline, "datasets": h.datasets,
            "metrics": h.metrics, "n_resamples": r.n_resamples, "seed": r.seed,
            "confidence": r.confidence, "note": r.note,
            "references": {t: list(v) for t, v in r.references.items()},
            "units": {t: [list(k) if isinstance(k, tuple) else k for k in s]
                      for t, s in r.seeds.items()},
            "baseline_iqm": None if r.baseline_iqm is None else _estimate(r.baseline_iqm),
            "strategies": {name: {"mean_gain": _estimate(row.mean_gain),
                                  "iqm": _estimate(row.iqm), "iqm_gain": _estimate(row.iqm_gain),
                                  "p_improvement": _estimate(row.p_improvement),
                                  "p_improvement_paired": _estimate(row.p_improvement_paired),
                                  "per_task_gain": row.per_task_gain}
                           for name, row in r.rows.items()}})
    return out


def csv_lines(report: dict, header: list[str]) -> list[list]:
    """The CSV rows of the same: metric `split/<split>/<metric>` (each split's comparison),
    `variance/<metric>` (the components and shares as JSON in `note`), `seeds/<metric>` (init
    vs data order, likewise, where trainer.seeds.* are axes), `images/[<split>/]acc1`
    (the bootstrap; McNemar in `note`), `headline/<statistic>`."""
    lines = []

    def row(**kw):
        lines.append([kw.get(k) for k in header])

    for cell in report["cells"]:
        for c in cell.get("per_split") or []:
            row(strategy=cell["strategy"], dataset=cell["dataset"],
                metric=f"split/{c['split']}/{cell['metric']}", unit=cell["unit"],
                baseline=c["baseline"], diff=c["diff"], diff_ci_low=c["ci_low"],
                diff_ci_high=c["ci_high"], p=c["p"], p_wilcoxon=c["p_wilcoxon"],
                p_adjusted=c["p_adjusted"], effect_size=c["effect_size"], method=c["method"],
                verdict=c["verdict"], seeds_needed=c["seeds_needed"], note=c["note"])
        v = cell.get("variance")
        if v:
            p = cell.get("pairing") or {}
            row(strategy=cell["strategy"], dataset=cell["dataset"],
                metric=f"variance/{cell['metric']}", unit=f"{cell['unit']}^2", n=v["n_runs"],
                mean=v["mean"], method="random-effects ANOVA (split, seed) + test-image noise",
                note=json.dumps({k: v[k] for k in ("var_split", "var_seed", "var_test",
                                                   "share_split", "share_seed", "share_test")}
                                | {"corr": p.get("corr"), "corr_within": p.get("corr_within"),
                                   "variance_ratio": p.get("variance_ratio")}))
        c = cell.get("seed_components")
        if c:
            row(strategy=cell["strategy"], dataset=cell["dataset"],
                metric=f"seeds/{cell['metric']}", unit=f"{cell['unit']}^2", n=c["n_runs"],
                method="random-effects ANOVA (init x order)",
                note=json.dumps({k: c[k] for k in ("var_init", "var_order", "var_residual",
                                                   "share_init", "share_order",
                                                   "share_residual", "note")}))
    for dataset, t in report.get("images", {}).items():
        for s in t["splits"]:
            for name, e in s["strategies"].items():
                d = e["difference"] or {}
                where = "" if s["split"] is None else f"{s['split']}/"
                row(strategy=name, dataset=dataset, metric=f"images/{where}acc1",
                    unit="%", n=len(e["seeds"]), mean=e["acc1"]["estimate"],
                    ci_low=e["acc1"]["ci_low"], ci_high=e["acc1"]["ci_high"],
                    baseline=e["baseline"], diff=d.get("estimate"), diff_ci_low=d.get("ci_low"),
                    diff_ci_high=d.get("ci_high"),
                    method=f"paired bootstrap over {s['n_images']} test images",
                    seeds=json.dumps(e["seeds"]),
                    note="; ".join(f"McNemar s{m['seed']} {m['a_only']}:{m['b_only']} "
                                   f"p={m['p']:.3g}" for m in e["mcnemar"]))
    for h in report.get("headline", []):
        for name, e in h["strategies"].items():
            for stat in ("mean_gain", "iqm_gain", "p_improvement", "p_improvement_paired"):
                x = e[stat]
                row(strategy=name, dataset="+".join(h["datasets"]), metric=f"headline/{stat}",
                    mean=x["estimate"], baseline=h["baseline"],
                    ci_low=x["seeds"]["ci_low"], ci_high=x["seeds"]["ci_high"],
                    method=f"bootstrap over seeds within datasets ({h['n_resamples']}), "
                           f"pairs kept",
                    note=None if x["tasks"] is None else
                    f"tasks resampled too: [{x['tasks']['ci_low']}, {x['tasks']['ci_high']}]")
    return lines


__all__ = ["cell_extras", "csv_lines", "headline_export", "images_export"]
