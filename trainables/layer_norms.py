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
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    a = F.pad(a, pad, mode=mode) if any(pad) else a
    n, groups = a.shape[0], module.groups
    h_out, w_out = delta.shape[2], delta.shape[3]
    t = h_out * w_out
    c_out_g, c_in_g = module.out_channels // groups, module.in_channels // groups
    d = delta.reshape(n * groups, c_out_g, t)  # (N·g, c_out/g, T)
    out = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    if module.weight.requires_grad:
        views = [
            a[:, :, i * dilation[0] :, j * dilation[1] :][
                :, :, : (h_out - 1) * stride[0] + 1 : stride[0], : (w_out - 1) * stride[1] + 1 : stride[1]
            ].reshape(n * groups, c_in_g, t)
            for i in range(kernel[0])
            for j in range(kernel[1])
        ]  # each (N·g, c_in/g, T): the input seen by one kernel offset
        p = c_in_g * len(views)
        if 2 * t * t <= c_out_g * p:  # ghost: ⟨Σ_offsets VᵀV, DᵀD⟩
            gram = torch.zeros(n * groups, t, t, dtype=d.dtype, device=d.device)
            for v in views:
                gram += v.transpose(1, 2) @ v
            sq = (gram * (d.transpose(1, 2) @ d)).sum((1, 2))
        else:  # instantiate, one kernel slice of G_n at a time
            sq = torch.stack([(d @ v.transpose(1, 2)).pow(2).sum((1, 2)) for v in views]).sum(0)
        out = out + sq.reshape(n, groups).sum(1)
    if module.bias is not None and module.bias.requires_grad:
        out = out + delta.sum((2, 3)).pow(2).sum(1)
    return out


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
    """The closed-form norm function for ``module`` in eval mode, or ``None`` (use the fallback)."""
    if type(module) is nn.Linear:
        return linear
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return conv
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.running_mean is not None:  # type: ignore[union-attr]
        return batch_norm
    return None
