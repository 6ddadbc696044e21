"""fisher_spectrum against a dense eigendecomposition of F built from per-example gradients (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables import spectrum
from trainables.fisher import fisher_spectrum, fisher_trace, sample_labels

from .fisher_cases import CASES, build


def dense_fisher(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(1/N) Σ_i Σ_c w_ic g_ic g_icᵀ, the P × P matrix, from a loop of per-example gradients:
    all classes weighted by p_c, or the given labels with weight 1."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        probs = model(x).softmax(1)
    rows, weights = [], []
    for i in range(len(x)):
        for c in range(probs.shape[1]) if labels is None else [int(labels[i])]:
            grads = torch.autograd.grad(
                F.cross_entropy(model(x[i : i + 1]), torch.tensor([c])), params, allow_unused=True
            )
            rows.append(
                torch.cat(
                    [(torch.zeros_like(p) if d is None else d).reshape(-1) for p, d in zip(params, grads, strict=True)]
                )
            )
            weights.append(probs[i, c] if labels is None else torch.tensor(1.0, dtype=torch.float64))
    g = torch.stack(rows) * torch.stack(weights).sqrt().unsqueeze(1)
    return g.T @ g / len(x)


def top(matrix: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrix).flip(0)[:k].clamp(min=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_spectrum_matches_the_dense_fisher(name: str) -> None:
    model, x, _ = build(name, 4)
    est = fisher_spectrum(model, x, k=3, labels="exact")
    expected = top(dense_fisher(model, x, None), 3)
    assert est.method == "gram"
    torch.testing.assert_close(est.eigenvalues, expected, rtol=1e-6, atol=1e-12)
    assert est.trace == pytest.approx(fisher_trace(model, x, labels="exact").mean, rel=1e-9)
    assert est.eigenvalues.dtype == torch.float64 and bool((est.eigenvalues[:-1] >= est.eigenvalues[1:]).all())


@pytest.mark.parametrize(
    "name", ["conv2d_bn_residual_inplace", "conv1d_bn_dilated_grouped", "frozen", "sequence_ghost"]
)
def test_sampled_spectrum_uses_the_labels_fisher_trace_draws(name: str) -> None:
    model, x, _ = build(name, 5)
    labels = sample_labels(model, x, torch.Generator().manual_seed(3))
    est = fisher_spectrum(model, x, k=2, labels=None, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(est.eigenvalues, top(dense_fisher(model, x, labels), 2), rtol=1e-6, atol=1e-12)
    trace = fisher_trace(model, x, labels=None, generator=torch.Generator().manual_seed(3)).mean
    assert est.trace == pytest.approx(trace, rel=1e-9)


@pytest.mark.parametrize("name", ["conv1d_bn_dilated_grouped", "tied", "frozen"])
def test_lanczos_agrees_with_the_gram(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, _ = build(name, 4)
    gram = fisher_spectrum(model, x, k=2, labels="exact")
    monkeypatch.setattr(spectrum, "GRAM_ROWS", 0)
    lanczos = fisher_spectrum(model, x, k=2, labels="exact")
    assert lanczos.method == "lanczos"
    torch.testing.assert_close(lanczos.eigenvalues, gram.eigenvalues, rtol=1e-6, atol=1e-12)
    assert lanczos.trace == pytest.approx(gram.trace, rel=1e-9)


def test_gram_that_would_keep_too_much_falls_back_to_lanczos(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, _ = build("frozen", 3)
    monkeypatch.setattr(spectrum, "GRAM_ELEMENTS", 10)
    assert fisher_spectrum(model, x, k=1, labels="exact").method == "lanczos"


def test_more_eigenvalues_than_rows_are_the_fisher_zeros() -> None:
    model, x, _ = build("frozen", 2)  # 2 examples × 3 classes: rank ≤ 6 (≤ 4 with softmax's null direction)
    est = fisher_spectrum(model, x, k=8, labels="exact")
    torch.testing.assert_close(est.eigenvalues, top(dense_fisher(model, x, None), 8), rtol=1e-6, atol=1e-12)
    assert est.eigenvalues[6:].abs().max() == 0


@pytest.mark.parametrize("k", [0, -1, 10**9, 2.5])
def test_k_out_of_range_is_refused(k: object) -> None:
    model, x, _ = build("frozen", 2)
    with pytest.raises(ValueError, match="k: expected an integer"):
        fisher_spectrum(model, x, k=k, labels="exact")  # type: ignore[arg-type]
