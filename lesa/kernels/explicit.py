"""The binary term's attention from materialised logits: the reference path.

Used where the logits cannot be folded into the other paths' operands (the release's raster
positions, lesa/raster.py), or on request (`BinaryTerm.kernel = "explicit"`): plain autograd over
a (B, heads, L, L) logits tensor, so memory grows with L^2 in training and in inference.
"""
from __future__ import annotations

import torch


def attend(logits: torch.Tensor, v: torch.Tensor, diagonal: str = "keep"):
    """softmax_j(logits) v, diagonal "keep", "mask" (j = i removed, renormalised; needs L > 1)
    or "report". Returns (out (B, heads, L, dv), a_ii (B, heads, L) or None, the weights a)."""
    if diagonal == "mask":
        eye = torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    a = logits.softmax(-1)
    a_ii = a.diagonal(dim1=-2, dim2=-1) if diagonal == "report" else None
    return a @ v, a_ii, a
