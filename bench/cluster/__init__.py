"""Runs on a SLURM cluster.

    slurm.py    the pending runs as one job array: resources, the sbatch script, submitting
    queue.py    SLURM's view of submitted runs (squeue/sacct) for `status`; no torch
    requeue.py  inside an array task: train one run, save and requeue on the warning signal
"""
