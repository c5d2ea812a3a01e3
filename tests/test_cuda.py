"""The GPU paths against the CPU reference math (skipped where torch sees no CUDA device).

On CUDA, BinaryTerm's kernel "auto" takes fused SDPA with the relative logits folded into
widened q/k, the windowed term runs its blocked SDPA calls, and bf16 autocast is the usual
training precision. These tests run the same modules on the GPU and on the CPU from one set of
weights and compare outputs and every gradient: the attention core against the explicit
reference math of test_fastpaths at 1e-5 (fp32, TF32 off), whole blocks and the backbone
against the CPU at 1e-4 (two devices' convolution and BN rounding), and bf16 autocast against
fp32 at bf16 precision. Run on a GPU machine with `python -m pytest tests/test_cuda.py`.

LESA_TEST_DEVICE=cpu runs this file on the CPU with the SDPA kernel forced, to check the file
itself on a machine without a GPU (the bf16 autocast tests then use CPU autocast).
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

import lesa
from lesa import FUSIONS, BinaryTerm, LESA2d
from lesa.window import WindowedBinaryTerm
from test_fastpaths import (C, HEADS, MAX, MODES, TOL, WINDOW_CASES, neighbourhood, qkv,
                            ref_attend)
from test_lesa_math import randomize_bn

DEVICE = os.environ.get("LESA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device")
BLOCK_TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def exact_fp32():
    """cuBLAS and cuDNN may round fp32 through TF32 (10-bit mantissa); these tests compare
    fp32 math, so it is switched off for their duration."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` on DEVICE; on the CPU stand-in its binary terms are forced to SDPA."""
    dev = copy.deepcopy(module).to(DEVICE)
    if DEVICE == "cpu":
        for m in dev.modules():
            if isinstance(m, BinaryTerm):
                m.kernel = "sdpa"
    return dev


def attend_and_grads(term, leaves, fn, device):
    """fn(term, q, k, v) -> (out, a_ii or None) on `device`; returns out, a_ii and the
    gradients of q, k, v and the relative tables of a fixed random readout, all on the CPU."""
    leaves = [t.detach().to(device).requires_grad_(True) for t in leaves]
    out, a_ii = fn(term, *leaves)
    g = torch.Generator().manual_seed(100)
    loss = (out * torch.randn(out.shape, generator=g).to(device)).sum()
    if a_ii is not None:
        loss = loss + (a_ii * torch.randn(a_ii.shape, generator=g).to(device)).sum()
    grads = torch.autograd.grad(loss, [*leaves, term.rel.rel_h, term.rel.rel_w])
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return cpu(out), cpu(a_ii), [cpu(t) for t in grads]


def assert_matches(got, want, tol, what):
    out_g, a_g, grads_g = got
    out_w, a_w, grads_w = want
    torch.testing.assert_close(out_g, out_w, **tol, msg=lambda m: f"{what} output: {m}")
    if a_w is not None:
        torch.testing.assert_close(a_g, a_w, **tol, msg=lambda m: f"{what} a_ii: {m}")
    for name, g, w in zip(["q", "k", "v", "rel_h", "rel_w"], grads_g, grads_w):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, n=name: f"{what} grad {n}: {m}")


# ---------------------------------------------------------------- attention cores

@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w", [(1, 4, 4), (2, 5, 7), (2, 12, 3), (1, 16, 16)])
def test_global_attend_on_the_device_equals_the_reference(diagonal, b, h, w):
    torch.manual_seed(h * 7 + w)
    term = BinaryTerm(C, HEADS, max_map_size=max(MAX, h, w))
    dev = on_device(term)
    q, k, v = qkv(b, h * w, seed=h + w)
    assert dev.uses_sdpa(q.to(DEVICE))  # the device path, not the CPU's chunked one
    got = attend_and_grads(dev, [q, k, v],
                           lambda t, *l: t.attend(*l, h, w, diagonal), DEVICE)
    want = attend_and_grads(term, [q, k, v],
                            lambda t, *l: ref_attend(t, *l, h, w, diagonal), "cpu")
    assert_matches(got, want, TOL, f"global {diagonal}")


@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w,window,halo", WINDOW_CASES)
def test_windowed_attend_on_the_device_equals_explicit_masked_attention(diagonal, b, h, w,
                                                                        window, halo):
    torch.manual_seed(window * 10 + halo)
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=window, halo=halo)
    dev = on_device(term)
    q, k, v = qkv(b, h * w, seed=h * w)
    allowed = neighbourhood(h, w, window, halo)
    got = attend_and_grads(dev, [q, k, v],
                           lambda t, *l: t.attend(*l, h, w, diagonal), DEVICE)
    want = attend_and_grads(term, [q, k, v],
                            lambda t, *l: ref_attend(t, *l, h, w, diagonal, allowed), "cpu")
    assert_matches(got, want, TOL, f"windowed {diagonal}")


def test_windowed_inference_on_the_device_is_one_pass(monkeypatch):
    """Off the CPU, inference does not cut the map into cache-sized chunks (each chunk costs
    launches; on the H100 16 MiB chunks made inference 3x slower than training), and gives the
    numbers of the training-mode pass."""
    monkeypatch.setattr(WindowedBinaryTerm, "chunk_bytes", 1)  # the CPU: one block row a chunk
    term = on_device(WindowedBinaryTerm(64, 4, max_map_size=32, window=8, halo=4))
    q, k, v = (t.to(DEVICE) for t in qkv(4, 32 * 32, d=8, dv=16, seed=9))
    want_out, want_a = term.attend(q, k, v, 32, 32, "report")  # q, k, v require grad
    calls = []
    rows = WindowedBinaryTerm._rows
    monkeypatch.setattr(WindowedBinaryTerm, "_rows",
                        lambda self, *a, **kw: calls.append(1) or rows(self, *a, **kw))
    with torch.no_grad():
        out, a_ii = term.attend(q, k, v, 32, 32, "report")
    assert len(calls) == (1 if DEVICE != "cpu" else 4 * 4)  # 4 images x 4 block rows on the CPU
    torch.testing.assert_close(out, want_out.detach(), **TOL)
    torch.testing.assert_close(a_ii, want_a.detach(), **TOL)


# ---------------------------------------------------------------- whole blocks and networks

def output_and_grads(module, x, device):
    x = x.to(device).requires_grad_(True)
    y = module(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device)
    grads = torch.autograd.grad((y * w).sum(), [x, *module.parameters()])
    return y.detach().cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_strategy_on_the_device_equals_the_cpu(fusion, window, train):
    if window is not None and fusion in ("conv", "unary"):
        pytest.skip("no binary term to window")
    torch.manual_seed(3)
    extra = {} if window is None else {"window": window}
    block = randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **extra))
    block.train(train)
    dev = on_device(block)
    x = torch.randn(2, C, 7, 9)
    y_d, g_d = output_and_grads(dev, x, DEVICE)
    y_c, g_c = output_and_grads(block, x, "cpu")
    torch.testing.assert_close(y_d, y_c, **BLOCK_TOL)
    names = ["x", *(n for n, _ in block.named_parameters())]
    for name, g, w in zip(names, g_d, g_c):
        torch.testing.assert_close(g, w, **BLOCK_TOL, msg=lambda m, n=name: f"grad {n}: {m}")
    if train:  # BN running statistics moved the same way on both devices
        for (name, b_d), (_, b_c) in zip(dev.named_buffers(), block.named_buffers()):
            torch.testing.assert_close(b_d.cpu(), b_c, **BLOCK_TOL,
                                       msg=lambda m, n=name: f"buffer {n}: {m}")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("window", [None, {3: None, 4: 4}], ids=["global", "windowed-stage4"])
def test_backbone_under_bf16_autocast_tracks_fp32(window):
    """The suite's GPU configs train with precision bf16-mixed: the LESA backbone's logits and
    gradients under bf16 autocast stay within bf16 rounding of the fp32 network, and finite."""
    torch.manual_seed(0)
    net = on_device(lesa.build_backbone("resnet_tiny", fusion="dynamic", num_classes=10,
                                        window=window)).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    y32 = net(x)
    g32 = torch.autograd.grad(y32.square().mean(), list(net.parameters()))
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y16 = net(x)
        g16 = torch.autograd.grad(y16.float().square().mean(), list(net.parameters()))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    assert _rel_err(y16, y32) < 0.05
    flat16 = torch.cat([g.float().flatten() for g in g16])
    flat32 = torch.cat([g.flatten() for g in g32])
    assert torch.isfinite(flat16).all()
    assert _rel_err(flat16, flat32) < 0.1
    # bf16 really ran: the two are not bit-identical
    assert not torch.equal(y16.float(), y32)


@pytest.mark.parametrize("fusion", ["sa", "dynamic"])
def test_bf16_block_matches_its_fp32_self(fusion):
    """A block cast to bf16 (the profile's --dtype bfloat16) stays within bf16 rounding."""
    torch.manual_seed(5)
    block = on_device(randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX))).eval()
    x = torch.randn(2, C, 8, 8).to(DEVICE)
    y32 = block(x)
    y16 = copy.deepcopy(block).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert _rel_err(y16, y32) < 0.05
