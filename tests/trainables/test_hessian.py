"""Tr(H) by Hutchinson against the trace of the dense Hessian (float64), its stderr against
theory (Var vᵀHv = 2‖H‖_F² for Gaussian probes), and its logging on its own schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables import report
from trainables.config import TrialConfig
from trainables.hessian import hessian_trace
from trainables.loop import train
from trainables.schema import ConfigError


def tanh_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def conv_bn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def frozen_first_layer() -> nn.Sequential:
    model = tanh_mlp()
    model[0].requires_grad_(False)
    return model


CASES = {"tanh_mlp": (tanh_mlp, (5,)), "conv_bn": (conv_bn, (1, 6, 6)), "frozen": (frozen_first_layer, (5,))}


def case(name: str) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    build, shape = CASES[name]
    torch.manual_seed(0)
    model = build().double()
    with torch.no_grad():  # BatchNorm running statistics away from their initial values
        model(torch.randn(32, *shape, dtype=torch.float64) + 0.5)
    model.train()
    return model, torch.randn(12, *shape, dtype=torch.float64), torch.randint(3, (12,))


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇²θ of the mean cross-entropy in eval mode over the trainable parameters, as one matrix."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    sizes = [p.numel() for p in trainable.values()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = dict(
            zip(
                trainable,
                (c.view_as(p) for c, p in zip(flat.split(sizes), trainable.values(), strict=True)),
                strict=True,
            )
        )
        return F.cross_entropy(functional_call(model, {**parts, **frozen, **buffers}, (x,)), y)

    model.eval()
    try:
        return torch.autograd.functional.hessian(loss, torch.cat([p.flatten() for p in trainable.values()]))
    finally:
        model.train()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_estimate_converges_to_the_dense_trace_with_the_stderr_theory_gives(name: str) -> None:
    model, x, y = case(name)
    h = dense_hessian(model, x, y)
    probes = 3000
    est = hessian_trace(model, x, y, probes=probes, generator=torch.Generator().manual_seed(1), chunk=500)
    assert est.n == probes
    assert abs(est.mean - h.trace().item()) < 4 * est.stderr
    theory = (2 * (h**2).sum().item() / probes) ** 0.5  # Gaussian probes: Var vᵀHv = 2‖H‖_F²
    assert est.stderr == pytest.approx(theory, rel=0.15)


def test_the_frozen_layer_is_left_out() -> None:
    model, x, y = case("frozen")
    h = dense_hessian(model, x, y)
    assert h.shape == (7 * 3 + 3,) * 2  # only the second Linear's weight and bias


def test_same_generator_same_value_whatever_the_chunk() -> None:
    model, x, y = case("conv_bn")
    values = {
        chunk: hessian_trace(model, x, y, probes=30, generator=torch.Generator().manual_seed(5), chunk=chunk).mean
        for chunk in (1, 7, 30)
    }
    assert len(set(values.values())) == 1, values


def test_modes_and_grads_are_left_as_they_were() -> None:
    model, x, y = case("conv_bn")
    model[1].eval()  # one module already in eval mode
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    modes = [m.training for m in model.modules()]
    hessian_trace(model, x, y, probes=4, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in model.modules()] == modes
    after = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert after.keys() == grads.keys() and all(torch.equal(after[n], g) for n, g in grads.items())


def test_fewer_than_two_probes_is_refused() -> None:
    model, x, y = case("tanh_mlp")
    with pytest.raises(ValueError, match="probes: an integer ≥ 2"):
        hessian_trace(model, x, y, probes=1, generator=torch.Generator())


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"trace": {"probes": 1}},
            r"hessian\.trace\.probes: must be an integer ≥ 2 \(a standard error needs two\), got 1",
        ),
        ({"trace": {"every_epochs": 0}}, r"hessian\.trace\.every_epochs: must be an integer ≥ 1, got 0"),
        ({"trace": {"probe": 30}}, r"hessian\.trace\.probe: unknown key"),
    ],
)
def test_the_spec_section_is_validated(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_mapping({"model": {"name": "mlp"}, "hessian": section})


def tiny(**hessian: object) -> TrialConfig:
    return TrialConfig.from_mapping(
        {
            "model": {"name": "mlp", "hidden": 8, "depth": 1},
            "train": {"epochs": 3, "batch_size": 256, "lr": 0.05},
            "fisher": {"samples": 16, "schedule": {"dense_until_epoch": 1, "dense_every": 2, "sparse_every": 5}},
            **({"hessian": hessian} if hessian else {}),
        }
    )


def test_a_trial_logs_tr_h_at_step_0_and_every_nth_epoch_end_only_when_asked() -> None:
    cfg = tiny(trace={"probes": 4, "every_epochs": 2})
    reports = list(train(cfg, torch.device("cpu")))
    steps_per_epoch = reports[0].step
    points = [p for r in reports for p in r.curves.get(report.HESSIAN_TRACE, [])]
    assert [s for s, _ in points] == [0, 2 * steps_per_epoch]
    stderrs = [v for r in reports for _, v in r.curves.get(report.HESSIAN_TRACE_STDERR, [])]
    assert len(stderrs) == 2 and all(v > 0 for v in stderrs)
    assert all(report.HESSIAN_TRACE not in r.curves for r in train(tiny(), torch.device("cpu")))
