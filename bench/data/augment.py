"""Batched tensor augmentation: torch ops on whole (B, C, H, W) batches, no PIL, no per-item
Python. Every draw comes from the `generator` passed in (the batch's own seed)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, generator: torch.Generator, *, degrees: float,
                  translate: float, scale: tuple[float, float]) -> torch.Tensor:
    """Per-image random rotation/translation/scale of a (B, C, H, W) float batch, zero fill."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    shift = (u[:, 2:] * 2 - 1) * (2 * translate)  # normalised coordinates span 2 per side
    cos, sin = angle.cos(), angle.sin()
    # affine_grid maps output to input coordinates, so theta is the inverse of p -> s R p + t
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
    inverse = inverse / s[:, None, None]
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, generator: torch.Generator, *, padding: int) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size (RandomCrop(pad=...))."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
