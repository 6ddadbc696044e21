"""What a trial builds once — data, model, penalty, optimizer, the fixed Tr(F) probe, the
schedule — and its Tr(F) measurement at a step (the loop, :mod:`trainables.loop`, runs it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables import data as datasets
from trainables import report as names
from trainables.config import TrialConfig
from trainables.fisher import TraceEstimate, fisher_spectrum, fisher_trace, trace_estimate
from trainables.fisher_config import LogSchedule
from trainables.hessian import hessian_trace
from trainables.models import build_model
from trainables.penalties import Penalty, make_penalty

# The last integer of a seeded_generator key names its stream. NumPy's SeedSequence pads a key
# with zeros, so (s,) and (s, 0) are the same key: every stream but the probe's (data.seed,)
# ends in a nonzero tag, else the step-0 Tr(F) labels would reuse the probe's permutation stream.
DATA_ORDER, PENALTY_LABELS, AUGMENT, HESSIAN_PROBES, FISHER_LABELS = 1, 2, 3, 4, 5


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is derived from integers (e.g. train.seed, step, stream tag)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def probe_indices(cfg: TrialConfig, n_train: int) -> torch.Tensor:
    """The fixed Tr(F) probe: ``fisher.samples`` training-split indices drawn once from ``data.seed``."""
    return torch.randperm(n_train, generator=seeded_generator(cfg.data.seed))[: cfg.fisher.samples]


@dataclass(slots=True, kw_only=True)
class Trial:
    """What a trial builds once: data, model, penalty, optimizer, the fixed probe, the schedule."""

    cfg: TrialConfig
    device: torch.device
    splits: datasets.Splits
    num_classes: int
    model: nn.Module
    penalty: Penalty
    optimizer: torch.optim.Optimizer
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    probe_noisy: torch.Tensor  # bool per probe example: its training label was replaced (data.label_noise)
    schedule: LogSchedule

    @classmethod
    def set_up(cls, cfg: TrialConfig, device: torch.device) -> Trial:
        torch.manual_seed(cfg.train.seed)
        splits = cfg.data.load(device)
        info = datasets.dataset_info(cfg.data.name)
        model = build_model(cfg.model.name, cfg.model.options, info.input_shape, info.num_classes).to(device)
        penalty = make_penalty(cfg.penalty.kind, cfg.penalty.coef, cfg.penalty.every).to(device)
        penalty.prepare(model, splits.train_x[: cfg.train.batch_size])
        optimizer = torch.optim.SGD(
            [*model.parameters(), *penalty.parameters()],
            lr=cfg.train.lr,
            momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay,
        )
        n_train = len(splits.train_y)
        probe = probe_indices(cfg, n_train)
        schedule = LogSchedule.resolve(
            cfg.fisher.schedule,
            math.ceil(n_train / cfg.train.batch_size),
            cfg.train.epochs,
            cfg.fisher.point_cost(info.num_classes, cfg.train.batch_size),
        )
        return cls(
            cfg=cfg,
            device=device,
            splits=splits,
            num_classes=info.num_classes,
            model=model,
            penalty=penalty,
            optimizer=optimizer,
            # Un-augmented even with data.augment: Tr(F) is an expectation over the training set
            # (paper Eq. 1), and a fixed probe keeps the curve comparable with and without augmentation.
            probe_x=splits.train_x[probe],
            probe_y=splits.train_y[probe],
            probe_noisy=torch.isin(probe, splits.noisy_indices.cpu()),
            schedule=schedule,
        )

    @property
    def n_train(self) -> int:
        return len(self.splits.train_y)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.cfg.train.batch_size)

    def measure(self, step: int) -> dict[str, float]:
        fisher, seed = self.cfg.fisher, self.cfg.train.seed
        out: dict[str, float] = {}
        if fisher.spectrum is None or fisher.per_layer:
            est = fisher_trace(
                self.model,
                self.probe_x,
                labels=fisher.trace_labels,
                generator=seeded_generator(seed, step, FISHER_LABELS),
                label_samples=fisher.draws,
                top_classes=fisher.top,
                per_layer=fisher.per_layer,
            )
            out.update({names.layer_metric(path): v for path, v in est.per_layer.items()})
        if fisher.spectrum is not None:  # the same labels (same generator state), Tr(F) from the same matrix
            spectrum = fisher_spectrum(
                self.model,
                self.probe_x,
                fisher.spectrum.k,
                labels=fisher.trace_labels,
                generator=seeded_generator(seed, step, FISHER_LABELS),
                label_samples=fisher.draws,
                top_classes=fisher.top,
            )
            est = trace_estimate(spectrum.per_example)
            lam = spectrum.eigenvalues.tolist()
            out.update({names.eigenvalue_metric(rank): v for rank, v in enumerate(lam, start=1)})
            out[names.FISHER_LAMBDA_MAX] = lam[0]
            out[names.FISHER_LAMBDA_MAX_LR] = lam[0] * self.cfg.train.lr
        out.update({names.FISHER_TRACE: est.mean, names.FISHER_TRACE_STDERR: est.stderr})
        out.update(self._noisy_and_clean(est))
        if self.hessian_due(step):
            assert self.cfg.hessian.trace is not None
            h = hessian_trace(
                self.model,
                self.probe_x,
                self.probe_y,
                probes=self.cfg.hessian.trace.probes,
                generator=seeded_generator(seed, step, HESSIAN_PROBES),
            )
            out.update({names.HESSIAN_TRACE: h.mean, names.HESSIAN_TRACE_STDERR: h.stderr})
        if fisher.labels == "empirical":
            out[names.FISHER_TRACE_EMPIRICAL] = fisher_trace(self.model, self.probe_x, self.probe_y).mean
        return out

    def hessian_due(self, step: int) -> bool:
        """Whether Tr(H) is measured at ``step``: step 0 and every ``every_epochs``-th epoch end."""
        trace = self.cfg.hessian.trace
        if trace is None or step % self.steps_per_epoch:
            return False
        return (step // self.steps_per_epoch) % trace.every_epochs == 0

    def _noisy_and_clean(self, est: TraceEstimate) -> dict[str, float]:
        """Tr(F) over the probe's noisy-label examples and over its clean ones (label noise only)."""
        if not self.probe_noisy.any() or est.per_example is None:
            return {}
        out: dict[str, float] = {}
        groups = (
            (names.FISHER_TRACE_NOISY, names.FISHER_TRACE_NOISY_STDERR, self.probe_noisy),
            (names.FISHER_TRACE_CLEAN, names.FISHER_TRACE_CLEAN_STDERR, ~self.probe_noisy),
        )
        for name, stderr_name, members in groups:
            if members.any():
                part = trace_estimate(est.per_example[members.to(est.per_example.device)])
                out[name], out[stderr_name] = part.mean, part.stderr
        return out
