"""How a trial measures the Fisher: the estimator, the probe, the spectrum and the schedule of Tr(F) points.

Part of the trial config (:mod:`trainables.config`, design.md §3); the schedule resolves, per
trial, to the steps at which Tr(F) is logged, within a budget of training compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from trainables.schema import require

# The cost of a Tr(F) point per probe example, in training examples of an SGD step: one eval-mode
# forward, then one backward row per label set. Fitted on CPU (SimpleCNN on digits, batch 32,
# 64 probe examples: sampled K = 1 2.5 steps, K = 4 7.1, exact 13.2; benchmarks/README.md).
FORWARD_COST = 0.65
ROW_COST = 0.6


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleConfig:
    """When Tr(F) and the train curves are logged, in optimizer steps (design.md §4).

    Always at step 0 and at every epoch end. Inside the dense window (``epoch <
    dense_until_epoch``) also every ``dense_every`` steps; after it every ``sparse_every`` steps
    (``None``: epoch ends only). With ``dense_every: null`` the dense spacing follows from
    ``budget``, the share of the trial's training compute that the points beyond the epoch ends
    may cost, by the deterministic cost model of :meth:`LogSchedule.resolve` (no wall clock:
    reruns log the same steps). The default 0.2 took 10.2–10.6 % of the default study's trial
    in-run (the cost model leaves evaluation and the penalty out): within the 15 % of a trial
    that Tr(F) logging may cost, as dense as that allows with room for a slower machine.
    """

    dense_until_epoch: float = 5.0
    dense_every: int | None = None
    sparse_every: int | None = None
    budget: float = 0.2

    def __post_init__(self) -> None:
        path = "fisher.schedule"
        require(self.dense_until_epoch >= 0, f"{path}.dense_until_epoch", "≥ 0", self.dense_until_epoch)
        if self.dense_every is not None:
            require(self.dense_every >= 1, f"{path}.dense_every", "an integer ≥ 1 or null", self.dense_every)
        if self.sparse_every is not None:
            require(self.sparse_every >= 1, f"{path}.sparse_every", "an integer ≥ 1 or null", self.sparse_every)
        require(0 < self.budget <= 10, f"{path}.budget", "in (0, 10] (a share of training compute)", self.budget)


@dataclass(frozen=True, slots=True)
class LogSchedule:
    """A resolved :class:`ScheduleConfig` for one trial: which steps log Tr(F)."""

    steps_per_epoch: int
    dense_until_step: int
    dense_every: int
    sparse_every: int | None

    @classmethod
    def resolve(
        cls, schedule: ScheduleConfig, steps_per_epoch: int, epochs: int, point_cost_steps: float
    ) -> LogSchedule:
        """``point_cost_steps``: one Tr(F) point's cost in training steps (:meth:`FisherConfig.point_cost`).

        Budgeted spacing: the trial without them costs its training steps plus its points at step
        0 and the epoch ends; the budget buys budget × that cost / point cost more points, spread
        evenly over the dense window. Evaluation and penalty costs are left out of the trial's
        cost, so the share measured is below the budget (benchmarks/README.md).
        """
        total = steps_per_epoch * epochs
        dense_steps = min(total, math.ceil(schedule.dense_until_epoch * steps_per_epoch))
        every = schedule.dense_every
        if every is None:
            baseline = total + (epochs + 1) * point_cost_steps
            affordable = schedule.budget * baseline / point_cost_steps
            every = max(1, math.ceil(dense_steps / affordable))
        return cls(steps_per_epoch, dense_steps, every, schedule.sparse_every)

    def is_logged(self, step: int) -> bool:
        """Whether the train curves and Tr(F) are logged after ``step`` optimizer steps."""
        if step % self.steps_per_epoch == 0:
            return True
        if step < self.dense_until_step:
            return step % self.dense_every == 0
        return self.sparse_every is not None and step % self.sparse_every == 0


@dataclass(frozen=True, kw_only=True, slots=True)
class SpectrumConfig:
    """The top ``k`` eigenvalues of the probe Fisher, logged with every Tr(F) point."""

    k: int = 5

    def __post_init__(self) -> None:
        require(self.k >= 1, "fisher.spectrum.k", "an integer ≥ 1", self.k)


@dataclass(frozen=True, kw_only=True, slots=True)
class FisherConfig:
    """How Tr(F) is measured on the fixed probe of ``samples`` training examples.

    ``labels``: ``top``, the default (the ``top_classes`` classes of largest probability exactly,
    default 2, plus one label drawn from the rest: unbiased, top_classes + 1 rows), ``exact``
    (the expectation over classes, no label noise, C rows), ``sampled`` (``label_samples`` labels
    per example from the model's softmax; default 1, the paper's estimator) or ``empirical``
    (exact, plus ``fisher_trace_empirical`` with the true labels).

    Why ``top`` by default (benchmarks/README.md, ``fisher_schedule.py``): on the default study a
    top-2 point's label noise is ≤ 1.8 % of the value from step 0 to the peak, and it costs 0.45×
    an exact point, so a budget buys 2.7× more points. There the default budget logs a point
    every 8 steps of the first 5 epochs (exact in the old 15 % budget: every 22), and the peak
    read's error from the logging density, the largest error of a sparse schedule, falls from
    15–16 % to 3.5–5 % rms over the schedule's phases at lr 0.02–0.04.
    ``spectrum``: also the top-k eigenvalues of the same probe Fisher at every point (off by default).
    """

    samples: int = 64
    labels: Literal["sampled", "exact", "top", "empirical"] = "top"
    label_samples: int | None = None
    top_classes: int | None = None
    epsilon: float | None = None  # None → the data set's default (resolved in TrialConfig)
    per_layer: bool = False
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    spectrum: SpectrumConfig | None = None

    def __post_init__(self) -> None:
        require(self.samples >= 1, "fisher.samples", "an integer ≥ 1", self.samples)
        if self.label_samples is not None:
            why = "an integer ≥ 1, with fisher.labels: sampled only (exact and empirical sample no labels)"
            require(
                self.labels == "sampled" and self.label_samples >= 1, "fisher.label_samples", why, self.label_samples
            )
        if self.top_classes is not None:
            why = "an integer ≥ 1, with fisher.labels: top only"
            require(self.labels == "top" and self.top_classes >= 1, "fisher.top_classes", why, self.top_classes)
        if self.epsilon is not None:
            require(self.epsilon > 0, "fisher.epsilon", "> 0", self.epsilon)

    @property
    def trace_labels(self) -> Literal["exact", "top"] | None:
        """The ``labels`` argument of :func:`trainables.fisher.fisher_trace` for the true Fisher:
        ``None`` (sample from the model), ``"top"`` or ``"exact"`` (also for ``empirical``)."""
        if self.labels == "sampled":
            return None
        return "top" if self.labels == "top" else "exact"

    @property
    def top(self) -> int | None:
        """The ``top_classes`` argument of :func:`trainables.fisher.fisher_trace`: with ``top``,
        ``top_classes`` (default 2: on 64 probe examples at the digits Tr(F) peak, label noise ≤ 1.8 %
        of a point, where 1 gave up to 6.3 %), else None."""
        return (self.top_classes or 2) if self.labels == "top" else None

    @property
    def draws(self) -> int:
        """Labels drawn per probe example: ``label_samples`` when sampled (default 1), else 1."""
        return self.label_samples or 1

    def point_cost(self, num_classes: int, batch_size: int) -> float:
        """One Tr(F) point's cost in training steps, the schedule's cost model.

        A point runs one forward of the probe and back-propagates one row per probe example and
        label set: C for exact, C + 1 for empirical, min(top_classes + 1, C) for top, K for
        sampled. Per probe example the forward costs :data:`FORWARD_COST` and a row
        :data:`ROW_COST` of a training example's step (the backward stops at the layer outputs),
        so a point costs (FORWARD_COST + ROW_COST × rows) × samples / batch_size steps.
        """
        top = min((self.top or 0) + 1, num_classes)
        rows = {"exact": num_classes, "empirical": num_classes + 1, "top": top, "sampled": self.draws}[self.labels]
        return (FORWARD_COST + ROW_COST * rows) * self.samples / batch_size
