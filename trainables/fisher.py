"""Tr(F), the trace of the Fisher information, from exact per-example gradient norms.

Tr(F) = E_{x, ŷ∼p_θ(·|x)} ‖∇θ CE(f(x), ŷ)‖² (paper Eq. 2): one label per example sampled from
the model's softmax, then the mean of the per-example squared gradient norms over a probe set.
With the true labels the same mean is the empirical Fisher's trace (a different matrix).

Per-example norms come from per-layer closed forms (:mod:`trainables.layer_norms`): one forward
with hooks that keep each Linear/Conv/BatchNorm layer's input and output (also of any module that
brings its own closed form, such as SkipInit), one backward of the sum-reduced loss to those
outputs only, then the norms from inputs and output gradients. Every
other module with parameters, tied parameters and layers called twice go to an exact generic
fallback (``torch.func`` vmap of grad) for their own parameters. Never an approximation.
The model is evaluated in eval mode (BatchNorm running statistics, dropout off), as in the
paper, and restored to its previous mode; inputs are processed in chunks to bound memory.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from trainables.layer_norms import closed_form

DEFAULT_CHUNK = 256
_COPY_TENSORS: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # layers followed by in-place ops


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
    chunks: list[dict[str, torch.Tensor]] = []
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(inputs), chunk_size):
            end = start + chunk_size
            chunks.append(_chunk_norms(model, inputs[start:end], labels[start:end]))
    return {path: torch.cat([c[path] for c in chunks]) for path in chunks[0]} if chunks else {}


def _chunk_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward with hooks on closed-form layers, one backward to their outputs, fallback rest.

    A hooked layer's input and output must reach the backward unmodified. Rather than copy every
    activation, the hooks record version counters; a layer whose tensors an in-place operation
    changed later in the forward (``ReLU(inplace=True)``, ``out += identity``) is remembered and
    the chunk is recomputed with copies for it (the network then goes on with the copy).
    """
    closed, fallback = _partition(model)
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]]] = {p: [] for p in closed}

    def hook(path: str):  # type: ignore[no-untyped-def]
        def capture(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
            if module in _COPY_TENSORS:
                captured[path].append((args[0].detach().clone(), out, None))
                return out.clone()
            captured[path].append((args[0].detach(), out, (args[0]._version, out._version)))
            return None

        return capture

    handles = [module.register_forward_hook(hook(path)) for path, module in closed.items()]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    modified = [
        path
        for path, uses in captured.items()
        for a, s, versions in uses
        if versions is not None and versions != (a._version, s._version)
    ]
    if modified:
        _COPY_TENSORS.update(closed[path] for path in modified)
        return _chunk_norms(model, x, y)
    reused = [path for path, uses in captured.items() if len(uses) != 1]  # called twice: Σ over uses
    for path in reused:
        fallback[path] = closed.pop(path)
    out: dict[str, torch.Tensor] = {}
    if closed:
        outputs = [captured[path][0][1] for path in closed]
        loss = F.cross_entropy(logits, y, reduction="sum")  # sum: δ_n is example n's own gradient
        deltas = torch.autograd.grad(loss, outputs)
        for (path, module), delta in zip(closed.items(), deltas, strict=True):
            norm_fn = closed_form(module)
            out[path] = norm_fn(module, captured[path][0][0], delta.detach())
    if fallback:
        out.update(_vmap_norms(model, x, y, fallback))
    return out


def _partition(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Modules owning trainable parameters: closed form where one exists, else the fallback."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    closed: dict[str, nn.Module] = {}
    fallback: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        tied = any(owners[id(p)] > 1 for p in module.parameters(recurse=False))
        target = closed if closed_form(module) is not None and not tied else fallback
        target[path] = module
    return closed, fallback


def _vmap_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Exact generic fallback: per-example gradients of these modules' parameters by torch.func."""
    wanted = {id(p) for m in modules.values() for p in m.parameters(recurse=False) if p.requires_grad}
    params = dict(model.named_parameters())  # tied parameters appear once, under their first name
    trainable = {n: p.detach() for n, p in params.items() if id(p) in wanted}
    constants = {n: p.detach() for n, p in params.items() if id(p) not in wanted}
    buffers = dict(model.named_buffers())

    def example_loss(theta: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (theta, constants, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(trainable, x, y)
    path_of = {id(p): path for path, m in modules.items() for p in m.parameters(recurse=False)}
    out: dict[str, torch.Tensor] = {}
    for name, g in grads.items():
        path = path_of[id(params[name])]
        sq = g.pow(2).reshape(len(g), -1).sum(1)  # (N,); also for 0-dim parameters (e.g. a scalar gain)
        out[path] = out[path] + sq if path in out else sq
    return out


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
