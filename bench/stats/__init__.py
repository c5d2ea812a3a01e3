"""The statistics of the reports, as pure functions over numbers: numpy and scipy, no I/O, no
torch, no rich.

    compare.py  cells over seeds, seed-paired comparisons with a baseline, Holm, verdicts, seeds
                needed, "best" rows, bootstrap percentile intervals, size-bucket support
    ap.py       detection AP on any multiset of test images (per-image matches), for the
                paired bootstrap over test images
"""
