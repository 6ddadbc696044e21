"""Models and float64 references shared by the Fisher-estimator tests (test_fisher, test_models, test_spectrum)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables import per_example


def reference_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∇θ CE(f(x_i), y_i)‖², one example at a time, eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.eval()
    out = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params, allow_unused=True)
        out.append(sum(g.pow(2).sum() for g in grads if g is not None))
    model.train(was)
    return torch.stack(out)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x  # in-place residual add
        return self.relu(out)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 4)
        self.c = nn.Linear(6, 6)
        self.c.weight = self.a.weight  # tied: its per-example gradient is the sum over both uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.c(torch.relu(self.a(x.flatten(1))))))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=1),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Conv1d(4, 4, 3, dilation=2, groups=2),
            nn.AvgPool1d(2),
            nn.Flatten(),
        )
        self.head = nn.LazyLinear(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def conv2d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=4),
        nn.MaxPool2d(2),
        Residual(8),
        nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2),  # c·k² = 72: the per-offset path
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(48, 10),
    )


def wide_conv_net() -> nn.Module:
    """c·k² > 64 at stride 1: the grouped-convolution path, with dilation and reflect padding."""
    return nn.Sequential(
        nn.Conv2d(16, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(4, 24, 1),
        nn.Conv2d(24, 4, 3, padding=1, padding_mode="reflect"),
        nn.Flatten(),
        nn.Linear(4 * 12 * 12, 3),
    )


def frozen_net() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    net[1].weight.requires_grad_(False)
    return net


class Sequence(nn.Module):
    """Linear layers applied at several positions (ghost and instantiated), LayerNorm (fallback),
    and one Linear called twice (its per-example gradient sums over both uses: fallback)."""

    def __init__(self, positions: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Linear(width, 7)
        self.norm = nn.LayerNorm(7)
        self.twice = nn.Linear(7, 7)
        self.head = nn.Linear(7 * positions, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.embed(x)))
        return self.head(torch.tanh(self.twice(torch.tanh(self.twice(h)))).flatten(1))


class Reused(nn.Module):
    """Parameters reached other than through their module's one hooked call: ``fc`` through
    ``F.linear`` and again through ``fc.forward`` (no hook runs), a decoder tied to ``enc``'s
    transposed weight, and ``shared`` applied to a code shared by the batch (dim 0 of size 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4)
        self.fc = nn.Linear(6, 6)
        self.code = nn.Parameter(torch.randn(1, 3))
        self.shared = nn.Linear(3, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.linear(x, self.fc.weight, self.fc.bias)) + torch.tanh(self.fc.forward(x))
        h = torch.tanh(F.linear(torch.tanh(self.enc(h)), self.enc.weight.t())) + self.shared(self.code)
        return self.head(h)


def reparametrised_net() -> nn.Module:
    """The older weight_norm and spectral_norm: a Linear whose ``weight`` is no parameter."""
    net = nn.Sequential(
        nn.utils.weight_norm(nn.Linear(6, 8)), nn.Tanh(), nn.utils.spectral_norm(nn.Linear(8, 8)), nn.Linear(8, 3)
    )
    with torch.no_grad():
        net[0].weight_g.mul_(3.0)  # away from g = ‖v‖, where ‖∂/∂weight‖ happens to be right
    return net


class SequenceFirst(nn.Module):
    """Linear layers on (T, N, d) activations, as ``batch_first=False`` transformers run them;
    with T = 5, a chunk of 5 examples has T = N."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(2, 4)
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(x.transpose(0, 1)))  # (T, N, 4)
        return self.head(h.transpose(0, 1).reshape(len(x), -1))


class ViewFlatten(nn.Module):
    """``x.view(len(x), -1)`` after a convolution: refuses a channels-last activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).view(len(x), -1))


CASES = {
    "conv2d_bn_residual_inplace": (conv2d_net, (3, 16, 16), 10),
    "conv1d_bn_dilated_grouped": (Conv1dNet, (2, 16), 5),
    "tied": (Tied, (6,), 4),
    "wide_conv": (wide_conv_net, (16, 12, 12), 3),
    "frozen": (frozen_net, (12,), 3),
    "sequence_ghost": (lambda: Sequence(3, 5), (3, 5), 3),
    "sequence_instantiated": (lambda: Sequence(10, 2), (10, 2), 3),
    "reused_outside_their_call": (Reused, (6,), 3),
    "weight_and_spectral_norm": (reparametrised_net, (6,), 3),
    "sequence_first": (SequenceFirst, (5, 2), 3),
    "view_after_conv": (ViewFlatten, (2, 6, 6), 4),
}


def build(name: str, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    factory, shape, classes = CASES[name]
    torch.manual_seed(0)
    model = factory().double()
    x = torch.randn(n, *shape, dtype=torch.float64)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics; materialise lazy layers
        for _ in range(3):
            model(torch.randn(8, *shape, dtype=torch.float64) * 2 + 1)
    return model, x, torch.randint(classes, (n,))


class _Routes:
    """A visitor of the passes that records which layers come by closed form and which by the fallback."""

    def __init__(self) -> None:
        self.by_closed_form: set[str] = set()
        self.by_fallback: set[str] = set()

    def closed(self, path, module, a, delta, weights, sets, examples):  # type: ignore[no-untyped-def]
        self.by_closed_form.add(path)

    def fallback(self, path, grads, weights, label_set, examples):  # type: ignore[no-untyped-def]
        self.by_fallback.add(path)

    def unreached(self, path, examples, like):  # type: ignore[no-untyped-def]
        self.by_closed_form.add(path)


def routes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> _Routes:
    seen = _Routes()
    per_example.run_passes(model, x, per_example.Targets("given", y), 256, seen)
    return seen
