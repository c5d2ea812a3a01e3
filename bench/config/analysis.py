"""The experiment file's ``analysis:`` section: how the report decides (docs/statistics.md).

    analysis:
      margin: {acc1: 1.0, map_50: 2.0}   # or one number: the table's headline metric
      looks: [5, 10, 20]                 # seeds per cell at each planned look
      spending: obrien_fleming           # or pocock
      alpha: 0.05
      futility: 0.1                      # conditional power below which a look stops; 0: never

Margins are in the table's display units (accuracy points, AP points). `validate_analysis`
returns the normalised section or raises ConfigError naming the key path, the value and what
is allowed. Nothing here imports torch.
"""
from __future__ import annotations

import math

from lesa.names import did_you_mean

from bench.config.schema import ConfigError
from bench.stats import SPENDINGS
KEYS = ("margin", "looks", "spending", "alpha", "futility")
DEFAULTS = {"margin": {}, "looks": None, "spending": "obrien_fleming", "alpha": 0.05,
            "futility": 0.1}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _margin(value, metrics: list[str], headline: list[str]) -> dict[str, float]:
    def check(path: str, number) -> float:
        if not (_number(number) and math.isfinite(number) and number > 0):
            raise ConfigError(f"{path}: {number!r}: a margin must be a positive finite number "
                              f"(the smallest difference of interest, in the table's units, "
                              f"e.g. 1.0 accuracy points)")
        return float(number)

    if value is None:
        return {}
    if _number(value):
        if not headline:
            raise ConfigError(f"analysis.margin: {value!r}: no metric to apply it to; give a "
                              f"mapping of metric -> margin")
        return {name: check("analysis.margin", value) for name in headline}
    if not isinstance(value, dict):
        raise ConfigError(f"analysis.margin: {value!r}: expected a number (for the headline "
                          f"metric {', '.join(headline) or '?'}) or a mapping of metric -> "
                          f"number, e.g. {{acc1: 1.0}}")
    out = {}
    for name, number in value.items():
        if name not in metrics:
            raise ConfigError(f"analysis.margin.{name}: not a metric of this experiment"
                              f"{did_you_mean(name, metrics)}; choose from {', '.join(metrics)}")
        out[name] = check(f"analysis.margin.{name}", number)
    return out


def _looks(value) -> list[int] | None:
    if value is None:
        return None
    ok = (isinstance(value, list) and len(value) >= 2
          and all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in value)
          and all(b > a for a, b in zip(value, value[1:])))
    if not ok:
        raise ConfigError(f"analysis.looks: {value!r}: expected at least 2 strictly increasing "
                          f"integers >= 2 (seeds per cell at each look), e.g. [5, 10, 20]")
    return list(value)


def validate_analysis(raw, metrics: list[str], headline: list[str] | None = None,
                      seeds: int | None = None) -> dict:
    """The normalised ``analysis:`` section: margin {metric: number}, looks (list or None: no
    sequential plan), spending, alpha, futility. ``metrics``: the short names allowed
    (e.g. ["acc1", "acc5"] or ["map_50", "map", ...]); a single-number margin is the margin of
    each ``headline`` metric (default: metrics[0]); ``seeds``: the seed pool's size (the
    matrix's seed axis), which the last look must not exceed."""
    headline = list(headline) if headline is not None else list(metrics[:1])
    if raw is None:
        return {**DEFAULTS, "margin": {}}
    if not isinstance(raw, dict):
        raise ConfigError(f"analysis: {raw!r}: expected a mapping with keys "
                          f"{', '.join(KEYS)}")
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"analysis.{key}: not a key of analysis{did_you_mean(key, KEYS)}; "
                              f"allowed: {', '.join(KEYS)}")
    out = {**DEFAULTS, "margin": _margin(raw.get("margin"), list(metrics), headline),
           "looks": _looks(raw.get("looks"))}
    if out["looks"] and seeds is not None and out["looks"][-1] > seeds:
        raise ConfigError(f"analysis.looks: {out['looks']!r}: the last look needs "
                          f"{out['looks'][-1]} seeds per cell, but the matrix's seed axis lists "
                          f"{seeds}; list at least {out['looks'][-1]} seeds (the seed pool, e.g. "
                          f"seed: [0, 1, ..., {out['looks'][-1] - 1}])")
    spending = raw.get("spending", DEFAULTS["spending"])
    if spending not in SPENDINGS:
        raise ConfigError(f"analysis.spending: {spending!r}: unknown spending function"
                          f"{did_you_mean(spending, SPENDINGS)}; choose from "
                          f"{', '.join(SPENDINGS)}")
    out["spending"] = spending
    alpha = raw.get("alpha", DEFAULTS["alpha"])
    if not (_number(alpha) and 0 < alpha < 0.5):
        raise ConfigError(f"analysis.alpha: {alpha!r}: must be a number with 0 < alpha < 0.5 "
                          f"(the family-wise two-sided error rate, e.g. 0.05)")
    out["alpha"] = float(alpha)
    futility = raw.get("futility", DEFAULTS["futility"])
    if futility is not None and not (_number(futility) and 0 <= futility < 1):
        raise ConfigError(f"analysis.futility: {futility!r}: must be a number with 0 <= "
                          f"futility < 1 (conditional power; 0 or null: no futility stops)")
    out["futility"] = None if not futility else float(futility)
    return out
