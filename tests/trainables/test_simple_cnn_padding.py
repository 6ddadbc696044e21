"""simple_cnn's default padding composes with every data set: ``auto`` is the paper's layout
from 16 px up and ``same`` below; an explicit ``paper`` on small images is still refused."""

from __future__ import annotations

import pytest
from torch import nn

from trainables.config import ModelConfig
from trainables.models import SimpleCNNOptions, build_model, simple_cnn
from trainables.schema import ConfigError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_default_is_auto() -> None:
    assert SimpleCNNOptions().padding == "auto"
    assert ModelConfig().name == "simple_cnn"


@pytest.mark.parametrize(("shape", "layout"), [((1, 8, 8), "same"), ((3, 16, 16), "paper"), ((3, 32, 32), "paper")])
def test_auto_builds_the_layout_that_fits(shape: tuple[int, int, int], layout: str) -> None:
    def sized(padding: str) -> int:
        return n_params(build_model("simple_cnn", SimpleCNNOptions(padding=padding, width=4, hidden=8), shape, 10))  # type: ignore[arg-type]

    assert sized("auto") == sized(layout)


def test_auto_on_cifar_is_the_papers_network_not_same() -> None:
    paper = simple_cnn(SimpleCNNOptions(padding="paper"), (3, 32, 32), 10)
    same = simple_cnn(SimpleCNNOptions(padding="same"), (3, 32, 32), 10)
    assert n_params(simple_cnn(SimpleCNNOptions(), (3, 32, 32), 10)) == n_params(paper) != n_params(same)


def test_paper_padding_on_digits_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="'paper' needs ≥ 16 px"):
        build_model("simple_cnn", SimpleCNNOptions(padding="paper"), (1, 8, 8), 10)
