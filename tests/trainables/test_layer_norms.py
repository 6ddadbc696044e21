"""Each kernel of the per-layer closed forms against a float64 per-example autograd loop.

The layer-level reference: for output gradients δ, example n's weight gradient is
∇θ ⟨layer(a_n), δ_n⟩. The cost-model knobs are forced so that every path (unfolded block,
grouped convolution in blocks and chunks, per-offset slices, ghost) is checked, with and without
a leading class dimension.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import layer_norms

LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (5,)),
    "linear_sequence": (lambda: nn.Linear(5, 4), (3, 5)),
    "conv_first": (lambda: nn.Conv2d(2, 4, 3, padding=1), (2, 6, 6)),
    "conv_wide": (lambda: nn.Conv2d(8, 6, 3, padding=1), (8, 6, 6)),
    "conv_strided_dilated": (lambda: nn.Conv2d(8, 6, 3, stride=2, padding=2, dilation=2), (8, 7, 7)),
    "conv_grouped": (lambda: nn.Conv2d(8, 6, 3, groups=2, bias=False), (8, 6, 5)),
    "conv_same_even": (lambda: nn.Conv2d(8, 4, 4, padding="same"), (8, 6, 6)),
    "conv_reflect": (lambda: nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"), (8, 5, 5)),
    "conv1d": (lambda: nn.Conv1d(8, 4, 3, stride=2, padding=1), (8, 9)),
    "conv_1x1": (lambda: nn.Conv2d(8, 4, 1, stride=2), (8, 5, 5)),
    "batch_norm2d": (lambda: nn.BatchNorm2d(3), (3, 4, 4)),
    "batch_norm1d": (lambda: nn.BatchNorm1d(3), (3,)),
}

KNOBS = {
    "default": {},
    "ghost": {"GHOST_PENALTY": 0.0, "UNFOLD_MAX_ROWS": 0},
    "unfold_ghost": {"GHOST_PENALTY": 0.0, "UNFOLD_MAX_ROWS": 10_000},
    "unfold_instantiate": {"GHOST_PENALTY": float("inf"), "UNFOLD_MAX_ROWS": 10_000},
    "grouped_blocks_chunks": {
        "GHOST_PENALTY": float("inf"),
        "UNFOLD_MAX_ROWS": 0,
        "GROUP_WEIGHT_MAX": 1,
        "INSTANTIATE_ELEMENTS": 1,
    },
}


def reference(module: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(K, N) ‖∇θ ⟨module(a_n), δ_kn⟩‖², one example and class at a time."""
    params = [p for p in module.parameters() if p.requires_grad]
    out = torch.zeros(delta.shape[:2], dtype=torch.float64)
    for k in range(delta.shape[0]):
        for n in range(delta.shape[1]):
            grads = torch.autograd.grad((module(a[n : n + 1]) * delta[k, n : n + 1]).sum(), params)
            out[k, n] = sum(g.pow(2).sum() for g in grads)
    return out


def setup(name: str, n: int, k: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    module = factory().double().eval()
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        with torch.no_grad():
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.uniform_(0.5, 2)
    a = torch.randn(n, *shape, dtype=torch.float64)
    with torch.no_grad():
        delta = torch.randn(k, *module(a).shape, dtype=torch.float64)
    return module, a, delta


@pytest.mark.parametrize("knobs", sorted(KNOBS))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_kernels_match_the_per_example_loop(name: str, knobs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in KNOBS[knobs].items():
        monkeypatch.setattr(layer_norms, key, value)
    module, a, delta = setup(name, n=3, k=2)
    expected = reference(module, a, delta)
    norm_fn = layer_norms.closed_form(module)
    assert norm_fn is not None
    torch.testing.assert_close(norm_fn(module, a, delta), expected, rtol=1e-10, atol=0)  # (K, N) at once
    torch.testing.assert_close(norm_fn(module, a, delta[1]), expected[1], rtol=1e-10, atol=0)  # (N,)
    torch.testing.assert_close(layer_norms.per_class_sq_norms(module, a, delta), expected, rtol=1e-10, atol=0)


def test_frozen_weight_counts_only_the_bias() -> None:
    module, a, delta = setup("conv_wide", n=3, k=1)
    module.weight.requires_grad_(False)
    torch.testing.assert_close(
        layer_norms.conv(module, a, delta[0]), reference(module, a, delta)[0], rtol=1e-10, atol=0
    )


def test_modules_with_their_own_closed_form_get_repeated_inputs() -> None:
    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

        def per_example_sq_grad_norms(self, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return (a * delta).flatten(1).sum(1).pow(2)

    module = Gain()
    a, delta = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(layer_norms.per_class_sq_norms(module, a, delta), reference(module, a, delta))
