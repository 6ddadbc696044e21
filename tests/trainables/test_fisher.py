"""Per-example squared gradient norms and Tr(F) against a float64 per-example autograd loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainables import fisher as fisher_module
from trainables import per_example
from trainables.fisher import (
    UndefinedPerExampleGradient,
    fisher_trace,
    per_example_sq_grad_norms,
    sample_labels,
)

from .fisher_cases import CASES, build, reference_norms, routes


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("n", [1, 5, 17])
def test_norms_match_per_example_loop(name: str, n: int) -> None:
    model, x, y = build(name, n)
    expected = reference_norms(model, x, y)
    got = per_example_sq_grad_norms(model, x, y)
    assert got.shape == (n,)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_images_go_through_the_passes_channels_last_on_the_cpu() -> None:
    model, x, y = build("wide_conv", 5)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    layouts: list[bool] = []
    handle = first.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        got = per_example_sq_grad_norms(model, x, y)
        first_call = len(layouts)
        per_example_sq_grad_norms(model, x, y)
    finally:
        handle.remove()
    # the first call also probes, once per model, the layout (1 forward) and the batch dims (2)
    assert all(layouts) and first_call == 4 and len(layouts) == 5
    assert x.is_contiguous()  # the caller's tensor keeps its layout
    torch.testing.assert_close(got, reference_norms(model, x, y), rtol=1e-6, atol=0)
    signals = torch.randn(3, 2, 16)
    assert per_example.pass_layout(model, signals) is signals
    with_batch_norm, images, _ = build("conv2d_bn_residual_inplace", 2)
    assert per_example.pass_layout(with_batch_norm, images) is images


def test_model_mode_parameters_grads_and_buffers_untouched() -> None:
    model, x, y = build("conv2d_bn_residual_inplace", 6)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    model.train()
    per_example_sq_grad_norms(model, x, y, chunk_size=4)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_chunking_does_not_change_values() -> None:
    model, x, y = build("conv1d_bn_dilated_grouped", 11)
    torch.testing.assert_close(
        per_example_sq_grad_norms(model, x, y, chunk_size=3), per_example_sq_grad_norms(model, x, y), rtol=1e-12, atol=0
    )


def test_fisher_trace_mean_stderr_and_per_layer() -> None:
    model, x, _ = build("conv2d_bn_residual_inplace", 9)
    est = fisher_trace(model, x, generator=torch.Generator().manual_seed(3), per_layer=True)
    labels = sample_labels(model, x, torch.Generator().manual_seed(3))
    values = reference_norms(model, x, labels)
    assert est.n == 9
    assert est.mean == pytest.approx(values.mean().item(), rel=1e-6)
    assert est.stderr == pytest.approx(values.std().item() / 3, rel=1e-6)
    assert sum(est.per_layer.values()) == pytest.approx(est.mean, rel=1e-9)
    assert "0" in est.per_layer and "5.conv" in est.per_layer and "6" in est.per_layer


def test_empirical_labels_are_used_as_given() -> None:
    model, x, y = build("tied", 7)
    est = fisher_trace(model, x, labels=y)
    assert est.mean == pytest.approx(reference_norms(model, x, y).mean().item(), rel=1e-6)


def test_sampled_estimator_is_unbiased_for_the_exact_trace() -> None:
    """Mean over many label draws ≈ Σ_y p(y|x)‖∇ℓ(x, y)‖² (classes enumerated), within its stderr."""
    model, x, _ = build("frozen", 4)
    with torch.no_grad():
        probs = model.eval()(x).softmax(1)
    exact = sum(
        (probs[:, c] * reference_norms(model, x, torch.full((4,), c))).mean() for c in range(probs.shape[1])
    ).item()
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([fisher_trace(model, x, generator=g).mean for _ in range(400)])
    stderr = draws.std().item() / 20
    assert abs(draws.mean().item() - exact) < 4 * stderr


def test_sampled_labels_come_from_the_generator_alone() -> None:
    model, x, _ = build("tied", 50)
    torch.manual_seed(1)
    a = sample_labels(model, x, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = sample_labels(model, x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_standard_layers_use_closed_forms_and_others_the_fallback() -> None:
    model, x, y = build("sequence_ghost", 4)
    seen = routes(model, x, y)
    assert sorted(seen.by_closed_form | seen.by_fallback) == ["embed", "head", "norm", "twice"]
    assert sorted(seen.by_fallback) == ["norm", "twice"]  # LayerNorm, and a Linear called twice

    model, x, y = build("conv2d_bn_residual_inplace", 4)
    assert routes(model, x, y).by_fallback == set()


REGISTRY_CASES = [
    ("simple_cnn", {"padding": "same", "width": 4, "hidden": 8}, (1, 8, 8)),
    ("simple_cnn", {"padding": "paper", "width": 4, "hidden": 8}, (3, 16, 16)),
    ("mlp", {"hidden": 8, "depth": 2}, (1, 8, 8)),
    ("mlp", {"hidden": 8, "depth": 1}, (1, 40)),  # an MNIST-1D signal, flattened
    ("cnn1d", {"channels": 3}, (1, 40)),
    ("resnet56", {"depth": 8, "width": 4}, (3, 8, 8)),
    ("vgg11", {"width": 2, "hidden": 8}, (3, 32, 32)),
    ("vgg11", {"width": 2, "hidden": 0, "batch_norm": True}, (3, 32, 32)),
    ("wrn", {"depth": 10, "width": 1}, (3, 8, 8)),
    ("wrn", {"depth": 8, "width": 1, "batch_norm": False}, (3, 8, 8)),  # SkipInit gains set ≠ 0 below
    ("densenet_bc", {"depth": 10, "growth": 2}, (3, 8, 8)),
]


def registry_model(name: str, options: dict, shape: tuple[int, ...]) -> nn.Module:
    from trainables.models import build_model, model_entry
    from trainables.schema import parse

    torch.manual_seed(0)
    model = build_model(name, parse(model_entry(name).options, options, "model"), shape, 10).double()
    with torch.no_grad():  # BatchNorm running statistics away from their initial values
        for _ in range(3):
            model(torch.randn(16, *shape, dtype=torch.float64) * 1.5 + 0.5)
    for module in model.modules():  # SkipInit gains start at 0; away from it so they count
        if hasattr(module, "gain"):
            nn.init.constant_(module.gain, 0.3)
    return model


@pytest.mark.parametrize(("name", "options", "shape"), REGISTRY_CASES)
def test_registry_models_match_the_loop(name: str, options: dict, shape: tuple[int, ...]) -> None:
    model = registry_model(name, options, shape)
    x, y = torch.randn(6, *shape, dtype=torch.float64), torch.randint(10, (6,))
    torch.testing.assert_close(per_example_sq_grad_norms(model, x, y), reference_norms(model, x, y), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("name", "options", "shape"), REGISTRY_CASES)
def test_registry_models_exact_over_classes_match_the_loop(name: str, options: dict, shape: tuple[int, ...]) -> None:
    model = registry_model(name, options, shape)
    x = torch.randn(3, *shape, dtype=torch.float64)
    expected = exact_reference(model, x)
    assert fisher_trace(model, x, labels="exact").mean == pytest.approx(expected.mean().item(), rel=1e-9)


def test_layers_followed_by_in_place_ops_are_detected_and_copied() -> None:
    model, x, y = build("conv2d_bn_residual_inplace", 3)
    per_example_sq_grad_norms(model, x, y)
    assert per_example.copying_layers(model) == {
        "1",
        "5.bn",
    }  # BN before ReLU(inplace=True); BN whose output gets `+= x`
    plain, px, py = build("frozen", 3)
    per_example_sq_grad_norms(plain, px, py)
    assert per_example.copying_layers(plain) == set()


def exact_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_c p_c(x)‖∇θ CE(f(x), c)‖² per example: a float64 loop over examples and classes."""
    with torch.no_grad():
        probs = model.eval()(x).softmax(1)
    classes = probs.shape[1]
    return sum(probs[:, c] * reference_norms(model, x, torch.full((len(x),), c)) for c in range(classes))


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_over_classes_matches_a_loop_over_classes_and_examples(name: str) -> None:
    model, x, _ = build(name, 5)
    expected = exact_reference(model, x)
    est = fisher_trace(model, x, labels="exact", per_layer=True)
    assert est.mean == pytest.approx(expected.mean().item(), rel=1e-9)
    assert est.stderr == pytest.approx(expected.std().item() / math.sqrt(5), rel=1e-9)
    assert sum(est.per_layer.values()) == pytest.approx(est.mean, rel=1e-9)


def test_exact_over_classes_in_class_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backward budget smaller than one class set: classes go through in chunks, same value."""
    model, x, _ = build("conv2d_bn_residual_inplace", 4)
    whole = fisher_trace(model, x, labels="exact").mean
    monkeypatch.setattr(per_example, "BACKWARD_ELEMENTS", 1)
    assert fisher_trace(model, x, labels="exact", chunk_size=3).mean == pytest.approx(whole, rel=1e-12)


def test_k_sampled_labels_average_the_loop_over_their_draws() -> None:
    model, x, _ = build("conv2d_bn_residual_inplace", 6)
    est = fisher_trace(model, x, generator=torch.Generator().manual_seed(4), label_samples=3)
    labels = sample_labels(model, x, torch.Generator().manual_seed(4), label_samples=3)
    assert labels.shape == (6, 3)
    per_example = torch.stack([reference_norms(model, x, labels[:, k]) for k in range(3)]).mean(0)
    assert est.mean == pytest.approx(per_example.mean().item(), rel=1e-9)
    assert est.stderr == pytest.approx(per_example.std().item() / math.sqrt(6), rel=1e-9)


def test_sampled_labels_do_not_depend_on_chunking() -> None:
    model, x, _ = build("tied", 13)
    whole = fisher_trace(model, x, generator=torch.Generator().manual_seed(2), label_samples=2)
    chunked = fisher_trace(model, x, generator=torch.Generator().manual_seed(2), label_samples=2, chunk_size=4)
    assert chunked.mean == pytest.approx(whole.mean, rel=1e-12)


def test_more_label_samples_shrink_the_label_noise_towards_exact() -> None:
    """Spread over label draws at one θ: K = 16 about 4× tighter than K = 1; both centred on exact."""
    model, x, _ = build("conv2d_bn_residual_inplace", 8)
    exact = fisher_trace(model, x, labels="exact").mean
    g = torch.Generator().manual_seed(0)
    spread = {}
    for k in (1, 16):
        draws = torch.tensor([fisher_trace(model, x, generator=g, label_samples=k).mean for _ in range(200)])
        spread[k] = draws.std().item()
        assert abs(draws.mean().item() - exact) < 4 * spread[k] / math.sqrt(200)
    assert 2.5 < spread[1] / spread[16] < 6.5


def test_exact_refuses_label_samples_and_unknown_strings() -> None:
    model, x, _ = build("frozen", 3)
    with pytest.raises(ValueError, match="label_samples"):
        fisher_trace(model, x, labels="exact", label_samples=4)
    with pytest.raises(ValueError, match="labels"):
        fisher_trace(model, x, labels="sampled")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_samples"):
        fisher_trace(model, x, labels=torch.zeros(3, dtype=torch.long), label_samples=2)


class Unused(nn.Module):
    """A hooked layer whose output never reaches the loss (e.g. an auxiliary head not used)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux(x)
        return self.body(x)


def test_a_layer_whose_output_does_not_reach_the_loss_has_zero_gradient() -> None:
    torch.manual_seed(0)
    model = Unused().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(3, (5,))
    torch.testing.assert_close(per_example_sq_grad_norms(model, x, y), reference_norms(model, x, y), rtol=1e-9, atol=0)
    est = fisher_trace(model, x, labels="exact", per_layer=True)
    assert est.per_layer["aux"] == 0.0
    # the unreached layer's zeros take the passes' dtype (and device), not float32 on the CPU
    norms = fisher_module._per_layer_values(model, x, per_example.Targets("exact"), 256)
    assert {v.dtype for v in norms.values()} == {torch.float64}


def test_without_a_generator_labels_come_from_torch_default_generator() -> None:
    """Not a fresh fixed-seed generator per call: repeated calls draw fresh labels, and
    torch.manual_seed makes them reproducible."""
    model, x, _ = build("frozen", 64)
    draws = {fisher_trace(model, x).mean for _ in range(3)}
    assert len(draws) == 3
    torch.manual_seed(11)
    first = sample_labels(model, x)
    torch.manual_seed(11)
    assert torch.equal(first, sample_labels(model, x))


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_without_running_statistics_is_refused(affine: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, affine=affine, track_running_stats=False), nn.Linear(6, 3))
    x, y = torch.randn(5, 4), torch.randint(3, (5,))
    with pytest.raises(UndefinedPerExampleGradient, match="track_running_stats"):
        per_example_sq_grad_norms(model, x, y)
