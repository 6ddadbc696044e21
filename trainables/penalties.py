"""Gradient-norm penalties: the Fisher penalty (paper Eq. 3) and its baselines (paper §4).

``make_penalty(kind, coef, recompute_every)`` returns an ``nn.Module`` called as
``penalty(model, inputs, labels, logits, generator)`` inside the training step:

- ``fisher``: coef·‖(1/B) Σ_i ∇θ CE(f(x_i), ŷ_i)‖², ŷ_i ∼ softmax(logits) (Tr(F_B));
- ``gp``: the same with the true labels; ``gpr``: with uniformly random labels;
- ``gpx``: coef·(1/B) Σ_i ‖∇_{x_i} CE(f(x_i), y_i)‖² (input-gradient norm, true labels);
- ``vcl``: the variance-constancy loss of Littwin & Wolf (2018), learnable β;
- ``none``: 0.

Gradients go through double backprop over all parameters with ``requires_grad``, in the
model's current mode; sampled and random labels come from the given CPU generator only.

**Recompute every k steps** (paper App. C): on every k-th call (the first included) the penalty
P and its parameter gradient ∇θP are computed afresh and cached. Every call returns a
surrogate whose value is the cached P and whose gradient with respect to the parameters is the
cached ∇θP, so on the k − 1 calls in between the optimizer receives exactly the most recently
computed penalty gradient, evaluated at the parameters of its computation, and nothing is
recomputed. With ``recompute_every=1`` the call returns P itself (differentiable).
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.schema import ConfigError


@contextlib.contextmanager
def batch_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Run a penalty's extra forward on copies of every BatchNorm's running statistics, then put
    the originals back: in train mode each forward updates them, and only the training forward
    should. (Swapped, not copied back in place: the forward's graph may hold the copies.)"""
    originals = [
        (module, name, buffer)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, buffer in module._buffers.items()
        if buffer is not None
    ]
    for module, name, buffer in originals:
        module._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for module, name, buffer in originals:
            module._buffers[name] = buffer


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Penalty(nn.Module, abc.ABC):
    """Base: subclasses define :meth:`compute`; this class handles coef and caching."""

    def __init__(self, coef: float, recompute_every: int = 1) -> None:
        super().__init__()
        self.coef = coef
        self.recompute_every = recompute_every
        self.calls = 0
        self.value = 0.0  # last computed penalty (with coef)
        self.batch_trace: float | None = None  # ‖ḡ‖² when the Fisher penalty computed it
        self.recomputed = False  # whether the last call computed the penalty afresh
        self._grads: list[torch.Tensor] = []

    def prepare(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        """Create any parameters of the penalty itself before the optimizer is built."""

    @abc.abstractmethod
    def compute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The penalty without its coefficient, differentiable with respect to the parameters."""

    def forward(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        params = [*_params(model), *(p for p in self.parameters() if p.requires_grad)]
        recompute = self.calls % self.recompute_every == 0
        self.calls += 1
        self.recomputed = recompute
        if recompute:
            self.batch_trace = None
            penalty = self.coef * self.compute(model, inputs, labels, logits, generator)
            self.value = penalty.item()
            if self.recompute_every == 1:
                return penalty
            grads: tuple[torch.Tensor | None, ...] = (None,) * len(params)  # a constant (e.g. VCL on a short batch)
            if penalty.requires_grad:
                grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
            self._grads = [
                torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=False)
            ]
        linear = sum((p * g).sum() for p, g in zip(params, self._grads, strict=False))
        constant = sum((p.detach() * g).sum() for p, g in zip(params, self._grads, strict=False))
        surrogate: torch.Tensor = linear - constant + self.value  # type: ignore[assignment]
        return surrogate  # value = cached P, gradient = cached ∇θP

    def get_extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "value": self.value, "grads": self._grads}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.calls, self.value, self._grads = state["calls"], state["value"], state["grads"]


class NoPenalty(Penalty):
    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        return torch.zeros((), device=logits.device)

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros((), device=next(model.parameters()).device)


def _sq_norm_of_mean_grad(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """‖∇θ (1/B) Σ_i CE(logits_i, targets_i)‖², differentiable (create_graph)."""
    grads = torch.autograd.grad(F.cross_entropy(logits, targets), _params(model), create_graph=True)
    return sum(g.pow(2).sum() for g in grads)  # type: ignore[return-value]


class FisherPenalty(Penalty):
    """coef·Tr(F_B) with labels sampled from the model (treated as constants).

    A diverged model's non-finite probabilities have no labels to draw: the penalty is then NaN,
    which the training loop records as divergence (``nonfinite``), not as a failed trial."""

    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        probs = logits.detach().double().softmax(1).cpu()
        if not torch.isfinite(probs).all():
            return torch.full((), math.nan, dtype=logits.dtype, device=logits.device)
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
        trace = _sq_norm_of_mean_grad(model, logits, sampled)
        self.batch_trace = trace.item()
        return trace


class GradientPenalty(Penalty):
    """GP: the squared norm of the mini-batch gradient with the true labels."""

    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        return _sq_norm_of_mean_grad(model, logits, labels)


class RandomLabelGradientPenalty(Penalty):
    """GPr: the same with labels drawn uniformly over the classes."""

    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        random = torch.randint(logits.shape[1], (len(labels),), generator=generator).to(logits.device)
        return _sq_norm_of_mean_grad(model, logits, random)


class InputGradientPenalty(Penalty):
    """GPx: mean over examples of ‖∇_x CE(f(x), y)‖²; needs its own forward (x requires grad),
    which leaves BatchNorm's running statistics as the training forward left them."""

    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        x = inputs.detach().requires_grad_(True)
        with batch_statistics_kept(model):
            logits_x = model(x)
        loss = F.cross_entropy(logits_x, labels, reduction="sum")  # sum: each x_i gets its own ∇
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        return gx.pow(2).flatten(1).sum(1).mean()


class VarianceConstancyPenalty(Penalty):
    """VCL (Littwin & Wolf 2018): Σ_layers mean_j (1 − s²₁ⱼ/(s²₂ⱼ + βⱼ))².

    s²₁, s²₂ are the sample variances of each pre-activation unit j (the input of every
    activation module) over two disjoint subsets of ``SUBSET`` examples of the mini-batch, as in
    the authors' code; β is a learnable per-unit tensor initialised to 1 that joins the
    optimizer. The pre-activations come from a forward of those 2·``SUBSET`` examples in the
    model's current mode. VCL is meant for networks without BatchNorm (its authors use it
    instead of BN); with BN, that forward and the one that sizes β leave the running statistics
    as they were. It needs batches of at least 2·``SUBSET`` examples (the config refuses
    smaller ones); a shorter last batch of an epoch adds no penalty.
    """

    SUBSET = 5
    ACTIVATIONS = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.Softplus)

    def __init__(self, coef: float, recompute_every: int = 1) -> None:
        super().__init__(coef, recompute_every)
        self.beta = nn.ParameterList()

    def _activations(self, model: nn.Module) -> list[nn.Module]:
        found: list[nn.Module] = [m for m in model.modules() if isinstance(m, self.ACTIVATIONS)]
        if not found:
            raise ConfigError(
                "penalty.kind: vcl needs activation modules (nn.ReLU, nn.ELU, …) to hook, and this model has none"
            )
        return found

    def _pre_activations(self, model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of every activation module, copied: an in-place activation
        (``ReLU(inplace=True)``) overwrites the tensor it is given, which would otherwise leave the
        post-activations here. The copy is differentiable and covers only 2·SUBSET examples."""
        captured: list[torch.Tensor] = []
        handles = [
            m.register_forward_pre_hook(lambda _, args: captured.append(args[0].clone()))
            for m in self._activations(model)
        ]
        try:
            with batch_statistics_kept(model):
                model(inputs[: 2 * self.SUBSET])
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def prepare(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        if len(self.beta):
            return
        with torch.no_grad():
            shapes = [a.shape[1:] for a in self._pre_activations(model, example_inputs)]
        device = example_inputs.device
        self.beta.extend(nn.Parameter(torch.ones(shape, device=device)) for shape in shapes)

    def compute(self, model, inputs, labels, logits, generator):  # type: ignore[no-untyped-def]
        if len(inputs) < 2 * self.SUBSET:
            return torch.zeros((), device=inputs.device)
        if not len(self.beta):
            self.prepare(model, inputs)
        losses = []
        for act, beta in zip(self._pre_activations(model, inputs), self.beta, strict=True):
            first, second = act[: self.SUBSET], act[self.SUBSET : 2 * self.SUBSET]
            ratio = first.var(0, unbiased=True) / (second.var(0, unbiased=True) + beta)
            losses.append((1 - ratio).pow(2).mean())
        return torch.stack(losses).sum()


PENALTIES: dict[str, type[Penalty]] = {
    "none": NoPenalty,
    "fisher": FisherPenalty,
    "gp": GradientPenalty,
    "gpr": RandomLabelGradientPenalty,
    "gpx": InputGradientPenalty,
    "vcl": VarianceConstancyPenalty,
}


def make_penalty(kind: str, coef: float, recompute_every: int = 1) -> Penalty:
    if kind not in PENALTIES:
        raise ConfigError(f"penalty.kind: unknown penalty {kind!r}; choose one of {sorted(PENALTIES)}")
    return PENALTIES[kind](coef=coef, recompute_every=recompute_every)
