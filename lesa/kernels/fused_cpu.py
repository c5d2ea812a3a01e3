"""The global binary term's attention in CPU inference as one hand-written kernel.

fused_attention.cpp computes what chunked.py computes (softmax over keys of q k^T / sqrt(d) plus
the 2-D relative logits, times v; a_ii or j = i removed on request) for a few query rows at a
time with their logits kept in L2, in AVX-512 or AVX2 intrinsics (one source, compiled for the
instruction set torch uses here). It exists because no library fuses a relative-position bias
into attention on CPU: torch's fused CPU attention takes it only as a materialised L x L mask,
FlexAttention compiles to a slower loop on CPU, and the torch-op path (chunked.py) spends most
of its time moving each chunk's logits between four kernels.

Scope, and what happens outside it (the caller, BinaryTerm.attend, falls back to the chunked
path, so nothing changes but speed):
- inference only (no autograd through it): training keeps chunked.py's Function;
- float32 on an x86 CPU whose torch reports AVX-512 or AVX2
  (`torch.backends.cpu.get_cpu_capability()`, which ATEN_CPU_CAPABILITY lowers), value heads of
  at most 64 channels;
- a C++ compiler: the kernel is compiled on first use against the installed torch (its headers
  and its OpenMP pool, so torch's thread count applies) into a cache, $LESA_KERNEL_CACHE or
  ~/.cache/lesa-bench/kernels, keyed by the source, torch and the flags;
- LESA_FUSED_CPU=0 turns it off.

`status()` says whether it is in use and why not. The call goes through a torch custom op,
`torch.ops.lesa.relative_attention_cpu`, so FlopCounterMode and the profiler see it (its FLOPs:
bench/costs/flops.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("fused_attention.cpp")
MODES = {"keep": 0, "mask": 1, "report": 2}
MAX_VALUE_WIDTH = 64
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-shared", "-fPIC")
ISA_FLAGS = {"AVX512": ("-mavx512f", "-mavx512dq", "-mfma"), "AVX2": ("-mavx2", "-mfma")}

_lock = threading.Lock()
_loaded: dict = {}  # "function" (the ctypes function) and "tile", or "error" (why not), once


class Unavailable(RuntimeError):
    """The fused kernel cannot run here; the message says why."""


def _cache_dir() -> Path:
    if os.environ.get("LESA_KERNEL_CACHE"):
        return Path(os.environ["LESA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lesa-bench" / "kernels"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("c++") or shutil.which("g++")


def _build():
    """Compile (or find in the cache) and load the kernel; returns its ctypes function and the
    keys per tile it expects k packed in."""
    if os.environ.get("LESA_FUSED_CPU", "1") == "0":
        raise Unavailable("turned off (LESA_FUSED_CPU=0)")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ISA_FLAGS:
        raise Unavailable(f"needs AVX-512 or AVX2; torch's CPU capability here is {capability}")
    cxx = _compiler()
    if cxx is None:
        raise Unavailable("no C++ compiler found (set CXX, or install g++)")
    # torch's headers and libraries (torch.utils.cpp_extension would say the same, with a
    # warning about CUDA on machines without it)
    root = Path(torch.__file__).parent
    flags = [*COMPILE_FLAGS, *ISA_FLAGS[capability],
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             f"-I{root / 'include'}"]
    link = [f"-L{root / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{root / 'lib'}"]
    key = hashlib.sha256(SOURCE.read_bytes()
                         + "\0".join([cxx, torch.__version__, *flags, *link]).encode())
    path = _cache_dir() / f"fused_attention-{key.hexdigest()[:16]}.so"
    if not path.exists():
        _compile(cxx, flags, link, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # a damaged cache entry (a bad copy, a full disk): build it once more
        _compile(cxx, flags, link, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as err:
            raise Unavailable(f"the rebuilt {path} does not load ({err})") from err
    fn = lib.lesa_relative_attention_f32
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_void_p] * 7 + [ctypes.c_int64] * 6
                   + [ctypes.c_int, ctypes.POINTER(ctypes.c_int64)])
    lib.lesa_tile.restype = ctypes.c_int64
    return fn, lib.lesa_tile()


def _compile(cxx: str, flags: list, link: list, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    except OSError as err:
        raise Unavailable(f"kernel cache {path.parent} is not writable ({err}); "
                          f"set LESA_KERNEL_CACHE") from err
    os.close(handle)
    proc = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp, *link],
                          capture_output=True, text=True)
    if proc.returncode:
        os.unlink(tmp)
        raise Unavailable(f"compiling {SOURCE.name} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, path)  # atomic: parallel processes building the same key agree


def _function():
    if not _loaded:
        with _lock:
            if not _loaded:
                try:
                    _loaded["function"], _loaded["tile"] = _build()
                except Unavailable as err:
                    _loaded["error"] = str(err)
    if "error" in _loaded:
        raise Unavailable(_loaded["error"])
    return _loaded["function"]


def status() -> str:
    """'in use' or 'off: <why>' (builds the kernel on first call)."""
    try:
        _function()
        return "in use"
    except Unavailable as err:
        return f"off: {str(err).splitlines()[0]}"


def available() -> bool:
    return status() == "in use"


def tile() -> int:
    """Keys per tile of the packed k: 32 in the AVX-512 build, 16 in the AVX2 one."""
    _function()
    return _loaded["tile"]


def applies(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether relative_attention() takes these operands (and the kernel is built)."""
    return (q.device.type == "cpu" and q.dtype == torch.float32
            and 0 < v.shape[-1] <= MAX_VALUE_WIDTH and available())


@torch.library.custom_op("lesa::relative_attention_cpu", mutates_args=())
def _op(q: torch.Tensor, k_tiles: torch.Tensor, v: torch.Tensor, by_row: torch.Tensor,
        by_col: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q (n, L, d) pre-scaled, k_tiles (n, tiles, d, tile()) zero-padded, v (n, L, dv),
    contiguous; by_row (n, H, W, H) and by_col (n, H, W, W) over (entry, query row, query
    column, key row or column), any strides but a contiguous last axis; all float32 -> out
    (n, L, dv), a_ii (n, L) (empty unless mode is 2, "report")."""
    n, length, d = q.shape
    dv, height, width = v.shape[-1], by_row.shape[-1], by_col.shape[-1]
    out = q.new_empty(n, length, dv)
    a_ii = q.new_empty(n, length) if mode == MODES["report"] else q.new_empty(0)
    strides = (ctypes.c_int64 * 6)(*by_row.stride()[:3], *by_col.stride()[:3])
    code = _function()(q.data_ptr(), k_tiles.data_ptr(), v.data_ptr(), by_row.data_ptr(),
                       by_col.data_ptr(), out.data_ptr(),
                       a_ii.data_ptr() if a_ii.numel() else None,
                       n, length, d, dv, height, width, mode, strides)
    if code == 1:
        raise ValueError(f"value width {dv} is outside the fused kernel's 1..64")
    if code:
        raise MemoryError("the fused kernel could not allocate its per-thread logits buffer")
    return out, a_ii


@_op.register_fake
def _(q, k_tiles, v, by_row, by_col, mode):
    n, length, _ = q.shape
    return (q.new_empty(n, length, v.shape[-1]),
            q.new_empty(n, length) if mode == MODES["report"] else q.new_empty(0))


def _grid(table: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """(B, heads, L, K) or (B, heads, H, W, K) -> (n, H, W, K), a view where the strides allow
    (RelativePosition2d.grids' results, any contiguous table), with a contiguous last axis."""
    table = table.reshape(n, height, width, table.shape[-1])
    return table if table.stride(-1) == 1 else table.contiguous()


def relative_attention(q, k, v, by_row, by_col, height: int, width: int, scale: float,
                       diagonal: str = "keep"):
    """chunked.relative_attention's forward (same arguments and results), no autograd.

    q, k (B, heads, L, d), v (B, heads, L, dv); by_row (B, heads, L, H) and by_col (..., W) as
    RelativePosition2d returns them, or (B, heads, H, W, H) / (..., W) as its `grids` returns
    them (strided views, read in place). Returns (out (B, heads, L, dv), a_ii (B, heads, L) or
    None). Check `applies` first.
    """
    b, heads, length, d = q.shape
    keys = tile()
    n, tiles = b * heads, -(-length // keys)
    with torch.no_grad():
        q_s = (q * scale).reshape(n, length, d)
        k_tiles = F.pad(k.reshape(n, length, d), (0, 0, 0, tiles * keys - length))
        k_tiles = k_tiles.reshape(n, tiles, keys, d).transpose(2, 3).contiguous()
        out, a_ii = _op(q_s.contiguous(), k_tiles, v.reshape(n, length, -1).contiguous(),
                        _grid(by_row, n, height, width), _grid(by_col, n, height, width),
                        MODES[diagonal])
    out = out.view(b, heads, length, -1)
    return out, (a_ii.view(b, heads, length) if diagonal == "report" else None)
