"""Penalty values and gradients against torch.func of the written formulas (paper Eq. 3, §4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from trainables.penalties import make_penalty
from trainables.schema import ConfigError

COEF = 0.3


def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()
    return model, torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.randint(4, (5,))


def formula(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor):  # type: ignore[no-untyped-def]
    """coef·‖∇θ mean CE(f(x), targets)‖², or GPx's coef·mean_i ‖∇_x CE‖², as a function of θ."""

    def value(params):  # type: ignore[no-untyped-def]
        if kind == "gpx":
            per_x = grad(lambda xx: F.cross_entropy(functional_call(model, params, (xx,)), y, reduction="sum"))(x)
            return COEF * per_x.pow(2).flatten(1).sum(1).mean()
        inner = grad(lambda p: F.cross_entropy(functional_call(model, p, (x,)), targets))(params)
        return COEF * sum(g.pow(2).sum() for g in inner.values())

    return value


def targets_for(kind: str, logits: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "fisher":
        return torch.multinomial(logits.detach().double().softmax(1), 1, generator=g).squeeze(1)
    if kind == "gpr":
        return torch.randint(logits.shape[1], (len(y),), generator=g)
    return y


@pytest.mark.parametrize("kind", ["fisher", "gp", "gpr", "gpx"])
def test_value_and_gradient_match_the_formula(kind: str) -> None:
    model, x, y = setup()
    logits = model(x)
    penalty = make_penalty(kind, COEF)
    out = penalty(model, x, y, logits, torch.Generator().manual_seed(11))
    params = dict(model.named_parameters())
    fn = formula(kind, model, x, y, targets_for(kind, logits, y, 11))
    assert out.item() == pytest.approx(fn(params).item(), rel=1e-10)
    got = torch.autograd.grad(out, list(params.values()))
    expected = grad(fn)({k: v.detach() for k, v in params.items()})
    for (name, _), g in zip(params.items(), got, strict=True):
        torch.testing.assert_close(g, expected[name], rtol=1e-8, atol=1e-12)


def test_fisher_penalty_records_the_batch_trace() -> None:
    model, x, y = setup()
    penalty = make_penalty("fisher", COEF)
    out = penalty(model, x, y, model(x), torch.Generator().manual_seed(1))
    assert penalty.batch_trace == pytest.approx(out.item() / COEF, rel=1e-12)


def test_call_leaves_grad_alone() -> None:
    model, x, y = setup()
    make_penalty("gp", COEF)(model, x, y, model(x))
    assert all(p.grad is None for p in model.parameters())


def test_recompute_every_reuses_the_cached_gradient_in_between() -> None:
    model, x, y = setup()
    penalty = make_penalty("gp", COEF, recompute_every=3)
    params = list(model.parameters())
    first = penalty(model, x, y, model(x))
    first_grads = torch.autograd.grad(first, params)
    fresh = make_penalty("gp", COEF)
    with torch.no_grad():  # move the parameters: a recomputation would now differ
        for p in params:
            p.add_(0.05)
    for _ in range(2):
        out = penalty(model, x, y, model(x))
        assert out.item() == pytest.approx(first.item(), rel=1e-12)
        for g, g0 in zip(torch.autograd.grad(out, params), first_grads, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-15)
    fourth = penalty(model, x, y, model(x))  # 4th call: recomputed at the new parameters
    assert fourth.item() == pytest.approx(fresh(model, x, y, model(x)).item(), rel=1e-10)
    assert fourth.item() != pytest.approx(first.item(), rel=1e-6)


def test_cache_survives_state_dict_round_trip() -> None:
    model, x, y = setup()
    penalty = make_penalty("gp", COEF, recompute_every=5)
    penalty(model, x, y, model(x))
    restored = make_penalty("gp", COEF, recompute_every=5)
    restored.load_state_dict(penalty.state_dict())
    assert restored.calls == 1 and restored.value == penalty.value


def test_none_is_zero_and_unknown_kind_is_a_config_error() -> None:
    model, x, y = setup()
    assert make_penalty("none", 0.0)(model, x, y, model(x)).item() == 0.0
    with pytest.raises(ConfigError, match=r"penalty\.kind"):
        make_penalty("l2", 1.0)


def test_vcl_matches_its_formula_and_trains_beta() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(3, (12,))
    penalty = make_penalty("vcl", COEF).double()
    penalty.prepare(model, x)
    betas = list(penalty.parameters())
    assert len(betas) == 1 and betas[0].shape == (6,) and bool((betas[0] == 1).all())
    out = penalty(model, x, y, model(x))
    h = model[0](x[:10])  # pre-activations of the ReLU on the first 2 × 5 examples
    expected = COEF * (1 - h[:5].var(0) / (h[5:10].var(0) + 1)).pow(2).mean()
    assert out.item() == pytest.approx(expected.item(), rel=1e-12)
    grads = torch.autograd.grad(out, [*model.parameters(), *betas], allow_unused=True)
    assert all(bool(g.abs().sum() > 0) for g in (grads[0], grads[-1]))


def test_vcl_without_activation_modules_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vcl"):
        make_penalty("vcl", 0.1).prepare(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.zeros(12, 4))


def test_vcl_sees_pre_activations_of_in_place_activations() -> None:
    """Regression: the pre-hook kept the very tensor that ReLU(inplace=True) then overwrote, so the
    variances were those of the post-activations (issue 13, item 5)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(3, (12,))
    penalty = make_penalty("vcl", COEF).double()
    out = penalty(model, x, y, model(x))
    h = model[0](x[:10])  # pre-activations, computed apart
    expected = COEF * (1 - h[:5].var(0) / (h[5:10].var(0) + 1)).pow(2).mean()
    assert out.item() == pytest.approx(expected.item(), rel=1e-12)
    (grad_w,) = torch.autograd.grad(out, [model[0].weight])
    (expected_w,) = torch.autograd.grad(expected, [model[0].weight])
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["gpx", "vcl"])
def test_an_extra_forward_leaves_batch_norm_statistics_alone(kind: str) -> None:
    """GPx and VCL run their own train-mode forward; only the training forward may move BN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double().train()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randint(3, (12,))
    penalty = make_penalty(kind, COEF)
    penalty.prepare(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    penalty(model, x, y, model(x).detach(), torch.Generator().manual_seed(0))  # this forward moves them once
    model(x)
    after = {k: v for k, v in model.state_dict().items() if k in before}
    reference = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double().train()
    reference.load_state_dict({**model.state_dict(), **before})
    reference(x)
    reference(x)
    for name, value in reference.state_dict().items():
        if name in before:
            torch.testing.assert_close(after[name], value)


def test_a_penalty_without_a_gradient_caches_zeros() -> None:
    """VCL on a last batch shorter than its two subsets is 0 with no graph; caching it raised."""
    model, x, y = setup()
    penalty = make_penalty("vcl", COEF, recompute_every=3)
    penalty.prepare(model, torch.randn(12, 1, 4, 4, dtype=torch.float64))
    out = penalty(model, x[:4], y[:4], model(x[:4]), None)
    assert out.item() == 0.0 and all(bool((g == 0).all()) for g in penalty._grads)
