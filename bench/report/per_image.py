"""Per test image, for classification: each run's predictions.npz (`correct` per test image, in
the test split's fixed order), and per data split (different splits test different images):

- the paired bootstrap of acc1 over the test images, one set of resamples for every row, each
  row's difference from its family's baseline taken on the same resamples
  (bench.stats.images.accuracy_bootstrap, the pattern of detection's image_bootstrap.py);
- McNemar's exact test per seed pair (mcnemar_seeds);
- the images a row fixes and breaks most often across its seed pairs (fixes_breaks);
- each run's test-image noise (image_noise), the test component of the variance table.

Apart from the seed spread: these hold every trained model fixed (docs/statistics.md). numpy
and scipy only (no torch); the thumbnails of the fixed and broken images are thumbnails.py's.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.report.families import Family
from bench.report.records import cell_key, seed_of, split_of
from bench.stats.compare import Interval, percentile_interval
from bench.stats.images import (AccuracyBootstrap, FixesBreaks, ImageNoise, McNemar,
                                accuracy_bootstrap, fixes_breaks, image_noise, mcnemar_seeds,
                                noise_by_split)
from bench.store import PREDICTIONS, RunDir, RunState

N_RESAMPLES = 1000
SEED = 0
TOP_K = 8  # images listed per comparison and kind (fixes, breaks)


@dataclass
class SplitImages:
    """One split's per-image tests: its test images are shared by all its runs."""
    split: Hashable                                  # None: the experiment has one split
    n_images: int | None
    bootstrap: AccuracyBootstrap | None = None       # every row, the same resamples
    differences: dict[str, Interval] = field(default_factory=dict)  # row - its baseline
    mcnemar: dict[str, dict[Hashable, McNemar]] = field(default_factory=dict)
    fixes: dict[str, FixesBreaks] = field(default_factory=dict)
    noise: dict[str, ImageNoise] = field(default_factory=dict)  # per row, its runs' noise
    labels: np.ndarray | None = None                 # the test labels, by test index
    run: dict[str, dict[Hashable, Path]] = field(default_factory=dict)  # row -> seed -> folder
    note: str = ""


@dataclass
class ImageTests:
    """One classification dataset's per-image tests, by split."""
    dataset: str
    baselines: dict[str, str] = field(default_factory=dict)   # row -> its family's baseline
    splits: dict[Hashable, SplitImages] = field(default_factory=dict)
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    confidence: float = 0.95
    note: str = ""

    def noise(self, row: str) -> tuple[dict, dict] | None:
        """(test_var {(split, seed): v}, test_cov {split: c}) of a row's runs in points^2, the
        arguments of bench.stats.variance.variance_table; None where there are none."""
        found = {s.split: s.noise[row] for s in self.splits.values() if row in s.noise}
        return noise_by_split(found) if found else None


def _load(record) -> dict | None:
    if record.state != RunState.DONE or record.folder is None:
        return None
    arrays = RunDir(Path(record.folder)).predictions()
    return arrays if arrays and "correct" in arrays else None


def image_tests(dataset: str, records: list, row_of: Callable, found: list[Family],
                confidence: float = 0.95) -> ImageTests:
    """The per-image tests of one classification dataset's finished runs; `row_of(record)` is
    the record's row, `found` the dataset's families (each row against its baseline)."""
    out = ImageTests(dataset, {m: f.baseline for f in found if f.baseline for m in f.members},
                     confidence=confidence)
    done = [r for r in records if r.state == RunState.DONE]
    if not done:
        out.note = "no finished runs"
        return out
    loaded = [(r, _load(r)) for r in done]
    missing = [r for r, p in loaded if p is None]
    if len(missing) == len(done):
        out.note = (f"no finished run has {PREDICTIONS} with per-image results (runs from "
                    f"before it was written): no tests over test images")
        return out
    notes = [f"{len(missing)} of {len(done)} finished runs have no {PREDICTIONS}: left out"] \
        if missing else []
    by_split: dict = {}
    for record, arrays in loaded:
        if arrays is not None:
            key = cell_key(record.run)
            by_split.setdefault(split_of(key), []).append((record, seed_of(key), arrays))
    for split in sorted(by_split, key=repr):
        out.splits[split] = _split(split, by_split[split], row_of, out.baselines, confidence)
    out.note = "; ".join(notes)
    return out


def _same_images(runs: list[dict]) -> bool:
    first = runs[0]
    return all(np.array_equal(r["index"], first["index"])
               and np.array_equal(r["labels"], first["labels"]) for r in runs[1:])


def _split(split, runs: list, row_of, baselines: dict, confidence: float) -> SplitImages:
    out = SplitImages(split, None)
    if not _same_images([arrays for _, _, arrays in runs]):
        out.note = "the runs' test sets differ (index or labels): no paired tests"
        return out
    cells: dict[str, dict] = {}
    for record, seed, arrays in runs:
        row = row_of(record)
        cells.setdefault(row, {})[seed] = arrays["correct"].astype(bool)
        out.run.setdefault(row, {})[seed] = Path(record.folder)
    first = runs[0][2]
    out.n_images, out.labels = int(first["correct"].size), np.asarray(first["labels"])
    boot = accuracy_bootstrap(cells, None, N_RESAMPLES, SEED, confidence)
    out.bootstrap = boot
    for row, base in baselines.items():
        if row not in cells or base not in cells:
            continue
        a, b = boot.strategies[row], boot.strategies[base]
        out.differences[row] = percentile_interval(
            a.interval.estimate - b.interval.estimate, a.samples - b.samples, confidence)
        out.mcnemar[row] = mcnemar_seeds(cells[row], cells[base])
        out.fixes[row] = fixes_breaks(cells[row], cells[base], TOP_K)
    out.noise = {row: image_noise(runs_) for row, runs_ in cells.items()}
    return out


def mcnemar_summary(tests: dict) -> str:
    """`3 of 3 pairs p < 0.05, all +` style summary of one row's McNemar tests."""
    if not tests:
        return "-"
    signs = [int(np.sign(t.a_only - t.b_only)) for t in tests.values()]
    low = sum(t.p < 0.05 for t in tests.values())
    shown = set(signs) - {0}
    agree = ("no pair differs" if not shown else "signs differ" if len(shown) > 1 else
             f"all {'+' if shown == {1} else '-'}")
    ties = signs.count(0)
    if ties and shown:
        agree += f" ({ties} even)"
    return f"{low} of {len(tests)} p < 0.05, {agree}"


__all__ = ["ImageTests", "SplitImages", "TOP_K", "image_tests", "mcnemar_summary"]
