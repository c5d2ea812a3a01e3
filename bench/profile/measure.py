"""How the profile measures one call: wall and CPU time, peak memory and FLOPs, and the round
robin that times every row of a shape alike.

    time        median wall time of the timed calls; the median CPU time of the process (user
                + sys, all threads) and its sys time (page faults show up there) as well
    peak memory CPU: growth of the process's peak resident set over one call (Linux VmHWM,
                reset through /proc/self/clear_refs, after gc and malloc_trim): everything the
                call made the OS provide (tensors, autograd buffers, kernel scratch, allocator
                slack). CUDA: growth of torch.cuda.max_memory_allocated over one call.
    FLOPs       torch.utils.flop_counter.FlopCounterMode over one call (bench.costs.flops)
"""
from __future__ import annotations

import gc
import statistics
import time

FAST_CALL_S, INNER = 0.5, 3  # see run_rows


class PeakMemory:
    """Peak memory of one call, in bytes (see the module docstring for what it measures)."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self._trim = None
        if device.type == "cuda":
            self.method = ("growth of torch.cuda.max_memory_allocated over one call (tensor "
                           "memory; the caching allocator's reserve is not counted)")
            return
        try:
            import ctypes

            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            pass
        try:
            self._reset_hwm()
            self._status("VmHWM")
            self.method = ("growth of the process's peak resident set (VmHWM, reset through "
                           "/proc/self/clear_refs) over one call, after gc and malloc_trim: "
                           "tensors, autograd buffers, kernel scratch and allocator slack")
        except (OSError, ValueError):
            self.method = None  # not Linux, or clear_refs refused: no CPU peak memory

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise ValueError(key)

    @staticmethod
    def _reset_hwm() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def measure(self, fn) -> int | None:
        """Tensors die by reference counting; the caller runs one gc.collect() beforehand
        (a full collection per call is slow in a big process)."""
        torch = self.torch
        if self.method is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return max(0, torch.cuda.max_memory_allocated() - base)
        if self._trim is not None:
            self._trim(0)
        base = self._status("VmRSS")
        self._reset_hwm()
        fn()
        return max(0, self._status("VmHWM") - base)


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _timed(fn, sync) -> tuple[float, float, float]:
    """(wall, CPU = user + sys of all threads, sys alone: page faults show up there)."""
    import resource

    sync()
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before.ru_stime


def _stats(times: list[tuple[float, float, float]]) -> dict:
    walls = [t[0] for t in times]
    return {"time_s": statistics.median(walls), "time_min_s": min(walls),
            "cpu_s": statistics.median(t[1] for t in times),
            "sys_s": statistics.median(t[2] for t in times), "repeats": len(walls)}


class Row:
    """One thing to time: `infer()` and `train()` calls (train may be None)."""

    def __init__(self, name: str, kind: str, infer, train, note: str = ""):
        self.name, self.kind, self.note = name, kind, note
        self.calls = {"infer": infer, "train": train}
        self.times: dict[str, list] = {"infer": [], "train": []}
        self.result: dict = {"name": name, "kind": kind, "note": note}


def run_rows(torch, rows, repeats, warmup, sync, memory, progress, min_time=0.0):
    """Warm up, then time round robin (so load spikes hit every row alike), each round starting
    one row further on (the heap and caches a row leaves behind vary the next one's time, so no
    row always runs right after the same one): at least `repeats` rounds, more (up to 5x)
    while the rounds so far took less than `min_time` seconds, which gives cheap shapes
    enough repeats for a stable median on a shared machine. Calls whose
    warm-up took under FAST_CALL_S are timed INNER times per round: in a shape where one slow
    row sets the number of rounds, the fast rows' medians then rest on more samples."""
    from bench.costs.flops import count_flops

    modes = ("infer", "train")
    inner = {}
    for row in rows:
        for mode in modes:
            if row.calls[mode] is not None:
                took = None
                for _ in range(warmup):
                    took = _timed(row.calls[mode], sync)[0]
                inner[id(row), mode] = INNER if took is not None and took < FAST_CALL_S else 1
    start, r = time.perf_counter(), 0
    while r < repeats or (r < 5 * repeats and time.perf_counter() - start < min_time):
        r += 1
        progress(f"round {r} (at least {repeats})")
        for row in rows[(r - 1) % len(rows):] + rows[:(r - 1) % len(rows)]:
            for mode in modes:
                if row.calls[mode] is not None:
                    for _ in range(inner[id(row), mode]):
                        row.times[mode].append(_timed(row.calls[mode], sync))
    gc.collect()
    for row in rows:
        for mode in modes:
            fn = row.calls[mode]
            if fn is None:
                row.result[mode] = None
                continue
            result = _stats(row.times[mode])
            result["peak_mem_bytes"] = memory.measure(fn)
            result["flops"] = count_flops(fn)
            row.result[mode] = result
