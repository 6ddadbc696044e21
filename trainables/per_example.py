"""The passes behind every Fisher estimator: per-layer inputs and output gradients per label set.

One forward with hooks keeps the input and the output of each layer that has a closed form
(:mod:`trainables.layer_norms`: Linear, Conv, BatchNorm with running statistics, or a module's
own); one backward to those outputs only is batched over the K label sets of every example
(``is_grads_batched``: the K·N output gradients travel through one vmapped backward, in chunks
that bound memory). Every other module with parameters, tied parameters and layers called twice
go to an exact generic fallback (``torch.func`` vmap of grad, once per label set) for their own
parameters. A hooked layer's closed form is used only where it holds for that forward
(:func:`_closed_form_holds`); a layer reached other than through its own call, or applied to
something other than the batch's examples along dim 0, goes to the fallback too, so an unusual
model costs time, never exactness. What is made of these — squared norms (Tr(F)), or the rows of a Gram matrix (the
spectrum) — is the :class:`Visitor`'s business. The model is evaluated in eval mode and restored
to its previous mode; inputs are processed in chunks of ``chunk_size`` examples.

Sampled labels are drawn by inverse CDF from uniforms that the generator yields up front, one
per example and label set, so the labels do not depend on chunking and no forward pass beyond
the measured one is needed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from trainables.layer_norms import closed_form

BACKWARD_ELEMENTS = 1 << 25  # activation elements one batched backward may hold (≈128 MB in fp32)
_COPY_TENSORS: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # layers followed by in-place ops
_CHANNELS_LAST: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()  # forward accepts it
_BATCH_CHECKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose layers' batch dims are known
_NOT_BATCH_FIRST: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # layers whose dim 0 is not the examples


class UndefinedPerExampleGradient(ValueError):
    """The model couples the examples of a batch (e.g. BatchNorm without running statistics)."""


class Visitor(Protocol):
    """Receives, chunk by chunk, what the passes compute; ``examples`` indexes the whole input."""

    def closed(
        self,
        path: str,
        module: nn.Module,
        a: torch.Tensor,
        delta: torch.Tensor,
        weights: torch.Tensor,
        sets: slice,
        examples: slice,
    ) -> None:
        """A closed-form layer: its input ``a`` (M, …), δ for label sets ``sets`` (k', M, …), their weights (k', M)."""

    def fallback(self, path: str, grads: torch.Tensor, weights: torch.Tensor, label_set: int, examples: slice) -> None:
        """A fallback module: per-example gradients (M, P) of its parameters for one label set, weights (M,)."""

    def unreached(self, path: str, examples: slice, like: torch.Tensor) -> None:
        """A hooked layer whose output does not reach the logits: its gradient is zero (``like``:
        a tensor of the passes' dtype and device)."""


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
class Targets:
    """What the per-example value of a chunk is made of: label sets and their weights.

    ``labels_for(probs)`` gives (K, M) labels and (K, M) weights; an example's value is
    Σ_k w_k ‖∇θ CE(f(x), y_k)‖².
    """

    kind: Literal["given", "sampled", "exact", "top"]
    values: torch.Tensor | None = None  # given: (M,) labels; sampled: (M, K), top: (M, 1) uniforms in [0, 1)
    top: int = 0  # top: the classes of largest p_c(x) taken exactly

    def chunk(self, start: int, end: int) -> Targets:
        return Targets(self.kind, None if self.values is None else self.values[start:end], self.top)

    def sets(self, num_classes: int) -> int:
        """Label sets (back-propagated rows) per example."""
        if self.kind == "exact":
            return num_classes
        if self.kind == "top":
            return min(self.top + 1, num_classes)
        return 1 if self.values is None or self.values.dim() == 1 else self.values.shape[1]

    def labels_for(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, c = probs.shape
        if self.kind == "exact":
            labels = torch.arange(c, device=probs.device).unsqueeze(1).expand(c, m)
            return labels, probs.detach().T
        assert self.values is not None
        if self.kind == "given":
            return self.values.unsqueeze(0), torch.ones(1, m, dtype=probs.dtype, device=probs.device)
        if self.kind == "top":
            labels, weights = top_and_rest(probs.detach().double().cpu(), self.top, self.values[:, 0])
            return labels.T.to(probs.device), weights.T.to(probs.device, probs.dtype)
        labels = inverse_cdf(probs.detach().double().cpu(), self.values).T.to(probs.device)
        k = labels.shape[0]
        return labels, torch.full((k, m), 1.0 / k, dtype=probs.dtype, device=probs.device)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(M, K) labels with P(label = c) = probs[:, c], from (M, K) uniforms."""
    cdf = probs.cumsum(1)
    cdf = cdf / cdf[:, -1:]  # the last bin closes at exactly 1
    return torch.searchsorted(cdf, uniforms.to(cdf.dtype), right=True).clamp_(max=probs.shape[1] - 1)


def top_and_rest(probs: torch.Tensor, top: int, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, R) labels and weights: the ``top`` classes of largest p_c weighted by p_c, then one class
    drawn from the rest in proportion to p_c (uniforms ``u``, (M,)) weighted by the rest's mass.

    Σ_k w_k ‖g_{y_k}‖² is then unbiased for Σ_c p_c ‖g_c‖² (the rest's term is its mass times an
    average drawn in proportion to p_c), and exact where the rest has one class or none; R =
    min(top + 1, C). Stratified sampling: the label noise is only the rest's, which shrinks with
    its mass as training concentrates p on few classes.
    """
    c = probs.shape[1]
    weights, labels = probs.topk(min(top, c), dim=1)
    if top >= c:
        return labels, weights
    rest = probs.scatter(1, labels, 0.0)
    mass = rest.sum(1, keepdim=True)
    drawn = inverse_cdf(torch.where(mass > 0, rest, 1.0), u.unsqueeze(1))  # mass 0: any class, weight 0
    return torch.cat([labels, drawn], 1), torch.cat([weights, mass], 1)


def uniforms(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n, k) float64 uniforms from ``generator``, or from torch's default CPU generator (which
    ``torch.manual_seed`` seeds) when it is None: repeated calls then draw fresh labels."""
    return torch.rand(n, k, dtype=torch.float64, generator=generator)


def copying_layers(model: nn.Module) -> set[str]:
    """Paths of the layers whose tensors the passes copy, having seen an in-place op overwrite them."""
    return {path for path, module in model.named_modules() if module in _COPY_TENSORS}


def has_closed_norm(module: nn.Module) -> bool:
    return closed_form(module) is not None


def run_passes(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Targets,
    chunk_size: int,
    visitor: Visitor,
    hooked: Callable[[nn.Module], bool] = has_closed_norm,
) -> None:
    """Every chunk of ``inputs`` through one forward and batched backward, in eval mode, refusing
    batch-coupled models. ``hooked``: which modules the visitor handles from their input and δ
    (the rest go to the fallback)."""
    refuse_batch_coupling(model)
    inputs = pass_layout(model, inputs)
    find_layers_not_batch_first(model, inputs, hooked)
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(inputs), chunk_size):
            end = min(start + chunk_size, len(inputs))
            _chunk(model, inputs[start:end], targets.chunk(start, end), slice(start, end), visitor, hooked)


def pass_layout(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Images go through the passes channels-last on the CPU, unless the model has BatchNorm.

    Channels-last, oneDNN's convolutions and PyTorch's max-pooling are vectorised over channels:
    the benchmark CNN's forward took 17 ms against 33 ms in NCHW, its Tr(F) 0.91 against 1.10× a
    plain SGD step. But BatchNorm's backward and the residual adds around it were 3–7× slower
    channels-last (ResNet-20's Tr(F): 450 against 406 ms), so such models stay NCHW
    (benchmarks/README.md). The caller's tensor keeps its layout; values differ only in the order
    of float sums. A model whose forward refuses a channels-last input (``x.view(len(x), -1)`` on
    its activations) is found by one forward of one example, once per model, and keeps the
    caller's layout.
    """
    if inputs.dim() != 4 or inputs.device.type != "cpu":
        return inputs
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return inputs
    channels_last = inputs.contiguous(memory_format=torch.channels_last)
    if model not in _CHANNELS_LAST:
        try:
            with torch.no_grad(), eval_mode(model):
                model(channels_last[:1])
            _CHANNELS_LAST[model] = True
        except RuntimeError:  # not hidden: a fault of the model itself recurs in the passes' forward
            _CHANNELS_LAST[model] = False
    return channels_last if _CHANNELS_LAST[model] else inputs


def find_layers_not_batch_first(model: nn.Module, inputs: torch.Tensor, hooked: Callable[[nn.Module], bool]) -> None:
    """Once per model: which hooked layers see something other than the examples along dim 0.

    The closed forms read dim 0 of a layer's input and output as the example. A sequence-first
    layer ((T, N, d), e.g. ``nn.TransformerEncoderLayer(batch_first=False)``) breaks that silently
    when T happens to equal the chunk's N; two small no-grad forwards, of 1 and 2 examples, find
    every layer whose dim 0 does not follow the number of examples, and those take the fallback.
    """
    if model in _BATCH_CHECKED or len(inputs) < 2:
        return
    dims: dict[nn.Module, tuple[int, int]] = {}  # layer → dim 0 of its input and output, this forward

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        a = args[0] if args and isinstance(args[0], torch.Tensor) else None
        dims[module] = (a.shape[0] if a is not None and a.dim() else -1, out.shape[0] if out.dim() else -1)

    handles = [m.register_forward_hook(record) for m in model.modules() if hooked(m)]
    try:
        with torch.no_grad(), eval_mode(model):
            for size in (1, 2):
                dims.clear()
                model(inputs[:size])
                _NOT_BATCH_FIRST.update(m for m, seen in dims.items() if seen != (size, size))
    finally:
        for handle in handles:
            handle.remove()
    _BATCH_CHECKED.add(model)


def refuse_batch_coupling(model: nn.Module) -> None:
    """Per-example gradients are defined only if an example's loss ignores the other examples."""
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise UndefinedPerExampleGradient(
                f"module {path or type(module).__name__!r}: BatchNorm with track_running_stats=False "
                "normalises by the batch's own statistics even in eval mode, so one example's gradient "
                "depends on the others and per-example Tr(F) is undefined; build it with "
                "track_running_stats=True (or use GroupNorm/LayerNorm)"
            )


def _chunk(
    model: nn.Module,
    x: torch.Tensor,
    targets: Targets,
    examples: slice,
    visitor: Visitor,
    hooked: Callable[[nn.Module], bool],
) -> None:
    """One forward with hooks on closed-form layers, batched backwards to their outputs, fallback rest.

    A hooked layer's input and output must reach the backward unmodified. Rather than copy every
    activation, the hooks record version counters; a layer whose tensors an in-place operation
    changed later in the forward (``ReLU(inplace=True)``, ``out += identity``) is remembered and
    the chunk is recomputed with copies for it (the network then goes on with the copy).
    """
    closed, fallback = _partition(model, hooked)
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
        return _chunk(model, x, targets, examples, visitor, hooked)
    uses = _parameter_uses(logits)
    for path in [path for path, calls in captured.items() if not _closed_form_holds(closed[path], calls, uses, len(x))]:
        module = closed.pop(path)
        if any(uses.get(id(p), 0) for p in module.parameters(recurse=False)):
            fallback[path] = module  # the fallback differentiates the whole model: every use counts
    probs = logits.detach().softmax(1)
    labels, weights = targets.labels_for(probs)
    layers = {p: (closed[p], captured[p][0][0], captured[p][0][1]) for p in closed}
    _closed_backward(logits, probs, labels, weights, layers, examples, visitor)
    for k, (y, w) in enumerate(zip(labels, weights, strict=True)):
        for path, g in _vmap_grads(model, x, y, fallback).items():
            visitor.fallback(path, g, w, k, examples)
    return None


def _closed_backward(
    logits: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    layers: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]],
    examples: slice,
    visitor: Visitor,
) -> None:
    """δ of every hooked layer for all label sets, batched through one backward per chunk of sets.

    ∂CE(f(x), y)/∂logits = p − e_y, so the output gradients of every label set are one stacked
    ``grad_outputs``; label sets go in chunks whose activations fit :data:`BACKWARD_ELEMENTS`.
    """
    if not layers:
        return
    k, m = labels.shape
    outputs = [s for _, _, s in layers.values()]
    per_example = max(1, sum(s[0].numel() for s in outputs) + logits[0].numel())
    step = max(1, min(k, BACKWARD_ELEMENTS // (per_example * m)))
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
        sets = slice(first, first + len(y))
        for (path, (module, a, _)), delta in zip(layers.items(), deltas, strict=True):
            if delta is None:
                visitor.unreached(path, examples, logits)
            else:
                visitor.closed(path, module, a, delta, weights[sets], sets, examples)


def _parameter_uses(root: torch.Tensor) -> dict[int, int]:
    """Per leaf tensor id, the edges into its gradient accumulator in ``root``'s autograd graph:
    how many times the forward used it (a tied parameter, or one used outside its module, counts
    every use)."""
    uses: dict[int, int] = {}
    seen: set[torch.autograd.graph.Node] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            leaf = getattr(child, "variable", None)  # AccumulateGrad
            if leaf is not None:
                uses[id(leaf)] = uses.get(id(leaf), 0) + 1
            else:
                stack.append(child)
    return uses


def _closed_form_holds(
    module: nn.Module,
    calls: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]],
    uses: dict[int, int],
    m: int,
) -> bool:
    """Whether a hooked layer's closed form gives its parameters' per-example gradients in this
    forward: it ran once, on an input and to an output whose dim 0 is the chunk's ``m`` examples,
    and its parameters enter the graph through that call only (or not at all: it is unreached).

    Otherwise the fallback is exact where the closed form is not: a parameter also used outside
    its layer's call (``F.linear(x, self.fc.weight)``, a decoder tied to an encoder's transposed
    weight), a layer called twice or through ``module.forward`` (no hook runs), or applied to a
    tensor shared by the batch (dim 0 of size 1) or sequence-first (T, N, d) with T ≠ N.
    """
    if len(calls) != 1:
        return False
    a, out, _ = calls[0]
    if a.dim() == 0 or out.dim() == 0 or a.shape[0] != m or out.shape[0] != m:
        return False
    counts = {uses.get(id(p), 0) for p in module.parameters(recurse=False) if p.requires_grad}
    return counts in ({1}, {0})


def _partition(
    model: nn.Module, hooked: Callable[[nn.Module], bool]
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Modules owning trainable parameters: hooked where ``hooked`` says so, untied and batch-first,
    else the fallback."""
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
        target = closed if hooked(module) and not tied and module not in _NOT_BATCH_FIRST else fallback
        target[path] = module
    return closed, fallback


def _vmap_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Exact generic fallback: per module path, the (M, P) per-example gradients of its parameters."""
    if not modules:
        return {}
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
    parts: dict[str, list[torch.Tensor]] = {}
    for name, g in grads.items():  # also 0-dim parameters (e.g. a scalar gain): (M, 1)
        parts.setdefault(path_of[id(params[name])], []).append(g.reshape(len(g), -1))
    return {path: torch.cat(gs, 1) for path, gs in parts.items()}
