"""Tr(F), the trace of the Fisher information, from exact per-example gradient norms.

Tr(F) = E_x Σ_c p_c(x) ‖∇θ CE(f(x), c)‖² (paper Eq. 2). Three estimators on a probe set, chosen
by ``labels``:

- ``"exact"``: the expectation over classes computed exactly, per example. No label noise; the
  only randomness left is which examples form the probe.
- ``None`` (sampled): ``label_samples`` = K labels per example drawn from the model's softmax
  (K = 1 is the paper's Monte-Carlo estimate); unbiased for the exact value.
- a label tensor: the same mean with the given labels, the empirical Fisher's trace (a
  different matrix, Kunstner et al. 2019).

Per-example norms come from per-layer closed forms (:mod:`trainables.layer_norms`): one forward
with hooks that keep each Linear/Conv/BatchNorm layer's input and output (also of any module that
brings its own closed form, such as SkipInit), then one backward to those outputs only, batched
over the K labels or C classes of every example (``is_grads_batched``: the K·N output gradients
travel through one vmapped backward, in class chunks that bound memory), then the norms from
inputs and output gradients. Every other module with parameters, tied parameters and layers
called twice go to an exact generic fallback (``torch.func`` vmap of grad, once per label set) for
their own parameters. Never an approximation. The model is evaluated in eval mode (BatchNorm
running statistics, dropout off), as in the paper, and restored to its previous mode; inputs are
processed in chunks to bound memory.

Sampled labels are drawn by inverse CDF from uniforms that the generator yields up front, one
per example and label (:func:`sample_labels`), so the labels do not depend on chunking and no
forward pass beyond the measured one is needed.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from trainables.layer_norms import closed_form, per_class_sq_norms

DEFAULT_CHUNK = 256
BACKWARD_ELEMENTS = 1 << 25  # activation elements one batched backward may hold (≈128 MB in fp32)
_COPY_TENSORS: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # layers followed by in-place ops

Labels = torch.Tensor | Literal["exact"] | None


@dataclass(frozen=True, slots=True)
class TraceEstimate:
    """The probe mean of per-example values, its standard error and n.

    ``stderr`` is the standard error of ``mean`` as an estimate of the training set's Tr(F):
    the sample std of the per-example values / √n. A per-example value is Σ_c p_c‖g_c‖² (exact),
    the mean over its K sampled labels (sampled), or ‖g_y‖² (given labels), so ``stderr`` covers
    the choice of probe examples and, where labels are sampled, the label draws too.
    """

    mean: float
    stderr: float
    n: int
    per_layer: dict[str, float] = field(default_factory=dict)  # module path → its share of mean


class UndefinedPerExampleGradient(ValueError):
    """The model couples the examples of a batch (e.g. BatchNorm without running statistics)."""


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


@dataclass(frozen=True, slots=True)
class _Targets:
    """What the per-example value of a chunk is made of: label sets and their weights.

    ``labels_for(probs)`` gives (K, M) labels and (K, M) weights; an example's value is
    Σ_k w_k ‖∇θ CE(f(x), y_k)‖².
    """

    kind: Literal["given", "sampled", "exact"]
    values: torch.Tensor | None = None  # given: (M,) labels; sampled: (M, K) uniforms in [0, 1)

    def chunk(self, start: int, end: int) -> _Targets:
        return _Targets(self.kind, None if self.values is None else self.values[start:end])

    def labels_for(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, c = probs.shape
        if self.kind == "exact":
            labels = torch.arange(c, device=probs.device).unsqueeze(1).expand(c, m)
            return labels, probs.detach().T
        assert self.values is not None
        if self.kind == "given":
            return self.values.unsqueeze(0), torch.ones(1, m, dtype=probs.dtype, device=probs.device)
        labels = _inverse_cdf(probs.detach().double().cpu(), self.values).T.to(probs.device)
        k = labels.shape[0]
        return labels, torch.full((k, m), 1.0 / k, dtype=probs.dtype, device=probs.device)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(M, K) labels with P(label = c) = probs[:, c], from (M, K) uniforms."""
    cdf = probs.cumsum(1)
    cdf = cdf / cdf[:, -1:]  # the last bin closes at exactly 1
    return torch.searchsorted(cdf, uniforms.to(cdf.dtype), right=True).clamp_(max=probs.shape[1] - 1)


def _uniforms(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, k, dtype=torch.float64, generator=generator if generator is not None else torch.Generator())


def per_layer_sq_grad_norms(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> dict[str, torch.Tensor]:
    """Per module path, the per-example squared gradient norms of its own parameters, (N,)."""
    return _per_layer_values(model, inputs, _Targets("given", labels), chunk_size)


def _per_layer_values(
    model: nn.Module, inputs: torch.Tensor, targets: _Targets, chunk_size: int
) -> dict[str, torch.Tensor]:
    _refuse_batch_coupling(model)
    chunks: list[dict[str, torch.Tensor]] = []
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(inputs), chunk_size):
            end = start + chunk_size
            chunks.append(_chunk_values(model, inputs[start:end], targets.chunk(start, end)))
    return {path: torch.cat([c[path] for c in chunks]) for path in chunks[0]} if chunks else {}


def _refuse_batch_coupling(model: nn.Module) -> None:
    """Per-example gradients are defined only if an example's loss ignores the other examples."""
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise UndefinedPerExampleGradient(
                f"module {path or type(module).__name__!r}: BatchNorm with track_running_stats=False "
                "normalises by the batch's own statistics even in eval mode, so one example's gradient "
                "depends on the others and per-example Tr(F) is undefined; build it with "
                "track_running_stats=True (or use GroupNorm/LayerNorm)"
            )


def _chunk_values(model: nn.Module, x: torch.Tensor, targets: _Targets) -> dict[str, torch.Tensor]:
    """One forward with hooks on closed-form layers, batched backwards to their outputs, fallback rest.

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
        return _chunk_values(model, x, targets)
    for path in [path for path, uses in captured.items() if len(uses) != 1]:  # called twice, or never
        module = closed.pop(path)
        if captured[path]:
            fallback[path] = module  # Σ over uses: the fallback differentiates the whole model
    probs = logits.detach().softmax(1)
    labels, weights = targets.labels_for(probs)
    out = _closed_form_values(logits, probs, labels, weights, {p: (closed[p], captured[p][0]) for p in closed})
    if fallback:
        out.update(_fallback_values(model, x, labels, weights, fallback))
    return out


def _closed_form_values(
    logits: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    layers: dict[str, tuple[nn.Module, tuple[torch.Tensor, torch.Tensor, object]]],
) -> dict[str, torch.Tensor]:
    """Σ_k w_k ‖∇ CE(f(x), y_k)‖² per hooked layer, label sets batched through one backward each.

    ∂CE(f(x), y)/∂logits = p − e_y, so the output gradients of every label set are one stacked
    ``grad_outputs``; label sets go in chunks whose activations fit :data:`BACKWARD_ELEMENTS`.
    """
    if not layers:
        return {}
    k, m = labels.shape
    outputs = [s for _, (_, s, _) in layers.values()]
    per_example = max(1, sum(s[0].numel() for s in outputs) + logits[0].numel())
    step = max(1, min(k, BACKWARD_ELEMENTS // (per_example * m)))
    sums = {path: torch.zeros(m, dtype=logits.dtype, device=logits.device) for path in layers}
    for first in range(0, k, step):
        y = labels[first : first + step]
        grad_outputs = probs.unsqueeze(0) - F.one_hot(y, probs.shape[1]).to(probs.dtype)  # (k', M, C)
        retain = first + step < k
        if len(y) == 1:
            deltas = torch.autograd.grad(logits, outputs, grad_outputs[0], retain_graph=retain, allow_unused=True)
            deltas = tuple(None if d is None else d.unsqueeze(0) for d in deltas)
        else:
            deltas = torch.autograd.grad(
                logits, outputs, grad_outputs, retain_graph=retain, allow_unused=True, is_grads_batched=True
            )
        w = weights[first : first + step]
        for (path, (module, (a, _, _))), delta in zip(layers.items(), deltas, strict=True):
            if delta is None:  # the layer's output does not reach the logits: zero gradient
                continue
            sq = per_class_sq_norms(module, a, delta)  # (k', M): the label sets share the inputs
            sums[path] += (w * sq).sum(0)
    return sums


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


def _fallback_values(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Σ_k w_k × the fallback's per-example norms for label set k (one vmap per label set)."""
    out: dict[str, torch.Tensor] = {}
    for y, w in zip(labels, weights, strict=True):
        for path, sq in _vmap_norms(model, x, y, modules).items():
            out[path] = out[path] + w * sq if path in out else w * sq
    return out


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
    return _total(per_layer_sq_grad_norms(model, inputs, labels, chunk_size), inputs)


def _total(layers: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """The per-example sum over layers, (N,); zeros for a model with no trainable parameter."""
    if not layers:
        return torch.zeros(len(inputs), dtype=inputs.dtype, device=inputs.device)
    return torch.stack(list(layers.values())).sum(0)


def sample_labels(
    model: nn.Module, inputs: torch.Tensor, generator: torch.Generator | None = None, label_samples: int | None = None
) -> torch.Tensor:
    """Labels from the model's softmax (eval mode), drawn on CPU from ``generator`` alone.

    (N,) labels, or (N, K) for ``label_samples`` = K: the labels :func:`fisher_trace` uses with
    the same generator state.
    """
    uniforms = _uniforms(len(inputs), label_samples or 1, generator)
    with torch.no_grad(), eval_mode(model):
        probs = model(inputs).double().softmax(1).cpu()
    labels = _inverse_cdf(probs, uniforms).to(inputs.device)
    return labels if label_samples is not None else labels.squeeze(1)


def fisher_trace(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: Labels = None,
    generator: torch.Generator | None = None,
    *,
    label_samples: int = 1,
    per_layer: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> TraceEstimate:
    """Tr(F) on ``inputs``: ``"exact"`` over classes, ``None`` → K labels sampled from the model,
    or a label tensor (the empirical Fisher). ``generator``: a CPU generator, sampled labels only."""
    if isinstance(labels, str):
        if labels != "exact":
            raise ValueError(f"labels: expected 'exact', None or a label tensor, got {labels!r}")
        if label_samples != 1:
            raise ValueError("label_samples: the exact expectation over classes samples no labels; leave it at 1")
        targets = _Targets("exact")
    elif labels is None:
        if label_samples < 1:
            raise ValueError(f"label_samples: expected an integer ≥ 1, got {label_samples!r}")
        targets = _Targets("sampled", _uniforms(len(inputs), label_samples, generator))
    else:
        if label_samples != 1:
            raise ValueError("label_samples: given labels are used as they are; leave it at 1")
        targets = _Targets("given", labels)
    layers = _per_layer_values(model, inputs, targets, chunk_size)
    n = len(inputs)
    values = _total(layers, inputs).double()
    stderr = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    shares = {path: v.double().mean().item() for path, v in layers.items()} if per_layer else {}
    return TraceEstimate(mean=values.mean().item(), stderr=stderr, n=n, per_layer=shares)
