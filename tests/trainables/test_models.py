"""The model registry: every model builds through the trial's path and trains; paper-sized
configurations have the published sizes; bad options name their field; SkipInit's Tr(F) is exact.

Per-example gradient norms of every registry model are checked against the per-example loop in
``test_fisher.py::test_registry_models_match_the_loop``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables import fisher, per_example
from trainables.config import ModelConfig
from trainables.models import MODELS, SkipInit, WideBlock, WRNOptions, build_model, model_entry
from trainables.schema import ConfigError, parse

from .fisher_cases import reference_norms, routes

TINY = [  # (name, options, input shape): seconds on CPU
    ("simple_cnn", {"padding": "same", "width": 4, "hidden": 8}, (1, 8, 8)),
    ("mlp", {"hidden": 8, "depth": 2}, (1, 8, 8)),
    ("cnn1d", {"channels": 3}, (1, 40)),
    ("resnet56", {"depth": 8, "width": 4}, (3, 8, 8)),
    ("vgg11", {"width": 2, "hidden": 8}, (3, 32, 32)),
    ("vgg11", {"width": 2, "hidden": 0, "batch_norm": True}, (3, 32, 32)),
    ("wrn", {"depth": 10, "width": 1}, (3, 8, 8)),
    ("wrn", {"depth": 8, "width": 1, "batch_norm": False}, (3, 8, 8)),
    ("densenet_bc", {"depth": 10, "growth": 2}, (3, 8, 8)),
]
TINY_IDS = [f"{name}-" + ",".join(f"{k}={v}" for k, v in options.items()) for name, options, _ in TINY]


def build(name: str, options: dict, shape: tuple[int, ...], num_classes: int = 10) -> nn.Module:
    """As the trial builds it: options parsed at the config boundary, then the registry."""
    return build_model(name, parse(model_entry(name).options, options, "model"), shape, num_classes)


def test_every_registry_model_has_a_tiny_configuration() -> None:
    assert {name for name, _, _ in TINY} == set(MODELS)


@pytest.mark.parametrize(("name", "options", "shape"), TINY, ids=TINY_IDS)
def test_trains_a_few_sgd_steps(name: str, options: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build(name, options, shape)
    assert model.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, *shape), torch.randint(10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    # every tensor moves, also the branch convs that SkipInit's zero gain hides at the first step
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []


@pytest.mark.parametrize(("name", "options", "shape"), TINY, ids=TINY_IDS)
def test_no_in_place_operations_after_hooked_layers(name: str, options: dict, shape: tuple[int, ...]) -> None:
    """Layers whose outputs an in-place op changes are copied by the Tr(F) passes; here none should be."""
    torch.manual_seed(0)
    model = build(name, options, shape)
    fisher.per_example_sq_grad_norms(model, torch.randn(3, *shape), torch.randint(10, (3,)))
    assert per_example.copying_layers(model) == set()


PAPER_SIZES = [  # (name, options, classes, published parameter count, relative tolerance)
    ("wrn", {"depth": 16, "width": 4}, 10, 2.7e6, 0.05),  # Zagoruyko & Komodakis 2016, Table 4
    ("wrn", {"depth": 40, "width": 4}, 10, 8.9e6, 0.01),
    ("densenet_bc", {"depth": 100, "growth": 12}, 10, 0.8e6, 0.05),  # Huang et al. 2017, Table 2
    ("resnet56", {}, 10, 0.85e6, 0.01),  # He et al. 2016, Table 6
    # VGG-11's convs (torchvision's vgg11 features: 9,220,480) + 512-512-100 classifier
    ("vgg11", {}, 100, 9_220_480 + (512 * 512 + 512) * 2 + 512 * 100 + 100, 0.0),
]


def test_cnn1d_is_mnist1d_convbase() -> None:
    """Greydanus (2020)'s ConvBase on a 40-sample signal: 25 channels, lengths 40 → 19 → 10 → 5."""
    model = build("cnn1d", {}, (1, 40))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.kernel_size, c.stride, c.padding, c.out_channels) for c in convs] == [((5,), (2,), (1,), 25)] + [
        ((3,), (2,), (1,), 25)
    ] * 2
    assert sum(p.numel() for p in model.parameters()) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (25 * 5 * 10 + 10)
    assert model(torch.randn(4, 1, 40)).shape == (4, 10)


def test_models_refuse_the_other_kind_of_input() -> None:
    with pytest.raises(
        ConfigError, match=r"model: cnn1d needs 1-D signal inputs \(channels, length\), got shape \(1, 8, 8\)"
    ):
        build("cnn1d", {}, (1, 8, 8))
    with pytest.raises(
        ConfigError, match=r"model: simple_cnn needs image inputs .*; for 1-D signals choose cnn1d or mlp$"
    ):
        build("simple_cnn", {}, (1, 40))


@pytest.mark.parametrize(("name", "options", "classes", "published", "rel"), PAPER_SIZES)
def test_paper_sized_models_have_the_published_parameter_counts(
    name: str, options: dict, classes: int, published: float, rel: float
) -> None:
    model = build(name, options, (3, 32, 32), classes)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(published, rel=rel)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("wrn", {"depth": 17}, "model.depth"),
        ("wrn", {"depth": 4}, "model.depth"),
        ("wrn", {"width": 0}, "model.width"),
        ("wrn", {"batch_norm": "no"}, "model.batch_norm"),
        ("densenet_bc", {"depth": 41}, "model.depth"),
        ("densenet_bc", {"growth": 0}, "model.growth"),
        ("vgg11", {"width": 0}, "model.width"),
        ("vgg11", {"hidden": -1}, "model.hidden"),
        ("vgg11", {"dropout": 0.5}, "model.dropout"),
    ],
)
def test_bad_options_name_the_field(name: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: "):
        ModelConfig.parse({"name": name, **options})


@pytest.mark.parametrize("name", ["vgg11", "wrn", "densenet_bc"])
def test_image_models_refuse_flat_inputs(name: str) -> None:
    options = next(o for n, o, _ in TINY if n == name)
    with pytest.raises(ConfigError, match=rf"model: {name} needs image inputs \(channels, height, width\)"):
        build(name, options, (64,))


def test_densenet_refuses_inputs_its_transitions_cannot_halve() -> None:
    with pytest.raises(ConfigError, match=r"model: densenet_bc cannot take inputs of shape \(3, 2, 2\)"):
        build("densenet_bc", {"depth": 10, "growth": 2}, (3, 2, 2))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 16)])
def test_vgg_refuses_inputs_smaller_than_32_px(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"model: vgg11 needs inputs of at least 32×32 px"):
        build("vgg11", {"width": 2}, shape)


def test_vgg_classifier_is_sized_from_the_feature_map() -> None:
    model = build("vgg11", {"width": 2, "hidden": 0}, (3, 64, 96))
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert model.classifier[-1].in_features == 16 * 2 * 3  # 8 × width channels on a 2×3 map


@pytest.mark.parametrize(("depth", "blocks"), [(10, 1), (16, 2), (28, 4), (40, 6), (8, 1), (44, 7)])
def test_wrn_depth_is_6n_plus_4_or_6n_plus_2(depth: int, blocks: int) -> None:
    assert WRNOptions(depth=depth).blocks == blocks


def test_wrn_without_batch_norm_uses_skipinit_and_biases() -> None:
    plain = build("wrn", {"depth": 44, "width": 1, "batch_norm": False}, (3, 8, 8), 100)
    blocks = [m for m in plain.modules() if isinstance(m, WideBlock)]
    gains = [m.gain for m in plain.modules() if isinstance(m, SkipInit)]
    assert len(blocks) == len(gains) == 21
    assert all(g.item() == 0.0 for g in gains)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    normed = build("wrn", {"depth": 44, "width": 1}, (3, 8, 8), 100)
    assert not any(isinstance(m, SkipInit) for m in normed.modules())
    assert all(m.bias is None for m in normed.modules() if isinstance(m, nn.Conv2d))


def test_skipinit_norms_are_exact_by_closed_form_and_by_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build("wrn", {"depth": 8, "width": 1, "batch_norm": False}, (3, 8, 8)).double()
    with torch.no_grad():  # non-zero gains, so the branch convolutions have gradients too
        for gain in (m.gain for m in model.modules() if isinstance(m, SkipInit)):
            gain.fill_(0.7)
    x, y = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(10, (5,))
    expected = reference_norms(model, x, y)

    assert routes(model, x, y).by_fallback == set()  # SkipInit by its own closed form
    per_layer = fisher.per_layer_sq_grad_norms(model, x, y)
    assert per_layer["stage1.0.skipinit"].abs().min() > 0
    torch.testing.assert_close(sum(per_layer.values()), expected, rtol=1e-6, atol=0)
    monkeypatch.delattr(SkipInit, "per_example_sq_grad_norms")  # a 0-dim parameter in the fallback
    torch.testing.assert_close(fisher.per_example_sq_grad_norms(model, x, y), expected, rtol=1e-6, atol=0)
