"""Model registry keyed by the spec's ``model.name``; each entry has a typed options class.

Models are written in plain torch (no torchvision: there is no CPU build of it here). In-place
operations are avoided so hook-based per-example gradient norms stay exact.

- ``simple_cnn``, ``mlp``: the paper's SimpleCNN and a small MLP (PyTorch's default init);
- ``cnn1d``: MNIST-1D's reference 1-D convolutional network, for signals (PyTorch's default init);
- ``resnet56``: the CIFAR ResNet of He et al. (depth 6n + 2, BatchNorm);
- ``vgg11``, ``wrn``, ``densenet_bc``: the paper's Table 1 models (VGG-11 without BN, WRN-44-3
  without BN via SkipInit, DenseNet L=40 k=12 with BN), sized for 32×32 inputs, with the
  He-normal init of their reference implementations.

One module per family (``plain``, ``signals``, ``vgg``, ``resnets``, ``densenet``), each with its options
next to its builder; ``common`` holds the shape check and init they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.models.densenet import DenseNetOptions, densenet_bc
from trainables.models.plain import MLPOptions, SimpleCNNOptions, mlp, simple_cnn
from trainables.models.resnets import ResNetOptions, SkipInit, WideBlock, WRNOptions, resnet, wrn
from trainables.models.signals import CNN1DOptions, cnn1d
from trainables.models.vgg import VGGOptions, vgg11
from trainables.schema import ConfigError

__all__ = [
    "MODELS",
    "CNN1DOptions",
    "DenseNetOptions",
    "MLPOptions",
    "ModelEntry",
    "ResNetOptions",
    "SimpleCNNOptions",
    "SkipInit",
    "VGGOptions",
    "WRNOptions",
    "WideBlock",
    "build_model",
    "cnn1d",
    "densenet_bc",
    "mlp",
    "model_entry",
    "resnet",
    "simple_cnn",
    "vgg11",
    "wrn",
]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    options: type


MODELS: dict[str, ModelEntry] = {
    "simple_cnn": ModelEntry(simple_cnn, SimpleCNNOptions),
    "mlp": ModelEntry(mlp, MLPOptions),
    "cnn1d": ModelEntry(cnn1d, CNN1DOptions),
    "resnet56": ModelEntry(resnet, ResNetOptions),
    "vgg11": ModelEntry(vgg11, VGGOptions),
    "wrn": ModelEntry(wrn, WRNOptions),
    "densenet_bc": ModelEntry(densenet_bc, DenseNetOptions),
}


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def build_model(name: str, options: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build model ``name``; a shape mismatch with the data set is a :class:`ConfigError`."""
    entry = model_entry(name)
    try:
        model = entry.build(options, input_shape, num_classes)
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        hint = (
            " (simple_cnn with model.padding 'paper' needs ≥ 16 px; 'same' or 'auto' fit smaller images)"
            if name == "simple_cnn"
            else ""
        )
        raise ConfigError(f"model: {name} cannot take inputs of shape {tuple(input_shape)}{hint}: {exc}") from None
    return model.train()
