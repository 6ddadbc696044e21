"""Model registry keyed by the spec's ``model.name``; each entry has a typed options class.

Models are written in plain torch (no torchvision: there is no CPU build of it here). In-place
operations are avoided so hook-based per-example gradient norms stay exact.

- ``simple_cnn``, ``mlp``: the paper's SimpleCNN and a small MLP (PyTorch's default init);
- ``resnet56``: the CIFAR ResNet of He et al. (depth 6n + 2, BatchNorm);
- ``vgg11``, ``wrn``, ``densenet_bc``: the paper's Table 1 models (VGG-11 without BN, WRN-44-3
  without BN via SkipInit, DenseNet L=40 k=12 with BN), sized for 32×32 inputs, with the
  He-normal init of their reference implementations.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from trainables.schema import ConfigError, require


@dataclass(frozen=True, kw_only=True, slots=True)
class SimpleCNNOptions:
    """The paper's SimpleCNN (Keras cifar10_cnn without dropout, Dense512 → Dense128).

    ``padding: paper`` keeps the Keras layout (same, valid, pool, same, valid, pool), which needs
    inputs of at least 16 px; ``same`` pads every conv, for small images such as digits.
    """

    padding: Literal["paper", "same"] = "paper"
    width: int = 32  # channels of the first block; the second block has 2×width
    hidden: int = 128

    def __post_init__(self) -> None:
        require(self.width >= 1, "model.width", "an integer ≥ 1", self.width)
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)


@dataclass(frozen=True, kw_only=True, slots=True)
class MLPOptions:
    hidden: int = 128
    depth: int = 2  # hidden layers

    def __post_init__(self) -> None:
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)
        require(self.depth >= 1, "model.depth", "an integer ≥ 1", self.depth)


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


def simple_cnn(opts: SimpleCNNOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    w = opts.width
    second = 1 if opts.padding == "same" else 0

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=second),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    features = nn.Sequential(*block(channels, w), *block(w, 2 * w), nn.Flatten())
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, height, width)).shape[1]
    return nn.Sequential(features, nn.Linear(flat, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, num_classes))


def mlp(opts: MLPOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for _ in range(opts.depth):
        layers += [nn.Linear(width, opts.hidden), nn.ReLU()]
        width = opts.hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"model: {name} needs image inputs (channels, height, width), got shape {tuple(input_shape)}")
    return input_shape[0], input_shape[1], input_shape[2]


def _he_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan-out, as the reference VGG/WRN/DenseNet code), zero biases;
    Linear weights and BatchNorm keep PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


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
    channels, height, width = _image_shape("vgg11", input_shape)
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
    return _he_init(nn.Sequential(OrderedDict(layers)))


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
    channels, _, _ = _image_shape("wrn", input_shape)
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
    return _he_init(nn.Sequential(OrderedDict(layers)))


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
    channels, _, _ = _image_shape("densenet_bc", input_shape)
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
    return _he_init(nn.Sequential(OrderedDict(layers)))


@dataclass(frozen=True, slots=True)
class ModelEntry:
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    options: type


MODELS: dict[str, ModelEntry] = {
    "simple_cnn": ModelEntry(simple_cnn, SimpleCNNOptions),
    "mlp": ModelEntry(mlp, MLPOptions),
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
        hint = " (simple_cnn needs ≥ 16 px unless model.padding is 'same')" if name == "simple_cnn" else ""
        raise ConfigError(f"model: {name} cannot take inputs of shape {tuple(input_shape)}{hint}: {exc}") from None
    return model.train()
