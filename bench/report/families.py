"""Which rows of a report are compared with which: the families. Pure (row keys and their axis
values in, families out); the statistics are bench/stats' and bench/report/analysis.py's.

A row (bench/report/records.py `row_parts`) has a name, its strategy with the settings of an
axis that chooses it, and a value on every other row axis. `report` compares the strategies:
rows that agree on every other axis form a group, and each group's row with the baseline
strategy is the baseline of the others. `report --compare AXIS` compares the values of AXIS:
rows that agree on everything else, the strategy included, form a group, and its row with the
baseline value is the baseline. A family is one group: its baseline row, the rows compared with
it (paired by seed, Holm-adjusted together), what varies between them and what they share.
Every row is in exactly one family; a group without the baseline is a family without one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from bench.report.records import STRATEGY

# row key -> (name, {axis: value text}), as records.row_parts gives them
RowAxes = Mapping[str, tuple[str, Mapping[str, str]]]


@dataclass(frozen=True)
class Family:
    varies: str                          # STRATEGY (the rows' names) or the axis compared
    baseline: str | None                 # the baseline row; None: the group has none
    rows: tuple[str, ...]                # every row of the family, in table order
    fixed: tuple[tuple[str, str], ...]   # what its rows share: (axis or STRATEGY, value text)

    @property
    def members(self) -> tuple[str, ...]:
        """The rows compared with the baseline (every row, where there is no baseline)."""
        return tuple(r for r in self.rows if r != self.baseline)

    @property
    def comparisons(self) -> int:
        return len(self.members) if self.baseline else 0

    @property
    def label(self) -> str:
        """What the rows share, as the tables say it: `model.release=True`, `dynamic, width=2`."""
        return ", ".join(text if axis == STRATEGY else f"{axis}={text}"
                         for axis, text in self.fixed)


def value_of(parts: tuple[str, Mapping[str, str]], varies: str) -> str | None:
    name, others = parts
    return name if varies == STRATEGY else others.get(varies)


def families(rows: RowAxes, varies: str, baseline: str | None,
             order: Sequence[str] = ()) -> list[Family]:
    """The families of `rows` (row key -> (name, {axis: value text}), in table order) when the
    values of `varies` (STRATEGY or an axis of the rows) are compared with `baseline` (a value
    of it; None: no comparisons). Rows that agree on everything but `varies` are one family,
    the families in the order their first row comes; inside one, the rows in `order` (the
    values of `varies` in matrix order; empty: row order)."""
    groups: dict[tuple, list[str]] = {}
    for key, parts in rows.items():
        name, others = parts
        fixed = tuple((axis, text) for axis, text in others.items() if axis != varies)
        if varies != STRATEGY:
            fixed = ((STRATEGY, name),) + fixed
        groups.setdefault(fixed, []).append(key)
    rank = {text: i for i, text in enumerate(order)}
    out = []
    for fixed, keys in groups.items():
        keys = sorted(keys, key=lambda k: rank.get(value_of(rows[k], varies), len(rank)))
        base = next((k for k in keys if baseline is not None
                     and value_of(rows[k], varies) == baseline), None)
        out.append(Family(varies, base, tuple(keys), fixed))
    return out


def tables(found: list[Family]) -> list[list[Family]]:
    """The families each table shows. Strategies compared: a table per family where there are
    several (each has its own baseline row and settings), so a table's Holm family is its rows;
    an axis compared: one table, a family per strategy and setting, each with its own baseline."""
    if len(found) > 1 and all(f.varies == STRATEGY for f in found):
        return [[f] for f in found]
    return [found] if found else []
