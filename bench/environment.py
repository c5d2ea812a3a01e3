"""The environment record of a run (metrics.json "environment") and its one-line label.

`report` groups finished runs by the label and says when a table mixes environments. No torch
at import: the report reads labels without it.
"""
from __future__ import annotations

import os

# variables that change which CPU kernels run (and so the float rounding), recorded if set
_KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                     "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "LESA_FUSED_CPU")


def environment(device_type: str) -> dict:
    """What a run's numbers depend on beyond its config (metrics.json "environment"): library
    versions, the device and the kernels it runs, the thread count. They all change float
    rounding, which training amplifies. A resumed run records the process that finished it."""
    import platform

    import lightning
    import torch

    env = {"torch": torch.__version__, "lightning": lightning.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads()}
    if device_type == "cuda":
        env.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    elif device_type == "cpu":
        from lesa import fused_cpu

        env.update(device=_cpu_name() or platform.processor() or platform.machine(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   fused_attention=fused_cpu.status())  # evaluation's attention kernel
    else:
        env["device"] = device_type
    variables = {k: os.environ[k] for k in _KERNEL_VARIABLES if k in os.environ}
    if variables:
        env["variables"] = variables
    return env


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment_label(env: dict) -> str:
    """One line naming what a run's rounding depends on (an `environment()` record)."""
    device = str(env.get("device"))
    if env.get("cpu_capability"):
        device += f" ({env['cpu_capability']})"
    parts = [f"torch {env.get('torch')}", f"lightning {env.get('lightning')}", device]
    if env.get("fused_attention"):  # recorded since lesa/fused_cpu.py exists
        parts.append("fused attention kernel" if env["fused_attention"] == "in use"
                     else "attention on torch ops")
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    threads = env.get("threads")
    parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    parts += [f"{k}={v}" for k, v in sorted((env.get("variables") or {}).items())]
    return ", ".join(parts)


NOT_RECORDED = "not recorded (run before metrics.json had an environment)"
