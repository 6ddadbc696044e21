"""Helpers shared by the model families: the image- and signal-shape checks and the He-normal init."""

from __future__ import annotations

from torch import nn

from trainables.schema import ConfigError


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model: {name} needs image inputs (channels, height, width), got shape {tuple(input_shape)}"
            + ("; for 1-D signals choose cnn1d or mlp" if len(input_shape) == 2 else "")
        )
    return input_shape[0], input_shape[1], input_shape[2]


def signal_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ConfigError(
            f"model: {name} needs 1-D signal inputs (channels, length), got shape {tuple(input_shape)}"
            + ("; for images choose another model" if len(input_shape) == 3 else "")
        )
    return input_shape[0], input_shape[1]


def he_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan-out, as the reference VGG/WRN/DenseNet code), zero biases;
    Linear weights and BatchNorm keep PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
