"""The statistics of the reports, as pure functions over numbers: numpy and scipy, no I/O, no
torch, no rich. What each computes, and what its interval covers: docs/statistics.md.

    compare.py    cells over seeds; seed-paired comparisons with a baseline; Holm over the
                  difference and equivalence tests; verdicts better / worse / equivalent / not
                  resolved; seeds needed; "best" rows; bootstrap percentile intervals
    power.py      seeds needed: the power of the paired t-test and of the TOST
    sequential.py planned looks: alpha spending, bounds for t statistics, the decision at each
                  look (vectorised: the report and the simulations run the same code), design
    blocks.py     splits as blocks: the two-level comparison (runs nested in data splits)
    variance.py   how much of a metric's variance comes from the split, the seed, the test images
    images.py     per test image: McNemar per seed pair, the paired bootstrap of accuracy, the
                  images a strategy fixes and breaks
    aggregate.py  one headline across tasks: mean gain, IQM, probability of improvement, with a
                  bootstrap that keeps the seed pairs
    curves.py     a metric against epoch over seeds: mean and t band
    budget.py     tuning budgets: expected best after n trials or T hours, crossings, spread over
                  repeated studies, when a study's budget is reached
    ap.py         detection AP on any multiset of test images (per-image matches), for the
                  paired bootstrap over test images
"""

# the alpha-spending functions of a sequential plan (sequential.py; the config checks names
# against this without importing scipy)
SPENDINGS = ("obrien_fleming", "pocock")
