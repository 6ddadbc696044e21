"""Tr(F), the trace of the Fisher information, from exact per-example gradient norms.

Tr(F) = E_{x, ŷ∼p_θ(·|x)} ‖∇θ CE(f(x), ŷ)‖² (paper Eq. 2): one label per example sampled from
the model's softmax, then the mean of the per-example squared gradient norms over a probe set.
With the true labels the same mean is the empirical Fisher's trace (a different matrix).

Per-example gradients come from ``torch.func`` (``vmap`` of ``grad`` over a functional call),
which is exact for every module, tied and frozen parameters included, and is computed in
chunks to bound memory. The model is evaluated in eval mode (BatchNorm running statistics,
dropout off), as in the paper, and restored to its previous mode afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

DEFAULT_CHUNK = 256


@dataclass(frozen=True, slots=True)
class TraceEstimate:
    """Mean of per-example values, its standard error (sample std / √n) and n."""

    mean: float
    stderr: float
    n: int
    per_layer: dict[str, float] = field(default_factory=dict)  # module path → its share of mean


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def per_layer_sq_grad_norms(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> dict[str, torch.Tensor]:
    """Per module path, the per-example squared gradient norms of its own parameters, (N,)."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def example_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, frozen, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
    chunks: list[dict[str, torch.Tensor]] = []
    with eval_mode(model):
        for start in range(0, len(inputs), chunk_size):
            end = start + chunk_size
            grads = per_example_grads(trainable, inputs[start:end], labels[start:end])
            layer: dict[str, torch.Tensor] = {}
            for name, g in grads.items():
                path = name.rpartition(".")[0]
                sq = g.pow(2).flatten(1).sum(1)
                layer[path] = layer[path] + sq if path in layer else sq
            chunks.append(layer)
    return {path: torch.cat([c[path] for c in chunks]) for path in chunks[0]} if chunks else {}


def per_example_sq_grad_norms(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """‖∇θ CE(f(x_i), y_i)‖² for each example, over all parameters with ``requires_grad``."""
    layers = per_layer_sq_grad_norms(model, inputs, labels, chunk_size)
    if not layers:
        return torch.zeros(len(inputs), dtype=inputs.dtype, device=inputs.device)
    return torch.stack(list(layers.values())).sum(0)


def sample_labels(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One label per example from the model's softmax (eval mode), drawn on CPU from ``generator``."""
    with torch.no_grad(), eval_mode(model):
        probs = model(inputs).double().softmax(1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(inputs.device)


def fisher_trace(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    per_layer: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> TraceEstimate:
    """Monte-Carlo Tr(F) on ``inputs``: labels ``None`` → sampled from the model (true Fisher)."""
    if labels is None:
        labels = sample_labels(model, inputs, generator if generator is not None else torch.Generator())
    layers = per_layer_sq_grad_norms(model, inputs, labels, chunk_size)
    values = torch.stack(list(layers.values())).sum(0).double()
    n = len(values)
    stderr = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    shares = {path: v.double().mean().item() for path, v in layers.items()} if per_layer else {}
    return TraceEstimate(mean=values.mean().item(), stderr=stderr, n=n, per_layer=shares)


def batch_fisher_trace(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Tr(F_B) = ‖(1/B) Σ_i ∇θ CE(f(x_i), ŷ_i)‖², raw (not × B); E[B·Tr(F_B)] = Tr(F)."""
    labels = sample_labels(model, inputs, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        loss = F.cross_entropy(model(inputs), labels)
        grads = torch.autograd.grad(loss, params)
    return sum(g.pow(2).sum() for g in grads).item()  # type: ignore[union-attr]
