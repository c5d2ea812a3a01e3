"""The fused CPU inference kernel (lesa/kernels/fused_cpu.py) against explicit reference math (1e-5),
where it is used, where it is not, and what happens when it cannot be built."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.costs.flops import count_flops
from lesa import BinaryTerm, LESA2d
from lesa.kernels import fused_cpu
from test_fastpaths import C, HEADS, MAX, MODES, TOL, qkv, ref_attend

HERE_IT_SHOULD_RUN = (torch.backends.cpu.get_cpu_capability() in fused_cpu.ISA_FLAGS
                      and os.environ.get("LESA_FUSED_CPU", "1") != "0"
                      and (shutil.which(os.environ.get("CXX", "c++"))
                           or shutil.which("g++")) is not None)
needs_kernel = pytest.mark.skipif(not fused_cpu.available(),
                                  reason=f"fused CPU kernel {fused_cpu.status()}")


def test_kernel_is_built_where_it_can_be():
    """Where the CPU, the compiler and the settings allow it, the kernel must be in use: a
    broken build would otherwise only make every other test here skip."""
    if not HERE_IT_SHOULD_RUN:
        pytest.skip("no AVX-512 or AVX2, no compiler, or LESA_FUSED_CPU=0 here")
    assert fused_cpu.status() == "in use"


def term_and_inputs(b, h, w, seed, d=None, dv=None):
    torch.manual_seed(seed)
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    q, k, v = (t.detach() for t in qkv(b, h * w, seed=seed, **({"d": d} if d else {}),
                                       **({"dv": dv} if dv else {})))
    return term, q, k, v


@needs_kernel
@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w,d,dv", [
    (1, 4, 4, 4, 8),      # L = 16: one tile, mostly padding
    (2, 5, 7, 4, 8),      # L = 35: a tile and a ragged one
    (1, 8, 8, 5, 20),     # odd q/k width, a value width that is not a multiple of 16
    (2, 6, 12, 4, 64),    # the widest value head the kernel takes
    (1, 12, 3, 3, 33),    # three value vectors, the last one with one channel
])
def test_fused_forward_matches_reference(diagonal, b, h, w, d, dv):
    term, q, k, v = term_and_inputs(b, h, w, seed=h * 7 + w, d=d, dv=dv)
    term.rel = type(term.rel)(d, MAX)  # tables of the q/k width under test
    with torch.no_grad():
        by_row, by_col = term.rel(q, h, w)
        got, got_diag = fused_cpu.relative_attention(q, k, v, by_row, by_col, h, w, d**-0.5,
                                                     diagonal)
        term.qk_dim = d
        want, want_diag = ref_attend(term, q, k, v, h, w, diagonal)
    torch.testing.assert_close(got, want, **TOL)
    if diagonal == "report":
        torch.testing.assert_close(got_diag, want_diag, **TOL)
    else:
        assert got_diag is None


@needs_kernel
def test_auto_takes_the_kernel_in_inference_only(monkeypatch):
    """BinaryTerm.attend under "auto": the kernel without autograd (no_grad, inference_mode),
    the chunked torch-op Function (with its backward) when gradients are wanted."""
    calls = []
    real = fused_cpu.relative_attention
    monkeypatch.setattr(fused_cpu, "relative_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    term, q, k, v = term_and_inputs(2, 5, 6, seed=1)
    want, _ = ref_attend(term, q, k, v, 5, 6, "keep")
    with torch.no_grad():
        out, _ = term.attend(q, k, v, 5, 6)
    torch.testing.assert_close(out, want, **TOL)
    assert len(calls) == 1
    with torch.inference_mode():
        term.attend(q, k, v, 5, 6)
    assert len(calls) == 2
    out, _ = term.attend(q, k, v, 5, 6)  # the relative tables want gradients
    assert len(calls) == 2 and out.requires_grad
    term.kernel = "chunked"  # forces the torch ops, also in inference
    with torch.no_grad():
        term.attend(q, k, v, 5, 6)
    assert len(calls) == 2


@needs_kernel
@pytest.mark.parametrize("fusion", ["dynamic", "softmax", "binary"])  # keep, report, mask
@pytest.mark.parametrize("h,w,channels_last", [(9, 7, False), (8, 8, False), (8, 8, True)])
def test_whole_block_in_eval_matches_the_torch_op_path(fusion, h, w, channels_last):
    """Through LESA2d: q, k, v are strided views of the projection (either memory format),
    L = 64 needs no key padding, L = 63 does."""
    torch.manual_seed(0)
    block = LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX).eval()
    x = torch.randn(2, C, h, w)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused = block(x)
        block.fusion.binary.kernel = "chunked"
        chunked = block(x)
    torch.testing.assert_close(fused, chunked, **TOL)


@needs_kernel
def test_results_do_not_depend_on_the_thread_count():
    """Each query row is computed whole by one thread, so the split cannot change a bit."""
    term, q, k, v = term_and_inputs(2, 8, 8, seed=3)
    with torch.no_grad():
        by_row, by_col = term.rel(q, 8, 8)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = fused_cpu.relative_attention(q, k, v, by_row, by_col, 8, 8, 0.5)[0]
            torch.set_num_threads(2)
            two = fused_cpu.relative_attention(q, k, v, by_row, by_col, 8, 8, 0.5)[0]
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_kernel
def test_nan_in_a_query_reaches_its_row_and_only_its_row():
    term, q, k, v = term_and_inputs(1, 4, 8, seed=5)
    q[0, 1, 3, 0] = float("nan")
    with torch.no_grad():
        by_row, by_col = term.rel(q, 4, 8)
        out, _ = fused_cpu.relative_attention(q, k, v, by_row, by_col, 4, 8, 0.5)
    assert out[0, 1, 3].isnan().all()
    out[0, 1, 3] = 0.0
    assert not out.isnan().any()


@needs_kernel
def test_flops_are_those_of_the_two_products():
    term, q, k, v = term_and_inputs(2, 6, 6, seed=2)
    b, heads, length, d = q.shape
    with torch.no_grad():
        by_row, by_col = term.rel(q, 6, 6)
        flops = count_flops(lambda: fused_cpu.relative_attention(q, k, v, by_row, by_col, 6, 6,
                                                                  0.5))
    assert flops == 2 * b * heads * length * length * (d + v.shape[-1])


def test_value_heads_wider_than_the_kernel_take_the_chunked_path():
    term, q, k, v = term_and_inputs(1, 3, 4, seed=4, dv=fused_cpu.MAX_VALUE_WIDTH + 1)
    assert not fused_cpu.applies(q, v)
    want, _ = ref_attend(term, q, k, v, 3, 4, "keep")
    with torch.no_grad():
        out, _ = term.attend(q, k, v, 3, 4)
    torch.testing.assert_close(out, want, **TOL)


def _in_subprocess(code: str, **env) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CHECK_FALLBACK = """
import torch
from lesa import fused_cpu
from test_fastpaths import ref_attend
from test_fused_cpu import term_and_inputs
print(fused_cpu.status())
term, q, k, v = term_and_inputs(2, 5, 6, seed=1)
with torch.no_grad():
    out, _ = term.attend(q, k, v, 5, 6)
want, _ = ref_attend(term, q, k, v, 5, 6, "keep")
torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
print("fell back")
"""


def test_turned_off_falls_back_with_the_reason():
    out = _in_subprocess(CHECK_FALLBACK, LESA_FUSED_CPU="0")
    assert out.splitlines() == ["off: turned off (LESA_FUSED_CPU=0)", "fell back"]


@pytest.mark.skipif(not HERE_IT_SHOULD_RUN, reason="the kernel is not built here anyway")
def test_failed_build_falls_back_and_says_why(tmp_path):
    """A compiler that fails (here `false`) in an empty cache: the reason is kept, the
    attention still runs (on the torch ops), and nothing is left in the cache."""
    out = _in_subprocess(CHECK_FALLBACK, CXX="false", LESA_KERNEL_CACHE=str(tmp_path))
    lines = out.splitlines()
    assert lines[0] == "off: compiling fused_attention.cpp failed:" and lines[-1] == "fell back"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HERE_IT_SHOULD_RUN, reason="the kernel is not built here anyway")
def test_fresh_cache_builds_once(tmp_path):
    code = "from lesa import fused_cpu; print(fused_cpu.status())"
    assert _in_subprocess(code, LESA_KERNEL_CACHE=str(tmp_path)).strip() == "in use"
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].endswith(".so")
    stamp = (tmp_path / built[0]).stat().st_mtime_ns
    assert _in_subprocess(code, LESA_KERNEL_CACHE=str(tmp_path)).strip() == "in use"
    assert (tmp_path / built[0]).stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.skipif(not HERE_IT_SHOULD_RUN, reason="the kernel is not built here anyway")
def test_damaged_cache_entry_is_rebuilt(tmp_path):
    """A cached library that does not load (truncated by a full disk, a bad copy) is built
    again, not a crash at the first attention call."""
    code = "from lesa import fused_cpu; print(fused_cpu.status())"
    assert _in_subprocess(code, LESA_KERNEL_CACHE=str(tmp_path)).strip() == "in use"
    (built,) = tmp_path.iterdir()
    built.write_bytes(b"not a shared library")
    assert _in_subprocess(code, LESA_KERNEL_CACHE=str(tmp_path)).strip() == "in use"
    assert built.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.skipif(not HERE_IT_SHOULD_RUN, reason="the kernel is not built here anyway")
def test_unwritable_cache_falls_back_and_names_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = _in_subprocess(CHECK_FALLBACK, LESA_KERNEL_CACHE=str(blocker / "kernels"))
    lines = out.splitlines()
    assert lines[0].startswith(f"off: kernel cache {blocker / 'kernels'} is not writable")
    assert "LESA_KERNEL_CACHE" in lines[0] and lines[-1] == "fell back"


@pytest.mark.skipif(not (HERE_IT_SHOULD_RUN and torch.backends.cpu.get_cpu_capability()
                         == "AVX512"), reason="the AVX2 build is tested on AVX-512 CPUs")
def test_the_avx2_build_matches_reference_too(tmp_path):
    """The kernel's AVX2 build (the one AVX2-only CPUs get: its own exp, masks, reductions and
    row groups) through this file's correctness tests, with torch's capability lowered to AVX2."""
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "LESA_KERNEL_CACHE": str(tmp_path)}
    code = "from lesa import fused_cpu; print(fused_cpu.status(), fused_cpu.tile())"
    assert _in_subprocess(code, **avx2).strip() == "in use 16"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", __file__,
                           "-k", "(matches_reference or whole_block or nan_in or thread) "
                           "and not avx2"],
                          capture_output=True, text=True, env={**os.environ, **avx2},
                          cwd=Path(__file__).parent)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and " passed" in summary and "skipped" not in summary, \
        proc.stdout[-3000:]
