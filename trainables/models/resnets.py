"""Residual networks for small images: the CIFAR ResNet of He et al. (BatchNorm, PyTorch's default
init) and the Wide ResNet (BatchNorm, or SkipInit on every residual branch without it; He-normal
init)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from trainables.models.common import he_init, image_shape
from trainables.schema import require


@dataclass(frozen=True, kw_only=True, slots=True)
class ResNetOptions:
    """CIFAR-style ResNet (He et al. 2016, §4.2): depth = 6n + 2, BatchNorm, widths 16/32/64."""

    depth: int = 56
    width: int = 16

    def __post_init__(self) -> None:
        require(
            self.depth >= 8 and (self.depth - 2) % 6 == 0, "model.depth", "6n + 2 with n ≥ 1 (e.g. 20, 56)", self.depth
        )
        require(self.width >= 1, "model.width", "an integer ≥ 1", self.width)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, so activation hooks (VCL) see them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(opts: ResNetOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    n = (opts.depth - 2) // 6
    widths = [opts.width, 2 * opts.width, 4 * opts.width]
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(n):
            layers.append(BasicBlock(c_in, width, 2 if stage > 0 and block == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


@dataclass(frozen=True, kw_only=True, slots=True)
class WRNOptions:
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation basic blocks in three
    stages of widths 16k, 32k, 64k, n blocks each, after a 16-channel 3×3 stem.

    Two depth conventions, told apart by d mod 6: d = 6n + 4 counts as Zagoruyko & Komodakis do
    (WRN-16-4: n = 2; WRN-28-10: n = 4); d = 6n + 2 counts as the CIFAR ResNets of He et al.
    (stem + 6n convs + classifier), the only reading under which the paper's WRN-44-3 exists
    (n = 7). Without BatchNorm each residual branch ends in SkipInit (De & Smith 2020), and the
    convolutions get the biases that BN's β would otherwise provide.
    """

    depth: int = 16
    width: int = 4
    batch_norm: bool = True

    def __post_init__(self) -> None:
        require(
            self.depth >= 8 and self.depth % 6 in (2, 4),
            "model.depth",
            "6n + 4 (e.g. 16, 28, 40) or 6n + 2 (e.g. 44, the paper's WRN-44-3) with n ≥ 1",
            self.depth,
        )
        require(self.width >= 1, "model.width", "an integer ≥ 1 (the widening factor k)", self.width)

    @property
    def blocks(self) -> int:
        """Blocks per stage, n."""
        return (self.depth - 4) // 6 if self.depth % 6 == 4 else (self.depth - 2) // 6


class SkipInit(nn.Module):
    """A learnable scalar on a residual branch, initialised to 0 (De & Smith 2020): every block
    starts as its shortcut, which lets a residual network without normalisation train."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain

    def per_example_sq_grad_norms(self, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """(N,) closed form for Tr(F): ∂ℓ_n/∂gain = ⟨δ_n, a_n⟩, so the torch.func fallback (a
        second, vmapped backward through the whole network) is not needed."""
        if not self.gain.requires_grad:
            return torch.zeros(len(a), dtype=delta.dtype, device=delta.device)
        return (a * delta).reshape(len(a), -1).sum(1).pow(2)


class WideBlock(nn.Module):
    """(BN-)ReLU-conv3×3-(BN-)ReLU-conv3×3 plus the input, or plus a 1×1 projection of the
    pre-activated input where the shape changes (as in the reference WRN code)."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        bias = not batch_norm
        self.bn1, self.relu1 = norm(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn2, self.relu2 = norm(c_out), nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.skipinit: nn.Module = nn.Identity() if batch_norm else SkipInit()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        branch = self.skipinit(self.conv2(self.relu2(self.bn2(self.conv1(pre)))))
        return (x if self.shortcut is None else self.shortcut(pre)) + branch


def wrn(opts: WRNOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, _, _ = image_shape("wrn", input_shape)
    layers: dict[str, nn.Module] = {"stem": nn.Conv2d(channels, 16, 3, padding=1, bias=not opts.batch_norm)}
    c_in = 16
    for stage, width in enumerate((16 * opts.width, 32 * opts.width, 64 * opts.width)):
        blocks = []
        for block in range(opts.blocks):
            blocks.append(WideBlock(c_in, width, 2 if stage > 0 and block == 0 else 1, opts.batch_norm))
            c_in = width
        layers[f"stage{stage + 1}"] = nn.Sequential(*blocks)
    layers["bn"] = nn.BatchNorm2d(c_in) if opts.batch_norm else nn.Identity()
    layers |= {"relu": nn.ReLU(), "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten()}
    layers["fc"] = nn.Linear(c_in, num_classes)
    return he_init(nn.Sequential(OrderedDict(layers)))
