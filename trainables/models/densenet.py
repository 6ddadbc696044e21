"""DenseNet-BC for small images (the paper's Table 1 uses L = 40, k = 12), He-normal init."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from trainables.models.common import he_init, image_shape
from trainables.schema import require


@dataclass(frozen=True, kw_only=True, slots=True)
class DenseNetOptions:
    """DenseNet-BC (Huang et al. 2017) for small images, with BatchNorm: a 2k-channel 3×3 stem,
    three dense blocks of (L − 4)/6 bottleneck layers (BN-ReLU-conv1×1 to 4k channels,
    BN-ReLU-conv3×3 to k, concatenated to the input), joined by transitions that halve the
    channels (BN-ReLU-conv1×1) and the resolution (2×2 average pool)."""

    depth: int = 40  # L; 40 and k = 12 as in the paper's Table 1, 100 as in Huang et al.
    growth: int = 12  # k

    def __post_init__(self) -> None:
        require(
            self.depth >= 10 and (self.depth - 4) % 6 == 0,
            "model.depth",
            "6n + 4 with n ≥ 1 (e.g. 40, 100, 190)",
            self.depth,
        )
        require(self.growth >= 1, "model.growth", "an integer ≥ 1", self.growth)


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(4 * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, new], 1)  # (B, c_in + k, H, W)


def densenet_bc(opts: DenseNetOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, _, _ = image_shape("densenet_bc", input_shape)
    c = 2 * opts.growth
    layers: dict[str, nn.Module] = {"stem": nn.Conv2d(channels, c, 3, padding=1, bias=False)}
    for block in range(3):
        dense = []
        for _ in range((opts.depth - 4) // 6):
            dense.append(DenseLayer(c, opts.growth))
            c += opts.growth
        layers[f"block{block + 1}"] = nn.Sequential(*dense)
        if block < 2:
            transition = [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            layers[f"transition{block + 1}"] = nn.Sequential(*transition)
            c //= 2  # compression θ = 0.5
    layers |= {"bn": nn.BatchNorm2d(c), "relu": nn.ReLU(), "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten()}
    layers["fc"] = nn.Linear(c, num_classes)
    return he_init(nn.Sequential(OrderedDict(layers)))
