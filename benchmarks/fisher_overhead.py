"""Cost of per-example squared gradient norms (Tr(F)), of the Fisher spectrum and Tr(H), and of the
Fisher-penalty step.

Every figure is the median over ``--repeats`` rounds of time(method) / time(plain SGD step), the
two timed back to back in each round (zero_grad, forward, mean CE, backward, step; same model and
batch), after warm-up, all in one process. Methods that need optional packages (BackPACK, Opacus,
nngeometry: ``make bench``) are skipped with a note when those are missing.

    .venv/bin/python benchmarks/fisher_overhead.py [--batch 128] [--repeats 15] [--threads 2] [--device cuda]
        [--models NAME ...] [--only LABEL-PART ...]

On CUDA every timing ends with ``torch.cuda.synchronize()``, so a ratio compares finished work.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable

import malloc_option
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from trainables.fisher import fisher_spectrum, per_example_sq_grad_norms, sample_labels
from trainables.hessian import hessian_trace
from trainables.models import ResNetOptions, SimpleCNNOptions, resnet, simple_cnn
from trainables.penalties import make_penalty


def bench_cnn() -> nn.Module:
    """The design's benchmark CNN: 3×3 convs (padding 1), ReLU, MaxPool2d, Linear; 32×32 input."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4096, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


MODELS: dict[str, Callable[[], nn.Module]] = {
    "bench CNN (design §5)": bench_cnn,
    "SimpleCNN (paper)": lambda: simple_cnn(SimpleCNNOptions(), (3, 32, 32), 10),
    "ResNet-20 (BN)": lambda: resnet(ResNetOptions(depth=20), (3, 32, 32), 10),
}


def seconds(fn: Callable[[], object]) -> float:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_ratio(fn: Callable[[], object], base: Callable[[], object], rounds: int, per_call: int = 1) -> float:
    """Median over rounds of time(fn) / (per_call · time(base)), the two timed back to back.

    Alternating the two cancels the slow drifts of a shared machine that a ratio of two
    separately taken medians would pick up.
    """
    for _ in range(2):
        fn(), base()
    ratios = []
    for _ in range(rounds):
        t_base = seconds(base)
        ratios.append(seconds(fn) / per_call / t_base)
    return statistics.median(ratios)


def loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.stack(
        [
            sum(g.pow(2).sum() for g in torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params))
            for i in range(len(x))
        ]
    )


def vmap_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return sum(g.pow(2).flatten(1).sum(1) for g in grads.values())  # type: ignore[return-value]


def backpack_method(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], object] | str:
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad
    except ImportError:
        return "not installed (pip install -e .[bench])"
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return "refuses BatchNorm (BatchL2Grad raises NotImplementedError)"
    ext = extend(copy.deepcopy(model))
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))

    def run(x: torch.Tensor, y: torch.Tensor) -> object:
        ext.zero_grad()
        with backpack(BatchL2Grad()):
            loss_fn(ext(x), y).backward()
        return sum(p.batch_l2 for p in ext.parameters())

    return run


def opacus_method(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], object] | str:
    try:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
    except ImportError:
        return "not installed (pip install -e .[bench])"
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return "refuses BatchNorm"
    gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(model), use_ghost_clipping=True, loss_reduction="sum")
    gsm.train()  # Opacus captures activations in training mode only (same function here: no BN/dropout)

    def run(x: torch.Tensor, y: torch.Tensor) -> object:
        gsm.zero_grad()
        F.cross_entropy(gsm(x), y, reduction="sum").backward()
        return gsm.get_norm_sample()

    return run


def nngeometry_method(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], object] | str:
    """nngeometry's ``FIM_MonteCarlo(trials=1)`` + ``PMatImplicit.trace()``, built as FIM_MonteCarlo
    builds it (the same hooks backend and log-softmax function) but with the labels given instead of
    sampled inside, so that every method sees the same ŷ; trace = mean_n ‖∇θ log p(ŷ_n|x_n)‖²."""
    try:
        from nngeometry.backend import TorchHooksJacobianBackend
        from nngeometry.layercollection import LayerCollection
        from nngeometry.object import PMatImplicit
    except ImportError:
        return "not installed (pip install --no-deps nngeometry)"

    def log_prob(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(x), dim=1).gather(1, y[:, None])

    try:
        backend = TorchHooksJacobianBackend(
            model=model, function=log_prob, layer_collection=LayerCollection.from_model(model)
        )
    except Exception as error:  # an unsupported layer type
        return f"refuses the model ({type(error).__name__})"

    def run(x: torch.Tensor, y: torch.Tensor) -> object:
        return PMatImplicit(generator=backend, examples=(x, y)).trace() * len(x)

    return run


def measure(
    name: str,
    factory: Callable[[], nn.Module],
    batch: int,
    repeats: int,
    device: torch.device,
    only: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """The table of one model; ``only``: keep the rows whose label contains one of these (the
    plain step always)."""
    torch.manual_seed(0)
    model = factory().to(device)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(10, (batch,), device=device)
    labels = sample_labels(model, x, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def sgd_step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def penalty_step(penalty: nn.Module) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad()
            logits = model(x)
            penalty_loss = penalty(model, x, y, logits, torch.Generator().manual_seed(0))
            (F.cross_entropy(logits, y) + penalty_loss).backward()
            opt.step()

        return step

    for _ in range(2):
        sgd_step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step_ms = statistics.median(seconds(sgd_step) for _ in range(repeats)) * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // repeats
    rows = [(f"plain SGD step ({step_ms:.1f} ms, {faults} page faults)", "1.00")]
    probe = copy.deepcopy(model).eval()  # Tr(F) is measured in eval mode; the SGD step trains
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    opt_last = torch.optim.SGD(channels_last.parameters(), lr=1e-4, momentum=0.9)

    def sgd_step_channels_last() -> None:
        opt_last.zero_grad()
        F.cross_entropy(channels_last(x_last), y).backward()
        opt_last.step()

    methods: dict[str, Callable[[], object] | str] = {
        "plain SGD step, model and input channels-last": sgd_step_channels_last,
        "fishtune per_example_sq_grad_norms": lambda: per_example_sq_grad_norms(probe, x, labels),
        "fishtune fisher_spectrum, k = 1 (and Tr(F))": lambda: fisher_spectrum(probe, x, 1, labels=labels),
        "fishtune fisher_spectrum, k = 5 (and Tr(F))": lambda: fisher_spectrum(probe, x, 5, labels=labels),
        "fishtune hessian_trace, M = 30 (Tr(H), Hutchinson; one probe a backward, the default)": lambda: hessian_trace(
            probe, x, y, probes=30, generator=torch.Generator().manual_seed(0)
        ),
        "fishtune hessian_trace, M = 30, probes batched 10 a backward": lambda: hessian_trace(
            probe, x, y, probes=30, generator=torch.Generator().manual_seed(0), chunk=10
        ),
        "per-example autograd loop": lambda: loop_norms(probe, x, labels),
        "torch.func vmap(grad)": lambda: vmap_norms(probe, x, labels),
    }
    makers = {
        "BackPACK BatchL2Grad": backpack_method,
        "Opacus ghost clipping": opacus_method,
        "nngeometry FIM_MonteCarlo trace": nngeometry_method,
    }
    for label, maker in makers.items():
        made = maker(probe)
        methods[label] = made if isinstance(made, str) else (lambda f=made: f(x, labels))
    methods = {label: fn for label, fn in methods.items() if not only or any(part in label for part in only)}
    for label, fn in methods.items():
        rows.append((label, fn if isinstance(fn, str) else f"{interleaved_ratio(fn, sgd_step, repeats):.2f}"))
    if only and not any(part in "Fisher-penalty SGD step" for part in only):
        return _print_table(name, batch, rows)
    every_step = penalty_step(make_penalty("fisher", 0.01, recompute_every=1))
    rows.append(
        ("Fisher-penalty SGD step, recomputed every step", f"{interleaved_ratio(every_step, sgd_step, repeats):.2f}")
    )
    cycle = penalty_step(make_penalty("fisher", 0.01, recompute_every=10))
    ratio = interleaved_ratio(lambda: [cycle() for _ in range(10)], sgd_step, max(3, repeats // 3), per_call=10)
    rows.append(("Fisher-penalty SGD step, recomputed every 10 (mean over a cycle)", f"{ratio:.2f}"))
    return _print_table(name, batch, rows)


def _print_table(name: str, batch: int, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    print(f"\n### {name}, batch {batch}\n\n| method | × plain SGD step |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--only", nargs="*", default=[], help="time only the rows whose label contains one of these")
    malloc_option.add_option(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    malloc = malloc_option.apply(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, {where}, "
        f"{malloc}"
    )
    for name in args.models:
        measure(name, MODELS[name], args.batch, args.repeats, device, tuple(args.only))


if __name__ == "__main__":
    main()
