"""The CUDA correctness check of the trainable (issue "Tr(F) measured precisely and cheaply", GPU).

Run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU, in one process:

1. **Exactness on CUDA**: on each model of ``fisher_overhead.MODELS``, fp32 Tr(F) on the GPU
   against a float64 loop on the CPU: the exact expectation over classes (``labels="exact"``,
   whole and in chunks of 3 examples and a few classes) against the loop over classes and
   examples, and the per-example norms for model-sampled labels against a per-example loop.
2. **The default study's trial on CUDA, end to end**: ``loop.train`` on the trial of
   ``studies/digits-quick.yaml`` (data on the device, SGD, the Fisher penalty, the Tr(F)
   schedule, evaluation) at ``--lr``, next to the same trial on the CPU: wall time, final
   accuracies, Tr(F) points and the peak read by the analysis' rule. GPU arithmetic is not
   bitwise the CPU's, so the two runs agree in level, not to the digit.

Exits non-zero when a relative error exceeds ``--tolerance`` or the CUDA trial ends with a
non-finite loss. Ray, MLflow and Optuna are not needed (the device image has none).

    python3 benchmarks/gpu_check.py [--lr 0.02] [--tolerance 1e-4]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from unittest import mock

import torch
import torch.nn.functional as F
from fisher_overhead import MODELS, loop_norms
from fisher_schedule import curve, peak_read, trial_config
from torch import nn

from trainables import loop, per_example
from trainables.fisher import fisher_trace, per_example_sq_grad_norms, sample_labels

SMALL_BACKWARD = 1 << 14  # activation elements per batched backward: forces the class dimension into chunks


def exact_loop(model: nn.Module, x: torch.Tensor) -> float:
    """Σ_c p_c ‖∇θ CE(f(x_i), c)‖², averaged over i, by one backward per class and example."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        probs = model(x).softmax(1)
    total = 0.0
    for i in range(len(x)):
        for c in range(probs.shape[1]):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), torch.tensor([c])), params)
            total += probs[i, c].item() * sum(g.pow(2).sum().item() for g in grads)
    return total / len(x)


def exactness(device: torch.device, n: int) -> dict[str, float]:
    """Worst relative error per model and estimator, fp32 on ``device`` against float64 on the CPU."""
    errors = {}
    for name, factory in MODELS.items():
        torch.manual_seed(0)
        reference = factory().double().eval()
        model = copy.deepcopy(reference).float().to(device)
        x = torch.randn(n, 3, 32, 32, dtype=torch.float64)
        expected = exact_loop(reference, x)
        got = fisher_trace(model, x.float().to(device), labels="exact").mean
        errors[f"{name}: exact"] = abs(got - expected) / expected
        with mock.patch.object(per_example, "BACKWARD_ELEMENTS", SMALL_BACKWARD):  # classes split into chunks
            got = fisher_trace(model, x.float().to(device), labels="exact", chunk_size=3).mean
        errors[f"{name}: exact, chunked"] = abs(got - expected) / expected
        labels = sample_labels(model, x.float().to(device), torch.Generator().manual_seed(1))
        got_norms = per_example_sq_grad_norms(model, x.float().to(device), labels).double().cpu()
        want = loop_norms(reference, x, labels.cpu())
        errors[f"{name}: sampled, per example"] = ((got_norms - want).abs() / want).max().item()
    return errors


def timed_trial(lr: float, coef: float, device: torch.device) -> tuple[float, list[loop.EpochReport]]:
    cfg = trial_config(lr, coef)
    start = time.perf_counter()
    reports = list(loop.train(cfg, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--coef", type=float, default=0.003)
    parser.add_argument("--examples", type=int, default=8, help="examples in the exactness check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error accepted (fp32)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("torch sees no CUDA device")
    device = torch.device("cuda", 0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")

    print(f"\n1. fp32 on CUDA against a float64 CPU loop ({args.examples} examples, relative error)")
    errors = exactness(device, args.examples)
    for label, error in errors.items():
        print(f"   {label}: {error:.1e}")
    failed = [label for label, error in errors.items() if not error <= args.tolerance]

    print(f"\n2. the default study's trial at lr {args.lr}, coef {args.coef}")
    for where in (device, torch.device("cpu")):
        seconds, reports = timed_trial(args.lr, args.coef, where)
        last = reports[-1]
        points = len(curve(reports, "fisher_trace"))
        metrics = ", ".join(f"{k} {last.metrics[k]:.4f}" for k in ("val_accuracy", "test_accuracy", "val_loss"))
        print(
            f"   {where.type}: {seconds:.1f} s, outcome {last.outcome}, {metrics}, "
            f"{points} Tr(F) points, peak read {peak_read(reports)}"
        )
        if where.type == "cuda" and not math.isfinite(last.metrics["val_loss"]):
            failed.append("CUDA trial: non-finite val_loss")
    if failed:
        print(f"\nFAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
