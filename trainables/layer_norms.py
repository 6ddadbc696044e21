"""Closed forms of per-example squared gradient norms for one layer, from its input and δ.

Given a layer's input ``a`` and δ = ∂ℓ_n/∂s (the gradient of example n's own loss with respect to
the layer's output s), the per-example weight gradient is G_n = Σ_t δ_{n,t} a_{n,t}ᵀ over the
positions t where the layer is applied. ‖G_n‖² is computed either by **instantiating** G_n
(cost ∝ N·T·c_out·p, memory N·c_out·p) or by the **ghost** Gram form ‖G_n‖² = ⟨A_nA_nᵀ, D_nD_nᵀ⟩
(cost ∝ N·T²·(p + c_out), memory N·T²), whichever is cheaper: ghost iff 2T² ≤ c_out·p
(Goodfellow 2015; Rochette et al. 2019; Li et al. 2021; the mixed rule of Bu et al. 2022).

Convolutions avoid a k²-times larger im2col tensor: the kernel is visited offset by offset, each
offset a strided view of the padded input, as measured fastest on CPU (fisher-trace notes §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear(module: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) squared norms of the weight and bias gradients; inputs (N, …, d_in)."""
    n = a.shape[0]
    a = a.reshape(n, -1, a.shape[-1])  # (N, T, d_in)
    d = delta.reshape(n, -1, delta.shape[-1])  # (N, T, d_out)
    out = torch.zeros(n, dtype=d.dtype, device=d.device)
    if module.weight.requires_grad:
        if a.shape[1] == 1:  # rank one: ‖δ aᵀ‖² = ‖a‖²‖δ‖²
            out = out + a.pow(2).sum((1, 2)) * d.pow(2).sum((1, 2))
        else:
            out = out + _outer_sq_norm(d, a)
    if module.bias is not None and module.bias.requires_grad:
        out = out + d.sum(1).pow(2).sum(1)
    return out


def _outer_sq_norm(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """‖Σ_t d_t a_tᵀ‖² per example for d (N, T, c) and a (N, T, p), ghost or instantiated."""
    t, c, p = a.shape[1], d.shape[2], a.shape[2]
    if 2 * t * t <= c * p:
        return (a @ a.transpose(1, 2) * (d @ d.transpose(1, 2))).sum((1, 2))
    return (d.transpose(1, 2) @ a).pow(2).sum((1, 2))


def conv(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) squared norms for a Conv1d/Conv2d of any stride, padding, dilation and groups."""
    if isinstance(module, nn.Conv1d):  # as a 2-D convolution of height 1
        a, delta = a.unsqueeze(2), delta.unsqueeze(2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        pad = (*module._reversed_padding_repeated_twice, 0, 0)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        pad = tuple(module._reversed_padding_repeated_twice)
    n, groups = a.shape[0], module.groups
    c_out_g, c_in_g = module.out_channels // groups, module.in_channels // groups
    out = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    if module.weight.requires_grad:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        padded = F.pad(a, pad, mode=mode) if any(pad) else a
        blocks, d = _im2col_blocks(
            padded.reshape(n * groups, c_in_g, *padded.shape[2:]),
            delta.reshape(n * groups, c_out_g, *delta.shape[2:]),
            kernel,
            stride,
            dilation,
        )
        t = d.shape[2]
        if 2 * t * t <= c_out_g * c_in_g * kernel[0] * kernel[1]:  # ghost: ⟨Σ_blocks UᵀU, DᵀD⟩
            gram = torch.zeros(n * groups, t, t, dtype=d.dtype, device=d.device)
            for u in blocks:
                gram += u.transpose(1, 2) @ u
            sq = (gram * (d.transpose(1, 2) @ d)).sum((1, 2))
        else:  # instantiate, one block of G_n's columns at a time
            sq = torch.stack([(d @ u.transpose(1, 2)).pow(2).sum((1, 2)) for u in blocks]).sum(0)
        out = out + sq.reshape(n, groups).sum(1)
    if module.bias is not None and module.bias.requires_grad:
        out = out + delta.sum((2, 3)).pow(2).sum(1)
    return out


UNFOLD_MAX_ROWS = 64  # c_in·k² up to which one unfolded block beats the per-offset loop (first layers)


def _im2col_blocks(
    a: torch.Tensor, delta: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The padded input ``a`` (M, c, H, W) seen by the kernel as (M, rows, T) blocks whose rows
    together form the im2col matrix, and δ (M, c_out, h, w) as the matching (M, c_out, T).

    - c·k² small (first layers): one unfolded block, T = h·w.
    - stride 1: positions are laid out on the padded width (T = h·W), so every kernel offset is
      a contiguous slice of the flattened input, without a copy; δ gets zero columns at the
      W − w positions that do not exist, which cancels their (garbage) inputs exactly.
    - otherwise: one copied strided view per kernel offset (never the k²-times larger tensor).
    """
    m, c, _, width = a.shape
    c_out, h, w = delta.shape[1:]
    (kh, kw), (s0, s1), (d0, d1) = kernel, stride, dilation
    if c * kh * kw <= UNFOLD_MAX_ROWS:
        st = a.stride()
        size = (m, c, kh, kw, h, w)
        strides = (st[0], st[1], st[2] * d0, st[3] * d1, st[2] * s0, st[3] * s1)
        return [a.as_strided(size, strides).reshape(m, c * kh * kw, h * w)], delta.reshape(m, c_out, h * w)
    if (s0, s1) == (1, 1):
        extra_rows = -(-(kw - 1) * d1 // width)  # so that the last offset's slice stays inside
        flat = (F.pad(a, (0, 0, 0, extra_rows)) if extra_rows else a).reshape(m, c, -1)
        length = h * width
        blocks = [flat[:, :, i * d0 * width + j * d1 :][:, :, :length] for i in range(kh) for j in range(kw)]
        return blocks, F.pad(delta, (0, width - w)).reshape(m, c_out, length)
    views = [
        a[:, :, i * d0 :, j * d1 :][:, :, : (h - 1) * s0 + 1 : s0, : (w - 1) * s1 + 1 : s1].reshape(m, c, h * w)
        for i in range(kh)
        for j in range(kw)
    ]
    return views, delta.reshape(m, c_out, h * w)


def batch_norm(module: nn.BatchNorm1d | nn.BatchNorm2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) squared norms of γ and β gradients for BatchNorm with running statistics (eval)."""
    assert module.running_mean is not None and module.running_var is not None
    shape = (1, -1) + (1,) * (a.dim() - 2)
    x_hat = (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
    reduce = tuple(range(2, a.dim()))
    out = torch.zeros(a.shape[0], dtype=delta.dtype, device=delta.device)
    if module.weight is not None and module.weight.requires_grad:
        g = (delta * x_hat).sum(reduce) if reduce else delta * x_hat
        out = out + g.pow(2).sum(1)
    if module.bias is not None and module.bias.requires_grad:
        b = delta.sum(reduce) if reduce else delta
        out = out + b.pow(2).sum(1)
    return out


def closed_form(module: nn.Module):  # type: ignore[no-untyped-def]
    """The closed-form norm function for ``module`` in eval mode, or ``None`` (use the fallback).

    A module class may supply its own as a method ``per_example_sq_grad_norms(a, delta)``: the
    (N,) squared norms of the gradients of its own parameters, from its first input ``a`` and δ
    with respect to its output (e.g. :class:`trainables.models.SkipInit`).
    """
    own = getattr(type(module), "per_example_sq_grad_norms", None)
    if own is not None:
        return own
    if type(module) is nn.Linear:
        return linear
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return conv
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.running_mean is not None:  # type: ignore[union-attr]
        return batch_norm
    return None
