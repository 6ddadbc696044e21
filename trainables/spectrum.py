"""The top eigenvalues of the probe Fisher, F = (1/N) Σ_i Σ_k w_ik g_ik g_ikᵀ, without a P × P matrix.

g_ik is example i's score gradient for label set k (``p − e_y`` back-propagated), w_ik its weight
(p_c for the exact expectation over classes, 1/K for K sampled labels, 1 for given labels).
With rows h_r = √(w_r/N) g_r, F = HᵀH, whose nonzero eigenvalues are those of the R × R Gram
matrix H Hᵀ (R = K·N rows). Two ways, chosen by size:

- **Gram** (R ≤ :data:`GRAM_ROWS` and the kept rows within :data:`GRAM_ELEMENTS`): the passes of
  :mod:`trainables.per_example` give every layer's rows (:mod:`trainables.layer_grads`: Linear
  layers as factors, (δ_r·δ_s)(a_i·a_j), others instantiated), the Gram is their sum of inner
  products, its eigenvalues come from one dense ``eigvalsh`` in float64, and Tr(F) is its trace,
  so spectrum and trace agree by construction. With C = 100 classes exact on 64 examples R is
  6,400: a 330 MB float64 Gram.
- **Lanczos** otherwise: ``scipy.sparse.linalg.eigsh`` on Fisher-vector products
  F v = (1/N) Jᵀ M J v (one ``torch.func.jvp`` and one ``vjp`` per product, M_i = Σ_k w_ik u_ik u_ikᵀ,
  u = p − e_y), memory O(P + N·C); Tr(F) then comes from the trace estimator on the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, jvp, vjp

from trainables.layer_grads import LinearFactors, has_row_gradients, rows
from trainables.per_example import Targets, eval_mode, refuse_batch_coupling, run_passes

GRAM_ROWS = 8192  # rows (label sets × examples) up to which the Gram is formed (512 MiB in float64)
GRAM_ELEMENTS = 1 << 27  # row-gradient elements the Gram path may keep (512 MiB in fp32)
LANCZOS_TOL = 1e-10  # ARPACK's relative accuracy of the eigenvalues


@dataclass(frozen=True, slots=True)
class SpectrumEstimate:
    """Top-k eigenvalues of the probe Fisher (float64, descending), its trace, and how they were computed."""

    eigenvalues: torch.Tensor
    trace: float
    per_example: torch.Tensor  # (N,) float64, Σ_k w_ik ‖g_ik‖²: the values Tr(F) is the mean of
    n: int  # probe examples
    rows: int  # label sets × examples
    method: Literal["gram", "lanczos"]


class _TooLarge(Exception):
    """The Gram path's rows would pass GRAM_ELEMENTS: use Lanczos (a size decision, not an error)."""


class _GramRows:
    """Visitor of the passes that keeps every layer's rows, scaled by √(w/N), then sums their Grams."""

    def __init__(self, n: int, sets: int) -> None:
        self.n, self.sets = n, sets
        self.kept = 0
        self.instantiated: dict[str, list[tuple[slice, slice, torch.Tensor]]] = {}
        self.factors: dict[str, list[tuple[slice, slice, LinearFactors]]] = {}

    def _keep(self, elements: int) -> None:
        self.kept += elements
        if self.kept > GRAM_ELEMENTS:
            raise _TooLarge

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
        scaled = delta * (weights / self.n).sqrt().reshape(*weights.shape, *(1,) * (delta.dim() - 2))
        got = rows(module, a, scaled)
        if isinstance(got, LinearFactors):
            self._keep(got.delta.numel() + (0 if got.a is None else got.a.numel()))
            self.factors.setdefault(path, []).append((sets, examples, got))
        else:
            self._keep(got.numel())
            self.instantiated.setdefault(path, []).append((sets, examples, got))

    def fallback(self, path: str, grads: torch.Tensor, weights: torch.Tensor, label_set: int, examples: slice) -> None:
        self._keep(grads.numel())
        scaled = grads * (weights / self.n).sqrt().unsqueeze(1)
        self.instantiated.setdefault(path, []).append((slice(label_set, label_set + 1), examples, scaled.unsqueeze(0)))

    def unreached(self, path: str, examples: slice, like: torch.Tensor) -> None:
        return None  # a zero gradient adds nothing to the Gram

    def gram(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(R, R) in float64, rows ordered (label set, example)."""
        r = self.sets * self.n
        out = torch.zeros(r, r, dtype=torch.float64, device=device)
        for pieces in self.instantiated.values():
            h = self._assemble(pieces, lambda g: g, pieces[0][2].shape[2], dtype, device)
            out += (h @ h.T).double()
        for factors in self.factors.values():
            first = factors[0][2]
            delta = self._assemble(factors, lambda f: f.delta, first.delta.shape[2], dtype, device)
            inner = torch.zeros(r, r, dtype=torch.float64, device=device)
            if first.a is not None:
                a = torch.zeros(self.n, first.a.shape[1], dtype=dtype, device=device)
                for _, examples, f in factors:
                    assert f.a is not None
                    a[examples] = f.a
                inner += (a @ a.T).double().repeat(self.sets, self.sets)
            if first.bias:
                inner += 1.0
            out += (delta @ delta.T).double() * inner
        return out

    def _assemble(self, parts, field, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """(R, width) from the per-chunk (k', M, width) pieces."""
        h = torch.zeros(self.sets, self.n, width, dtype=dtype, device=device)
        for sets, examples, piece in parts:
            h[sets, examples] = field(piece)
        return h.reshape(self.sets * self.n, width)


def gram_spectrum(
    model: nn.Module, inputs: torch.Tensor, targets: Targets, sets: int, k: int, chunk_size: int
) -> SpectrumEstimate | None:
    """Top-k eigenvalues and trace from the Gram matrix, or ``None`` where it would be too large."""
    n = len(inputs)
    if sets * n > GRAM_ROWS:
        return None
    visitor = _GramRows(n, sets)
    try:
        run_passes(model, inputs, targets, chunk_size, visitor, hooked=has_row_gradients)
    except _TooLarge:
        return None
    gram = visitor.gram(inputs.dtype, inputs.device)
    eigenvalues = torch.linalg.eigvalsh(gram).flip(0).clamp_(min=0.0).cpu()
    top = torch.zeros(k, dtype=torch.float64)
    top[: min(k, len(eigenvalues))] = eigenvalues[:k]
    per_example = gram.diagonal().reshape(sets, n).sum(0).cpu() * n
    return SpectrumEstimate(top, gram.trace().item(), per_example, n, sets * n, "gram")


def lanczos_spectrum(
    model: nn.Module, inputs: torch.Tensor, targets: Targets, k: int, chunk_size: int, per_example: torch.Tensor
) -> SpectrumEstimate:
    """Top-k eigenvalues by Lanczos (ARPACK) on Fisher-vector products; the per-example Tr(F)
    values computed elsewhere (by the trace estimator, on the same labels)."""
    refuse_batch_coupling(model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    theta = {name: params[name].detach() for name in names}
    sizes = [theta[name].numel() for name in names]
    n = len(inputs)
    with eval_mode(model):
        chunks = []
        for start in range(0, n, chunk_size):
            x = inputs[start : start + chunk_size]
            with torch.no_grad():
                probs = model(x).softmax(1)
            labels, weights = targets.chunk(start, start + len(x)).labels_for(probs)
            u = probs.unsqueeze(0) - torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
            chunks.append((x, u, weights))

        def logits_of(x: torch.Tensor):  # type: ignore[no-untyped-def]
            rest = {name: p.detach() for name, p in params.items() if name not in theta}
            return lambda th: functional_call(model, (th, rest, dict(model.named_buffers())), (x,))

        def matvec(v: np.ndarray) -> np.ndarray:
            flat = torch.as_tensor(v.ravel(), dtype=inputs.dtype, device=inputs.device)
            tangent = {nm: t.view_as(theta[nm]) for nm, t in zip(names, flat.split(sizes), strict=True)}
            total = torch.zeros_like(flat, dtype=torch.float64)
            for x, u, w in chunks:
                f = logits_of(x)
                jv = jvp(f, (theta,), (tangent,))[1]  # (M, C)
                mjv = torch.einsum("km,kmc->mc", w * torch.einsum("kmc,mc->km", u, jv), u)  # M_i J_i v
                pullback = vjp(f, theta)[1]
                (g,) = pullback(mjv / n)
                total += torch.cat([g[nm].reshape(-1) for nm in names]).double()
            return total.cpu().numpy()

        p = sum(sizes)
        operator = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
        values = eigsh(operator, k=k, which="LA", return_eigenvectors=False, tol=LANCZOS_TOL)
    top = torch.from_numpy(np.sort(values)[::-1].copy()).clamp_(min=0.0)
    rows = len(chunks[0][1]) * n if chunks else 0
    return SpectrumEstimate(top, per_example.mean().item(), per_example, n, rows, "lanczos")


def check_k(k: int, model: nn.Module) -> None:
    p = sum(q.numel() for q in model.parameters() if q.requires_grad)
    if not isinstance(k, int) or not 1 <= k < max(2, p):
        raise ValueError(f"k: expected an integer from 1 to {p - 1} (the model's trainable parameters − 1), got {k!r}")
