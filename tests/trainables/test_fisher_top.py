"""labels="top": the top classes exactly plus one label drawn from the rest, against the exact trace."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.fisher import fisher_spectrum, fisher_trace
from trainables.fisher_config import FORWARD_COST, ROW_COST, FisherConfig
from trainables.per_example import top_and_rest
from trainables.schema import ConfigError

from .fisher_cases import build


def spread_net() -> tuple[nn.Module, torch.Tensor]:
    """A float64 MLP over 5 classes whose softmax leaves mass on several classes per example."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    return model, 2 * torch.randn(30, 5, dtype=torch.float64)


@pytest.mark.parametrize("top", [1, 2])
def test_mean_over_draws_converges_to_the_exact_trace(top: int) -> None:
    model, x = spread_net()
    exact = fisher_trace(model, x, labels="exact").mean
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor(
        [fisher_trace(model, x, labels="top", top_classes=top, generator=g).mean for _ in range(200)],
        dtype=torch.float64,
    )
    assert draws.std() > 0  # the rest's label is drawn: the estimate is random
    assert abs(draws.mean().item() - exact) < 4 * draws.std().item() / math.sqrt(len(draws))


@pytest.mark.parametrize("name", ["conv2d_bn_residual_inplace", "tied", "sequence_ghost"])
def test_all_but_one_class_or_more_gives_the_exact_value(name: str) -> None:
    model, x, _ = build(name, 5)
    with torch.no_grad():
        classes = model.eval()(x).shape[1]
    exact = fisher_trace(model, x, labels="exact", per_layer=True)
    for top, seed in ((classes - 1, 0), (classes - 1, 1), (classes + 3, 0)):  # C − 1: the rest is one class
        got = fisher_trace(
            model, x, labels="top", top_classes=top, generator=torch.Generator().manual_seed(seed), per_layer=True
        )
        assert got.mean == pytest.approx(exact.mean, rel=1e-12)
        assert got.stderr == pytest.approx(exact.stderr, rel=1e-12)
        assert got.per_layer == pytest.approx(exact.per_layer, rel=1e-12)


def test_the_same_generator_gives_the_same_value_whatever_the_chunks() -> None:
    model, x = spread_net()
    a = fisher_trace(model, x, labels="top", top_classes=1, generator=torch.Generator().manual_seed(5))
    b = fisher_trace(model, x, labels="top", top_classes=1, generator=torch.Generator().manual_seed(5), chunk_size=7)
    c = fisher_trace(model, x, labels="top", top_classes=1, generator=torch.Generator().manual_seed(6))
    assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.stderr == pytest.approx(b.stderr, rel=1e-12)
    assert a.mean != c.mean


def test_stderr_matches_the_spread_over_probes_and_label_draws() -> None:
    """Probes of 20 drawn with replacement from 30 examples, labels drawn anew: the std of the mean
    over 300 such estimates against the mean reported stderr (which covers both sources)."""
    model, x = spread_net()
    g = torch.Generator().manual_seed(1)
    means, stderrs = [], []
    for _ in range(300):
        probe = x[torch.randint(len(x), (20,), generator=g)]
        est = fisher_trace(model, probe, labels="top", top_classes=1, generator=g)
        means.append(est.mean)
        stderrs.append(est.stderr)
    spread = torch.tensor(means, dtype=torch.float64).std().item()
    reported = math.sqrt(torch.tensor(stderrs, dtype=torch.float64).square().mean().item())
    assert reported == pytest.approx(spread, rel=0.15)  # the std of a std over 300 draws is ~4 %


def test_top_and_rest_weights_sum_to_one_and_rest_mass_zero_is_exact() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    labels, weights = top_and_rest(probs, 1, torch.tensor([0.99, 0.5], dtype=torch.float64))
    assert labels[:, 0].tolist() == [0, 0] and labels[0, 1].item() == 2  # u = 0.99 → the rest's last class
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64))
    labels, weights = top_and_rest(probs, 2, torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert labels[0].tolist() == [0, 1, 2]  # a zero-probability class is never drawn
    assert weights.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_spectrum_with_top_labels_has_the_trace_of_fisher_trace() -> None:
    model, x = spread_net()
    spectrum = fisher_spectrum(model, x, 3, labels="top", top_classes=1, generator=torch.Generator().manual_seed(2))
    trace = fisher_trace(model, x, labels="top", top_classes=1, generator=torch.Generator().manual_seed(2))
    assert spectrum.trace == pytest.approx(trace.mean, rel=1e-9)
    assert spectrum.rows == 2 * len(x)


def test_bad_arguments_are_refused() -> None:
    model, x = spread_net()
    with pytest.raises(ValueError, match="top_classes"):
        fisher_trace(model, x, labels="top")
    with pytest.raises(ValueError, match="top_classes"):
        fisher_trace(model, x, labels="exact", top_classes=1)
    with pytest.raises(ValueError, match="top_classes"):
        fisher_trace(model, x, labels="top", top_classes=0)
    with pytest.raises(ValueError, match="label_samples"):
        fisher_trace(model, x, labels="top", top_classes=1, label_samples=2)


def test_config_top_classes_and_its_cost() -> None:
    cfg = FisherConfig(samples=64, labels="top", top_classes=2)
    assert (cfg.trace_labels, cfg.top) == ("top", 2)
    assert cfg.point_cost(num_classes=10, batch_size=32) == pytest.approx(2 * (FORWARD_COST + 3 * ROW_COST))
    assert FisherConfig(samples=64, labels="top", top_classes=20).point_cost(10, 32) == pytest.approx(
        2 * (FORWARD_COST + 10 * ROW_COST)
    )
    assert FisherConfig(labels="top").top == 2 and FisherConfig(labels="exact").top is None
    for bad in ({"labels": "exact", "top_classes": 1}, {"labels": "top", "top_classes": 0}):
        with pytest.raises(ConfigError, match=r"fisher\.top_classes"):
            FisherConfig(**bad)  # type: ignore[arg-type]
