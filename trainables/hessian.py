"""Tr(H), the trace of the training loss's Hessian on a batch, by Hutchinson's estimator.

The paper's §5 recipe (App. B): Gaussian probes v ~ N(0, I) over all trainable parameters,
M = 30 of them; ∇θℓ is built once with ``create_graph`` and reused for every probe, and each
probe costs one Hessian-vector product by double back-propagation: Tr(H) ≈ (1/M) Σ_m vₘᵀHvₘ.
For Gaussian probes Var(vᵀHv) = 2‖H‖_F², so unlike Tr(F) this is noisy by construction: the
returned stderr (the probes' sample std / √M) says how noisy. The batch is fixed (the trial's
Tr(F) probe), so the stderr covers the probes only, not the choice of examples.

``chunk`` probes share one vmapped backward (``is_grads_batched``). The default is one probe a
backward, the least memory: on the 2-core CPU at load 8-9 the two were not told apart (10 probes,
benchmark CNN, batch 128, alternated: 18.0 / 27.0 / 13.0 s one by one against 22.5 / 27.1 / 23.1 s
batched 10, while benchmarks/fisher_overhead.py's 3 rounds of M = 30 gave the batched one 38× a
plain step against 104×; benchmarks/README.md). A larger ``chunk`` may pay on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.fisher import TraceEstimate, trace_estimate
from trainables.per_example import eval_mode

DEFAULT_CHUNK = 1


def hessian_trace(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    probes: int = 30,
    generator: torch.Generator,
    chunk: int = DEFAULT_CHUNK,
) -> TraceEstimate:
    """Hutchinson's estimate of Tr(∇²θ CE(f(inputs), targets)) (mean over the batch), model in
    eval mode, over the parameters with ``requires_grad``; ``mean`` is the average of ``probes``
    values vᵀHv and ``stderr`` their standard error. Probes come from the CPU ``generator``, so a
    trial's value does not depend on its device or on ``chunk``. Leaves ``.grad`` and each
    module's mode as they were."""
    if probes < 2:
        raise ValueError(f"probes: an integer ≥ 2 (a standard error needs two), got {probes}")
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        loss = F.cross_entropy(model(inputs), targets)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        values = []
        for start in range(0, probes, chunk):
            m = min(chunk, probes - start)
            drawn = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(m)]  # probe by probe
            columns = zip(*drawn, strict=True)
            vs = [torch.stack(column).to(p.device, p.dtype) for p, column in zip(params, columns, strict=True)]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True, is_grads_batched=True)
            values.append(torch.stack([(v * hv).flatten(1).sum(1) for v, hv in zip(vs, hvs, strict=True)]).sum(0))
    return trace_estimate(torch.cat(values).detach())
