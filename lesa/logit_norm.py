"""The release's logit scaling: each logit term BatchNorm'd per head, the normalised terms summed.

    s_ij = sum_t BN_t(s^t_ij),   BN_t on head h: gamma_th (s - mu_th) / sqrt(var_th + eps) + beta_th

over the terms t (q.k and q.r; with the raster positions also k.r), mu and var taken over
(batch, i, j) in training and BatchNorm's running estimates in evaluation (Axial-DeepLab's
recipe, the release's `bn_similarity`, one channel per term and head). A softmax over j ignores
what does not depend on j, so the attention equals softmax_j(sum_t w_th s^t_ij) with
w_th = gamma_th / sqrt(var_th + eps): a learnt per-head temperature per term. `LogitNorm` gives
the w_th (and the shift, which no softmax sees) and keeps the running statistics; the statistics come from the caller, as closed forms
for the decomposed 2-D relative logits (no L x L tensor, so every compute path keeps working) or
from the materialised logits on the explicit path.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class LogitNorm(nn.BatchNorm2d):
    """BatchNorm2d(terms * heads), channel t * heads + h (the release's order): the parameters,
    buffers and state dict of the release's `bn_similarity`, used through `weights`."""

    def __init__(self, heads: int, terms: int):
        super().__init__(terms * heads)
        self.heads, self.terms = heads, terms

    def weights(self, moments: Callable[[], tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        """(terms, heads) multipliers w_th and the (heads,) shift sum_t (beta_th - w_th mu_th),
        so that sum_t BN_t(s^t) = sum_t w_th s^t + shift_h. `moments()` gives the batch's
        per-channel mean, biased variance and count; it is called (and the running statistics
        updated, as BatchNorm2d does) only in training. The shift changes no softmax, but
        keeping it gives beta its (zero) gradient, so no parameter is left unused (DDP)."""
        if self.training:
            mean, var, count = moments()
            if count <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got "
                                 f"{count} logits per head (batch 1 on a 1x1 map)")
            if self.track_running_stats:
                self._update(mean, var, count)
        else:
            mean, var = self.running_mean, self.running_var
        w = self.weight / torch.sqrt(var + self.eps)
        shift = (self.bias - w * mean).view(self.terms, self.heads).sum(0)
        return w.view(self.terms, self.heads), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("LogitNorm is used through weights(), not called on a tensor")

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        factor = (self.momentum if self.momentum is not None
                  else 1.0 / float(self.num_batches_tracked))
        self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean), alpha=factor)
        unbiased = var.detach().to(self.running_var) * (count / (count - 1))
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def _per_head(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but 1 (the heads)."""
    return t.sum(dim=[a for a in range(t.dim()) if a != 1])


def content_moments(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the sum and the sum of squares over (b, i, j) of q_i . k_j, q and k
    (B, heads, L, d), without the L x L logits: sum_ij q_i.k_j = (sum_i q_i).(sum_j k_j) and
    sum_ij (q_i.k_j)^2 = <Q^T Q, K^T K> (Gram matrices, d x d)."""
    total = _per_head(q.sum(2) * k.sum(2))
    squares = _per_head((q.transpose(-1, -2) @ q) * (k.transpose(-1, -2) @ k))
    return total, squares


def relative_moments(by_row: torch.Tensor, by_col: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """The same for r_ij = by_row[i, y_j] + by_col[i, x_j] (by_row (..., H), by_col (..., W)
    over the query axes): sum_j r_ij = W sum_y A + H sum_x B and sum_j r_ij^2 = W sum_y A^2 +
    H sum_x B^2 + 2 (sum_y A)(sum_x B)."""
    height, width = by_row.shape[-1], by_col.shape[-1]
    a, b = by_row.sum(-1), by_col.sum(-1)
    total = _per_head(width * a + height * b)
    squares = _per_head(width * by_row.square().sum(-1) + height * by_col.square().sum(-1)
                        + 2 * a * b)
    return total, squares


def from_sums(sums: list[tuple[torch.Tensor, torch.Tensor]], count: int):
    """(mean, biased variance, count) per channel t * heads + h from per-term (sum, squares)."""
    total = torch.cat([s for s, _ in sums]) / count
    squares = torch.cat([q for _, q in sums]) / count
    return total, (squares - total.square()).clamp_min(0.0), count


def dense_moments(terms: list[torch.Tensor]):
    """(mean, biased variance, count) per channel from materialised (B, heads, L, L) terms."""
    count = terms[0].shape[0] * terms[0].shape[2] * terms[0].shape[3]
    mean = torch.cat([t.mean(dim=(0, 2, 3)) for t in terms])
    var = torch.cat([t.var(dim=(0, 2, 3), unbiased=False) for t in terms])
    return mean, var, count
