"""VGG-11 for 32×32 images, the paper's Table 1 model without BatchNorm, He-normal init."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from trainables.models.common import he_init, image_shape
from trainables.schema import ConfigError, require


@dataclass(frozen=True, kw_only=True, slots=True)
class VGGOptions:
    """VGG-11 (Simonyan & Zisserman 2015, config A) for 32×32 images (CIFAR), without dropout.

    Conv widths are width × (1, M, 2, M, 4, 4, M, 8, 8, M, 8, 8, M), so width 64 is the original;
    the classifier is two hidden Linear-ReLU layers of ``hidden`` units (the CIFAR VGG of
    pytorch-vgg-cifar10 without its dropout) or, with ``hidden: 0``, a single Linear, and takes
    the final feature map flattened (1×1 on 32×32 inputs). Inputs need at least 32×32 px for the
    five 2×2 max pools: on smaller ones (digits' 8×8) the last stages would run 3×3 convolutions
    on 1×1 maps, which without BN shrink the signal about 3× per layer (measured: digits did not
    train), so they are refused rather than built with pools skipped.
    """

    batch_norm: bool = False  # the paper's Table 1 VGG-11 has neither BN nor dropout
    width: int = 64
    hidden: int = 512

    def __post_init__(self) -> None:
        require(self.width >= 1, "model.width", "an integer ≥ 1 (channels of the first conv)", self.width)
        require(self.hidden >= 0, "model.hidden", "an integer ≥ 0 (0: a single Linear classifier)", self.hidden)


VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # config A, conv widths in units of `width`
VGG_MIN_PX = 32


def vgg11(opts: VGGOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = image_shape("vgg11", input_shape)
    if min(height, width) < VGG_MIN_PX:
        raise ConfigError(
            f"model: vgg11 needs inputs of at least {VGG_MIN_PX}×{VGG_MIN_PX} px (five 2×2 max pools), "
            f"got shape {tuple(input_shape)}; for smaller images use simple_cnn, resnet56 or wrn"
        )
    features: list[nn.Module] = []
    for item in VGG11:
        if isinstance(item, str):
            features.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
            continue
        c_out = item * opts.width
        features.append(nn.Conv2d(channels, c_out, 3, padding=1, bias=not opts.batch_norm))
        features += [nn.BatchNorm2d(c_out), nn.ReLU()] if opts.batch_norm else [nn.ReLU()]
        channels = c_out
    flat = channels * height * width
    classifier: list[nn.Module] = [nn.Flatten()]
    if opts.hidden:
        classifier += [nn.Linear(flat, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, opts.hidden), nn.ReLU()]
        flat = opts.hidden
    classifier.append(nn.Linear(flat, num_classes))
    layers = {"features": nn.Sequential(*features), "classifier": nn.Sequential(*classifier)}
    return he_init(nn.Sequential(OrderedDict(layers)))
