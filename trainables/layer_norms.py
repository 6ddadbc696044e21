"""Closed forms of per-example squared gradient norms for one layer, from its input and δ.

Given a layer's input ``a`` and δ = ∂ℓ_n/∂s (the gradient of example n's own loss with respect to
the layer's output s), the per-example weight gradient is G_n = Σ_t δ_{n,t} a_{n,t}ᵀ over the
positions t where the layer is applied. ‖G_n‖² is computed either by **instantiating** G_n
(cost ∝ T·c_out·p per example, memory c_out·p) or by the **ghost** Gram form
‖G_n‖² = ⟨A_nA_nᵀ, D_nD_nᵀ⟩ (cost ∝ T²·(p + c_out), memory T²), whichever the cost model below
says is cheaper (Goodfellow 2015; Rochette et al. 2019; Li et al. 2021; Bu et al. 2022).

Every function takes ``a`` (N, …) and δ either (N, …) → (N,) norms, or with a leading class
dimension (K, N, …) → (K, N): the K output gradients of the same N inputs (e.g. one per label),
without repeating the inputs K times. Measured kernels (CPU, torch 2.13, benchmarks/README.md):

- convolutions are instantiated by one **grouped convolution weight-gradient** with the examples
  as groups (Rochette et al.): oneDNN computes all N per-example weight gradients in one call at
  1.0–1.5× the cost of the batched weight gradient, 2–3× faster than batched matrix products
  over kernel offsets; chunked over examples so at most :data:`INSTANTIATE_ELEMENTS` are held;
- first layers with few input channels (c_in·k² ≤ :data:`UNFOLD_MAX_ROWS`) unfold into one block
  and one batched matrix product instead (grouped convolutions with 3 channels per group are slow);
- the ghost form where it is cheaper by more than :data:`GHOST_PENALTY`, its kernels being
  less efficient per flop (small maps, many channels: late ResNet stages, wide nets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

INSTANTIATE_ELEMENTS = 1 << 24  # per-example gradients held at once (64 MiB of fp32)
UNFOLD_MAX_ROWS = 64  # c_in·k² up to which one unfolded block beats the grouped convolution
GROUP_WEIGHT_MAX = 18432  # weight elements per group of one grouped call (64·32·3·3; 2× more: 2–3× slower)
GHOST_PENALTY = 1.0  # ghost is chosen when its flops are below instantiate's / GHOST_PENALTY

NormFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (module, a, δ) → norms


def _with_classes(a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """δ as (K, N, …) and whether it came without the class dimension (K = 1)."""
    if delta.dim() == a.dim() + 1:
        return delta, False
    return delta.unsqueeze(0), True


def _sq(x: torch.Tensor, start: int) -> torch.Tensor:
    """Σ x² over the dimensions from ``start`` on (one fused reduction: 2–3× faster than
    ``x.pow(2).sum()`` or ``vecdot`` on CPU, which write x² first)."""
    return torch.linalg.vector_norm(x.flatten(start), dim=-1).square()


def _result(out: torch.Tensor, single: bool) -> torch.Tensor:
    return out[0] if single else out


def linear(module: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) or (K, N) squared norms of the weight and bias gradients; inputs (N, …, d_in)."""
    d, single = _with_classes(a, delta)
    k, n = d.shape[:2]
    a = a.reshape(n, -1, a.shape[-1])  # (N, T, d_in)
    d = d.reshape(k, n, -1, d.shape[-1])  # (K, N, T, d_out)
    out = torch.zeros(k, n, dtype=d.dtype, device=d.device)
    if module.weight.requires_grad:
        if a.shape[1] == 1:  # rank one: ‖δ aᵀ‖² = ‖a‖²‖δ‖²
            out = out + _sq(a, 1) * _sq(d, 2)
        else:
            out = out + _outer_sq_norm(d, a)
    if module.bias is not None and module.bias.requires_grad:
        out = out + _sq(d.sum(2), 2)
    return _result(out, single)


def _ghost_is_cheaper(k: int, t: int, c_out: int, p: int) -> bool:
    """Flops of K classes: ghost T²·(p + K·c_out) (the input Gram is shared) vs K·T·c_out·p."""
    return GHOST_PENALTY * t * t * (p + k * c_out) < k * t * c_out * p


def _outer_sq_norm(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """‖Σ_t d_t a_tᵀ‖² for d (K, N, T, c) and a (N, T, p) → (K, N), ghost or instantiated."""
    k, _, t, c = d.shape
    if _ghost_is_cheaper(k, t, c, a.shape[2]):
        gram = a @ a.transpose(1, 2)  # (N, T, T), shared by the classes
        return torch.stack([(gram * (dk @ dk.transpose(1, 2))).sum((1, 2)) for dk in d])
    return torch.stack([_sq(dk.transpose(1, 2) @ a, 1) for dk in d])


def conv(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) or (K, N) squared norms for a Conv1d/Conv2d of any stride, padding, dilation, groups."""
    d, single = _with_classes(a, delta)
    a, d, (kernel, stride, dilation, pad, padding) = as_conv2d(module, a, d)
    k, n = d.shape[:2]
    out = torch.zeros(k, n, dtype=d.dtype, device=d.device)
    if module.weight.requires_grad:
        groups, (h, w) = module.groups, d.shape[3:]
        c_in_g, c_out_g = module.in_channels // groups, module.out_channels // groups
        p, t = c_in_g * kernel[0] * kernel[1], h * w
        blocks = p <= UNFOLD_MAX_ROWS or _ghost_is_cheaper(k, t, c_out_g, p)
        if blocks or isinstance(padding, str) or module.padding_mode != "zeros":  # pad here
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            a, padding = (F.pad(a, pad, mode=mode) if any(pad) else a), (0, 0)
        if blocks:
            out = out + _blocks_sq_norm(a, d, groups, kernel, stride, dilation)
        else:
            out = out + _grouped_sq_norm(a, d, groups, kernel, stride, padding, dilation)  # type: ignore[arg-type]
    if module.bias is not None and module.bias.requires_grad:
        out = out + _sq(d.sum((3, 4)), 2)
    return _result(out, single)


ConvGeometry = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...] | str]


def as_conv2d(
    module: nn.Conv1d | nn.Conv2d, a: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, ConvGeometry]:
    """A Conv1d as a 2-D convolution of height 1: ``a`` (N, c, H, W), δ (K, N, c_out, h, w), and
    its kernel, stride, dilation, explicit padding (F.pad order) and ``module.padding``."""
    if isinstance(module, nn.Conv1d):
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        pad = (*module._reversed_padding_repeated_twice, 0, 0)
        padding: tuple[int, ...] | str = module.padding if isinstance(module.padding, str) else (0, *module.padding)
        return a.unsqueeze(2), d.unsqueeze(3), (kernel, stride, dilation, pad, padding)
    pad = tuple(module._reversed_padding_repeated_twice)
    return a, d, (module.kernel_size, module.stride, module.dilation, pad, module.padding)


def _grouped_sq_norm(
    a: torch.Tensor,
    d: torch.Tensor,
    groups: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """(K, N) ‖G‖² for a (N, c_in, H, W), d (K, N, c_out, h, w), instantiating every G by one
    grouped convolution weight-gradient per block: group (n, g) convolves example n's input
    channels of group g with a block of its K·c_out_g (class, output channel) gradients, blocks
    small enough (:data:`GROUP_WEIGHT_MAX`) for oneDNN's fast kernels."""
    k, n, c_out = d.shape[:3]
    c_in_g, c_out_g = a.shape[1] // groups, c_out // groups
    rows = c_in_g * kernel[0] * kernel[1]
    width = k * c_out_g  # output channels per (example, group)
    calls = -(-width // max(1, GROUP_WEIGHT_MAX // rows))
    block = -(-width // calls)  # equal blocks
    step = max(1, INSTANTIATE_ELEMENTS // (block * groups * rows))  # examples per call
    parts = []
    for first in range(0, n, step):
        x = a[first : first + step]
        m = x.shape[0]
        x = x.reshape(1, -1, *x.shape[2:])
        dy = d[:, first : first + step].reshape(k, m, groups, c_out_g, *d.shape[3:]).permute(1, 2, 0, 3, 4, 5)
        dy = dy.reshape(m, groups, width, *d.shape[3:])  # (m, G, K·c_out_g, h, w)
        sq = []
        for j in range(0, width, block):
            part = dy[:, :, j : j + block]
            weight = x.new_zeros(()).expand(m * groups * part.shape[2], c_in_g, *kernel)  # only its shape is read
            _, grads, _ = torch.ops.aten.convolution_backward(
                part.reshape(1, -1, *part.shape[3:]),
                x,
                weight,
                None,
                list(stride),
                list(padding),
                list(dilation),
                False,
                [0, 0],
                m * groups,
                [False, True, False],
            )
            sq.append(_sq(grads.reshape(m, groups, part.shape[2], -1), 3))  # (m, G, block)
        parts.append(torch.cat(sq, 2).reshape(m, groups, k, c_out_g).sum((1, 3)).T)  # (K, m)
    return torch.cat(parts, 1)


def _blocks_sq_norm(
    padded: torch.Tensor,
    d: torch.Tensor,
    groups: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """(K, N) ‖G‖² from im2col blocks of the padded input, ghost or instantiated by cost."""
    k, n = d.shape[:2]
    c_in_g = padded.shape[1] // groups
    blocks, dd = _im2col_blocks(
        padded.reshape(n * groups, c_in_g, *padded.shape[2:]),
        d.reshape(k, n * groups, -1, *d.shape[3:]),
        kernel,
        stride,
        dilation,
    )
    t, c_out_g = dd.shape[3], dd.shape[2]
    if _ghost_is_cheaper(k, t, c_out_g, c_in_g * kernel[0] * kernel[1]):  # ⟨Σ_blocks UᵀU, DᵀD⟩
        gram = blocks[0].transpose(1, 2) @ blocks[0]  # (N·G, T, T), shared by the classes
        for u in blocks[1:]:
            gram.baddbmm_(u.transpose(1, 2), u)
        sq = torch.stack([(gram * (dk.transpose(1, 2) @ dk)).sum((1, 2)) for dk in dd])
    else:  # instantiate, one block of G's columns at a time
        sq = torch.zeros(k, n * groups, dtype=dd.dtype, device=dd.device)
        for u in blocks:
            sq += torch.stack([_sq(dk @ u.transpose(1, 2), 1) for dk in dd])
    return sq.reshape(k, n, groups).sum(2)


def _im2col_blocks(
    a: torch.Tensor, delta: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The padded input ``a`` (M, c, H, W) seen by the kernel as (M, rows, T) blocks whose rows
    together form the im2col matrix, and δ (K, M, c_out, h, w) as the matching (K, M, c_out, T).

    - c·k² small (first layers): one unfolded block, T = h·w.
    - stride 1: positions are laid out on the padded width (T = h·W), so every kernel offset is
      a contiguous slice of the flattened input, without a copy; δ gets zero columns at the
      W − w positions that do not exist, which cancels their (garbage) inputs exactly.
    - otherwise: one copied strided view per kernel offset (never the k²-times larger tensor).
    """
    m, c, _, width = a.shape
    k, _, c_out, h, w = delta.shape
    (kh, kw), (s0, s1), (d0, d1) = kernel, stride, dilation
    if c * kh * kw <= UNFOLD_MAX_ROWS:
        st = a.stride()
        size = (m, c, kh, kw, h, w)
        strides = (st[0], st[1], st[2] * d0, st[3] * d1, st[2] * s0, st[3] * s1)
        return [a.as_strided(size, strides).reshape(m, c * kh * kw, h * w)], delta.reshape(k, m, c_out, h * w)
    if (s0, s1) == (1, 1):
        extra_rows = -(-(kw - 1) * d1 // width)  # so that the last offset's slice stays inside
        flat = (F.pad(a, (0, 0, 0, extra_rows)) if extra_rows else a).reshape(m, c, -1)
        length = h * width
        blocks = [flat[:, :, i * d0 * width + j * d1 :][:, :, :length] for i in range(kh) for j in range(kw)]
        return blocks, F.pad(delta, (0, width - w)).reshape(k, m, c_out, length)
    views = [
        a[:, :, i * d0 :, j * d1 :][:, :, : (h - 1) * s0 + 1 : s0, : (w - 1) * s1 + 1 : s1].reshape(m, c, h * w)
        for i in range(kh)
        for j in range(kw)
    ]
    return views, delta.reshape(k, m, c_out, h * w)


def batch_norm(module: nn.BatchNorm1d | nn.BatchNorm2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(N,) or (K, N) squared norms of γ and β gradients for BatchNorm with running statistics."""
    assert module.running_mean is not None and module.running_var is not None
    d, single = _with_classes(a, delta)
    shape = (-1,) + (1,) * (a.dim() - 2)
    scale = torch.rsqrt(module.running_var + module.eps)
    x_hat = torch.addcmul((-module.running_mean * scale).reshape(shape), a, scale.reshape(shape))  # one pass
    out = torch.zeros(d.shape[:2], dtype=d.dtype, device=d.device)
    if module.weight is not None and module.weight.requires_grad:  # Σ_positions δ·x̂ per channel
        g = torch.einsum("knc...,nc...->knc", d, x_hat) if a.dim() > 2 else d * x_hat
        out = out + _sq(g, 2)
    if module.bias is not None and module.bias.requires_grad:
        out = out + _sq(d.sum(tuple(range(3, d.dim()))) if a.dim() > 2 else d, 2)
    return _result(out, single)


def weight_is_a_parameter(module: nn.Module) -> bool:
    """Whether the module's own parameters are its ``weight`` and ``bias``, as the built-in forms
    assume; not so under the older ``torch.nn.utils.weight_norm`` and ``spectral_norm``, which
    recompute ``weight`` from other parameters before each call."""
    own = module._parameters
    return set(own) <= {"weight", "bias"} and isinstance(own.get("weight"), nn.Parameter)


def closed_form(module: nn.Module):  # type: ignore[no-untyped-def]
    """The closed-form norm function for ``module`` in eval mode, or ``None`` (use the fallback).

    The built-in forms differentiate the module's own ``weight`` and ``bias`` parameters; a layer
    whose weight is recomputed from other parameters before each call (the older
    ``torch.nn.utils.weight_norm`` and ``spectral_norm``) has none and takes the fallback.

    A module class may supply its own as a method ``per_example_sq_grad_norms(a, delta)``: the
    (N,) squared norms of the gradients of its own parameters, from its first input ``a`` and δ
    with respect to its output (e.g. :class:`trainables.models.SkipInit`).
    """
    own = getattr(type(module), "per_example_sq_grad_norms", None)
    if own is not None:
        return own
    if not weight_is_a_parameter(module):
        return None
    if type(module) is nn.Linear:
        return linear
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return conv
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.running_mean is not None:  # type: ignore[union-attr]
        return batch_norm
    return None


def per_class_sq_norms(module: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(K, N) squared norms from inputs ``a`` (N, …) and δ (K, N, …) of K classes (label sets).

    The built-in closed forms take the class dimension directly (the inputs are not repeated);
    a module's own ``per_example_sq_grad_norms`` gets the inputs repeated K times.
    """
    fn: NormFn | None = closed_form(module)
    if fn is None:
        raise TypeError(f"{type(module).__name__} has no closed form; use the fallback")
    if fn in (linear, conv, batch_norm):  # these take the class dimension
        return fn(module, a, delta)  # type: ignore[arg-type]
    k, n = delta.shape[:2]
    rows = a.expand(k, *a.shape).reshape(k * n, *a.shape[1:])
    return fn(module, rows, delta.reshape(k * n, *delta.shape[2:])).reshape(k, n)
