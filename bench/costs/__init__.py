"""What a model costs: FLOPs of one call (flops.py) and `lesa-bench models` (models.py:
parameters, FLOPs and shapes of every strategy, and the conv width that matches them)."""
