"""Per-row gradients of one layer's parameters, from its input ``a`` (N, …) and δ (K, N, …).

The rows of a Gram matrix (:mod:`trainables.spectrum`) are per-(label set, example) gradients;
their inner products are sums over layers of what these functions give. Two forms:

- **factors** for a Linear layer applied once per example: its weight gradient is δ aᵀ, so
  ⟨G_r, G_s⟩ = (δ_r·δ_s)(a_i·a_j) and only δ (K·N rows of d_out) and a (N rows of d_in) are kept,
  never the d_out × d_in gradients (the big layers of a network cost least this way);
- **instantiated** rows (K·N, P) for every other layer: convolutions by im2col (one unfold of
  the padded input, then one product per group), BatchNorm's γ and β, a Linear over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.layer_norms import as_conv2d, weight_is_a_parameter


@dataclass(frozen=True, slots=True)
class LinearFactors:
    """⟨G_r, G_s⟩ = (δ_r·δ_s)·(a_i·a_j + bias) for rows r = (k, i), s = (k', j)."""

    a: torch.Tensor | None  # (N, d_in), None when the weight is frozen
    delta: torch.Tensor  # (K, N, d_out)
    bias: bool  # the bias is trainable


def has_row_gradients(module: nn.Module) -> bool:
    """Whether :func:`rows` knows this module (else the passes send it to the exact fallback)."""
    if not weight_is_a_parameter(module):
        return False
    if type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d):
        return True
    return type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.running_mean is not None  # type: ignore[union-attr]


def rows(module: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> LinearFactors | torch.Tensor:
    """The row gradients of ``module``'s trainable parameters: factors, or (K, N, P)."""
    if type(module) is nn.Linear:
        return _linear(module, a, delta)
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return _conv(module, a, delta)  # type: ignore[arg-type]
    return _batch_norm(module, a, delta)  # type: ignore[arg-type]


def _trainable(p: torch.Tensor | None) -> bool:
    return p is not None and p.requires_grad


def _linear(module: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> LinearFactors | torch.Tensor:
    k, n = delta.shape[:2]
    if a.dim() == 2:
        return LinearFactors(a if _trainable(module.weight) else None, delta, _trainable(module.bias))
    a = a.reshape(n, -1, a.shape[-1])  # (N, T, d_in): applied at T positions
    d = delta.reshape(k, n, -1, delta.shape[-1])
    parts = []
    if _trainable(module.weight):
        parts.append(torch.einsum("kntd,nte->knde", d, a).flatten(2))
    if _trainable(module.bias):
        parts.append(d.sum(2))
    return torch.cat(parts, 2)


def _conv(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    a, d, (kernel, stride, dilation, pad, _) = as_conv2d(module, a, delta)
    k, n, c_out, h, w = d.shape
    parts = []
    if _trainable(module.weight):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        padded = F.pad(a, pad, mode=mode) if any(pad) else a
        cols = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (N, c_in·kh·kw, h·w)
        groups = module.groups
        cols = cols.reshape(n, groups, -1, h * w)
        dd = d.reshape(k, n, groups, c_out // groups, h * w)
        parts.append(torch.einsum("kngol,ngpl->kngop", dd, cols).reshape(k, n, -1))
    if _trainable(module.bias):
        parts.append(d.sum((3, 4)))
    return torch.cat(parts, 2)


def _batch_norm(module: nn.BatchNorm1d | nn.BatchNorm2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    assert module.running_mean is not None and module.running_var is not None
    shape = (-1,) + (1,) * (a.dim() - 2)
    x_hat = (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var + module.eps).reshape(shape)
    parts = []
    if _trainable(module.weight):
        parts.append(torch.einsum("knc...,nc...->knc", delta, x_hat) if a.dim() > 2 else delta * x_hat)
    if _trainable(module.bias):
        parts.append(delta.sum(tuple(range(3, delta.dim()))) if a.dim() > 2 else delta)
    return torch.cat(parts, 2)
