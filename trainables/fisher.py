"""Tr(F), the trace of the Fisher information, from exact per-example gradient norms; its top eigenvalues.

Tr(F) = E_x Σ_c p_c(x) ‖∇θ CE(f(x), c)‖² (paper Eq. 2). Four estimators on a probe set, chosen
by ``labels``:

- ``"exact"``: the expectation over classes computed exactly, per example. No label noise; the
  only randomness left is which examples form the probe. C back-propagated rows per example.
- ``"top"``: the ``top_classes`` = r classes of largest p_c(x) exactly, plus one label drawn
  from the other classes in proportion to p_c, weighted by their total mass: unbiased for the
  exact value with r + 1 rows, and exact when the other classes carry no mass (or r ≥ C − 1).
- ``None`` (sampled): ``label_samples`` = K labels per example drawn from the model's softmax
  (K = 1 is the paper's Monte-Carlo estimate); unbiased for the exact value.
- a label tensor: the same mean with the given labels, the empirical Fisher's trace (a
  different matrix, Kunstner et al. 2019).

Per-example norms come from per-layer closed forms (:mod:`trainables.layer_norms`) applied to the
layer inputs and output gradients that the passes of :mod:`trainables.per_example` give (one
forward with hooks, one backward batched over label sets, an exact vmap fallback for other
modules). Never an approximation. The model is evaluated in eval mode (BatchNorm running
statistics, dropout off), as in the paper, and restored to its previous mode.

:func:`fisher_spectrum` gives the top eigenvalues of the same probe Fisher
(:mod:`trainables.spectrum`), with its trace from the same matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from trainables.layer_norms import per_class_sq_norms
from trainables.per_example import Targets, UndefinedPerExampleGradient, eval_mode, inverse_cdf, run_passes, uniforms
from trainables.spectrum import SpectrumEstimate, check_k, gram_spectrum, lanczos_spectrum

__all__ = [
    "SpectrumEstimate",
    "TraceEstimate",
    "UndefinedPerExampleGradient",
    "eval_mode",
    "fisher_spectrum",
    "fisher_trace",
    "per_example_sq_grad_norms",
    "per_layer_sq_grad_norms",
    "sample_labels",
    "trace_estimate",
]

DEFAULT_CHUNK = 256

Labels = torch.Tensor | Literal["exact", "top"] | None


@dataclass(frozen=True, slots=True)
class TraceEstimate:
    """The probe mean of per-example values, its standard error and n.

    ``stderr`` is the standard error of ``mean`` as an estimate of the training set's Tr(F):
    the sample std of the per-example values / √n. A per-example value is Σ_c p_c‖g_c‖² (exact),
    its top classes' terms plus the rest's mass × one drawn class's ‖g‖² (top), the mean over its
    K sampled labels (sampled), or ‖g_y‖² (given labels). Where labels are drawn the per-example
    value is random, independently across examples, so ``stderr`` covers the choice of probe
    examples and the label draws together.
    """

    mean: float
    stderr: float
    n: int
    per_layer: dict[str, float] = field(default_factory=dict)  # module path → its share of mean
    # (n,) float64: the values ``mean`` averages, for reads over part of the probe
    per_example: torch.Tensor | None = field(default=None, compare=False, repr=False)


def per_layer_sq_grad_norms(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> dict[str, torch.Tensor]:
    """Per module path, the per-example squared gradient norms of its own parameters, (N,)."""
    return _per_layer_values(model, inputs, Targets("given", labels), chunk_size)


class _Norms:
    """Visitor of the passes: per layer, Σ_k w_k ‖∇ CE(f(x), y_k)‖² for every example."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, path: str, examples: slice, values: torch.Tensor) -> None:
        if path not in self.sums:
            self.sums[path] = torch.zeros(self.n, dtype=values.dtype, device=values.device)
        self.sums[path][examples] += values

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
        self._add(path, examples, (weights * per_class_sq_norms(module, a, delta)).sum(0))  # sets share the inputs

    def fallback(self, path: str, grads: torch.Tensor, weights: torch.Tensor, label_set: int, examples: slice) -> None:
        self._add(path, examples, weights * torch.linalg.vector_norm(grads, dim=1).square())

    def unreached(self, path: str, examples: slice, like: torch.Tensor) -> None:
        self._add(path, examples, like.new_zeros(examples.stop - examples.start))


def _per_layer_values(
    model: nn.Module, inputs: torch.Tensor, targets: Targets, chunk_size: int
) -> dict[str, torch.Tensor]:
    visitor = _Norms(len(inputs))
    run_passes(model, inputs, targets, chunk_size, visitor)
    return visitor.sums


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
    draws = uniforms(len(inputs), label_samples or 1, generator)
    with torch.no_grad(), eval_mode(model):
        probs = model(inputs).double().softmax(1).cpu()
    labels = inverse_cdf(probs, draws).to(inputs.device)
    return labels if label_samples is not None else labels.squeeze(1)


def fisher_trace(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: Labels = None,
    generator: torch.Generator | None = None,
    *,
    label_samples: int = 1,
    top_classes: int | None = None,
    per_layer: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> TraceEstimate:
    """Tr(F) on ``inputs``: ``"exact"`` over classes, ``"top"`` (``top_classes`` exact, one drawn
    from the rest), ``None`` → K labels sampled from the model, or a label tensor (the empirical
    Fisher). ``generator``: a CPU generator, for drawn labels only."""
    targets = _targets(labels, generator, label_samples, top_classes, len(inputs))
    layers = _per_layer_values(model, inputs, targets, chunk_size)
    shares = {path: v.double().mean().item() for path, v in layers.items()} if per_layer else {}
    return trace_estimate(_total(layers, inputs), shares)


def trace_estimate(values: torch.Tensor, per_layer: dict[str, float] | None = None) -> TraceEstimate:
    """The probe mean of per-example values (N,) and its standard error (NaN for one example)."""
    values = values.double()
    n = len(values)
    stderr = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return TraceEstimate(mean=values.mean().item(), stderr=stderr, n=n, per_layer=per_layer or {}, per_example=values)


def _targets(
    labels: Labels, generator: torch.Generator | None, label_samples: int, top_classes: int | None, n: int
) -> Targets:
    if (isinstance(labels, str) and labels == "top") != (top_classes is not None):
        raise ValueError("top_classes: an integer ≥ 1 with labels='top' (and only then)")
    if isinstance(labels, str):
        if labels not in ("exact", "top"):
            raise ValueError(f"labels: expected 'exact', 'top', None or a label tensor, got {labels!r}")
        if label_samples != 1:
            raise ValueError(f"label_samples: labels={labels!r} draws at most one label per example; leave it at 1")
        if labels == "exact":
            return Targets("exact")
        assert top_classes is not None
        if top_classes < 1:
            raise ValueError(f"top_classes: expected an integer ≥ 1, got {top_classes!r}")
        return Targets("top", uniforms(n, 1, generator), top_classes)
    if labels is None:
        if label_samples < 1:
            raise ValueError(f"label_samples: expected an integer ≥ 1, got {label_samples!r}")
        return Targets("sampled", uniforms(n, label_samples, generator))
    if label_samples != 1:
        raise ValueError("label_samples: given labels are used as they are; leave it at 1")
    return Targets("given", labels)


def fisher_spectrum(
    model: nn.Module,
    inputs: torch.Tensor,
    k: int,
    labels: Labels = "exact",
    generator: torch.Generator | None = None,
    *,
    label_samples: int = 1,
    top_classes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> SpectrumEstimate:
    """The top-``k`` eigenvalues of the probe Fisher F = (1/N) Σ_i Σ_k w_ik g_ik g_ikᵀ (descending,
    float64) and its trace, for the same ``labels`` as :func:`fisher_trace` (with the same
    generator state, the same sampled labels). Where F has fewer than ``k`` nonzero eigenvalues
    (rank ≤ label sets × examples) the rest are its zeros. ``.method`` says how it was computed:
    the Gram matrix of the per-example gradients where it fits, Lanczos on Fisher-vector
    products otherwise (:mod:`trainables.spectrum`)."""
    check_k(k, model)
    targets = _targets(labels, generator, label_samples, top_classes, len(inputs))
    with torch.no_grad(), eval_mode(model):
        sets = targets.sets(model(inputs[:1]).shape[1])
    estimate = gram_spectrum(model, inputs, targets, sets, k, chunk_size)
    if estimate is not None:
        return estimate
    per_example = _total(_per_layer_values(model, inputs, targets, chunk_size), inputs).double().cpu()
    return lanczos_spectrum(model, inputs, targets, k, chunk_size, per_example)
