"""The typed config of one trial: data, model, train, fisher, penalty.

Single home of every trial field and its default (design.md §3). The study spec composes this
with search, resources and tracking; Ray's ``param_space`` carries its flattened, dotted form
and :meth:`TrialConfig.from_tune` rebuilds it, without building the model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from trainables.data import DATASETS, Splits, check_cache_dir, dataset_info
from trainables.data import load as load_splits
from trainables.models import build_model, model_entry
from trainables.penalties import PENALTIES, make_penalty
from trainables.schema import ConfigError, flatten, parse, require, unflatten

# The cost of a Tr(F) point per probe example, in training examples of an SGD step: one eval-mode
# forward, then one backward row per label set. Fitted on CPU (SimpleCNN on digits, batch 32,
# 64 probe examples: sampled K = 1 2.5 steps, K = 4 7.1, exact 13.2; benchmarks/README.md).
FORWARD_COST = 0.65
ROW_COST = 0.6
TRIAL_INDEX_KEY = "__trial_index__"  # set by Ray's Repeater on replicated configurations
SEEDS_KEY = "fishtune.seeds"  # the replica seeds, carried in param_space when train.seed is a grid


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    """``cache_dir`` holds downloaded archives (CIFAR; digits ignores it); ``augment`` is a
    random 4-px crop and horizontal flip of training batches, for CIFAR only."""

    name: str = "digits"
    val_fraction: float = 0.1
    label_noise: float = 0.0
    seed: int = 0
    cache_dir: str = "~/.cache/fishtune"
    augment: bool = False
    train_size: int | None = None  # a seeded subset of the training split (None: all of it)

    def __post_init__(self) -> None:
        info = dataset_info(self.name)
        if self.train_size is not None:
            require(self.train_size >= 1, "data.train_size", "an integer ≥ 1", self.train_size)
        require(0 < self.val_fraction < 1, "data.val_fraction", "in (0, 1)", self.val_fraction)
        require(0 <= self.label_noise < 1, "data.label_noise", "in [0, 1)", self.label_noise)
        offered = sorted(n for n, d in DATASETS.items() if d.augment)
        why = f"false for {self.name} (the random crop and flip are offered for {', '.join(offered)} only)"
        require(not self.augment or info.augment, "data.augment", why, self.augment)
        check_cache_dir(self.name, self.cache_dir)

    def load(self, device: torch.device) -> Splits:
        """The train, validation and test splits this config describes, on ``device``."""
        return load_splits(
            self.name,
            val_fraction=self.val_fraction,
            label_noise=self.label_noise,
            seed=self.seed,
            cache_dir=self.cache_dir,
            train_size=self.train_size,
            device=device,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """``name`` picks a registry entry; the other keys are that model's typed options."""

    name: str = "simple_cnn"
    options: Any = None

    @classmethod
    def parse(cls, data: Any = None) -> ModelConfig:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"model: expected a mapping with a name, got {data!r}")
        name = data.get("name", next(f.default for f in dataclasses.fields(cls) if f.name == "name"))
        if not isinstance(name, str):
            raise ConfigError(f"model.name: expected a string, got {name!r}")
        options = {k: v for k, v in data.items() if k != "name"}
        return cls(name=name, options=parse(model_entry(name).options, options, "model"))


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    optimizer: Literal["sgd"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    collapse_after_epoch: int = 3  # chance-level train accuracy after this epoch = diverged (collapse)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", "an integer ≥ 1", self.epochs)
        require(
            self.collapse_after_epoch >= 0, "train.collapse_after_epoch", "an integer ≥ 0", self.collapse_after_epoch
        )
        require(self.batch_size >= 1, "train.batch_size", "an integer ≥ 1", self.batch_size)
        require(self.lr > 0, "train.lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "train.weight_decay", "≥ 0", self.weight_decay)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleConfig:
    """When Tr(F) and the train curves are logged, in optimizer steps (design.md §4).

    Always at step 0 and at every epoch end. Inside the dense window (``epoch <
    dense_until_epoch``) also every ``dense_every`` steps; after it every ``sparse_every`` steps
    (``None``: epoch ends only). With ``dense_every: null`` the dense spacing follows from
    ``budget``, the share of the trial's training compute that the points beyond the epoch ends
    may cost, by the deterministic cost model of :meth:`LogSchedule.resolve` (no wall clock:
    reruns log the same steps).
    """

    dense_until_epoch: float = 5.0
    dense_every: int | None = None
    sparse_every: int | None = None
    budget: float = 0.15

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

    ``labels``: ``exact`` (the expectation over classes, no label noise), ``sampled``
    (``label_samples`` labels per example from the model's softmax; default 1, the paper's
    estimator) or ``empirical`` (exact, plus ``fisher_trace_empirical`` with the true labels).
    ``spectrum``: also the top-k eigenvalues of the same probe Fisher at every point (off by default).
    """

    samples: int = 64
    labels: Literal["sampled", "exact", "empirical"] = "exact"
    label_samples: int | None = None
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
        if self.epsilon is not None:
            require(self.epsilon > 0, "fisher.epsilon", "> 0", self.epsilon)

    @property
    def trace_labels(self) -> Literal["exact"] | None:
        """The ``labels`` argument of :func:`trainables.fisher.fisher_trace` for the true Fisher:
        ``None`` (sample from the model) or ``"exact"`` (also for ``empirical``)."""
        return None if self.labels == "sampled" else "exact"

    @property
    def draws(self) -> int:
        """Labels drawn per probe example: ``label_samples`` when sampled (default 1), else 1."""
        return self.label_samples or 1

    def point_cost(self, num_classes: int, batch_size: int) -> float:
        """One Tr(F) point's cost in training steps, the schedule's cost model.

        A point runs one forward of the probe and back-propagates one row per probe example and
        label set: C for exact, C + 1 for empirical, K for sampled. Per probe example the forward
        costs :data:`FORWARD_COST` and a row :data:`ROW_COST` of a training example's step (the
        backward stops at the layer outputs), so a point costs (FORWARD_COST + ROW_COST × rows) ×
        samples / batch_size steps.
        """
        rows = {"exact": num_classes, "empirical": num_classes + 1, "sampled": self.draws}[self.labels]
        return (FORWARD_COST + ROW_COST * rows) * self.samples / batch_size


@dataclass(frozen=True, kw_only=True, slots=True)
class PenaltyConfig:
    """``recompute_every`` left out follows each penalty's paper: every 10 steps for the Fisher
    penalty and its gradient-norm baselines (Jastrzebski et al.), every step for VCL (Littwin &
    Wolf recompute it on every mini-batch)."""

    kind: str = "none"
    coef: float = 0.0
    recompute_every: int | None = None

    def __post_init__(self) -> None:
        require(self.kind in PENALTIES, "penalty.kind", f"one of {list(PENALTIES)}", self.kind)
        require(self.coef >= 0, "penalty.coef", "≥ 0", self.coef)
        if self.recompute_every is not None:
            require(self.recompute_every >= 1, "penalty.recompute_every", "an integer ≥ 1", self.recompute_every)

    @property
    def every(self) -> int:
        """``recompute_every``, or the kind's own default when it was left out (null)."""
        if self.recompute_every is not None:
            return self.recompute_every
        return 1 if self.kind == "vcl" else 10


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig.parse)
    train: TrainConfig = field(default_factory=TrainConfig)
    fisher: FisherConfig = field(default_factory=FisherConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrialConfig:
        """Parse the trial sections of a spec, then check model × data × penalty (:func:`check_fits`)."""
        cfg = cls.parse(data)
        check_fits(cfg.model, cfg.data.name, cfg.penalty.kind)
        return cfg

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> TrialConfig:
        """Parse the trial sections and resolve ε, without building the model: for configs whose
        model was checked when their spec was loaded."""
        parts: dict[str, Any] = {name: parse(tp, data.get(name), name) for name, tp in _SECTIONS.items()}
        cfg = cls(model=ModelConfig.parse(data.get("model")), **parts)
        if cfg.fisher.epsilon is None:
            eps = dataset_info(cfg.data.name).default_epsilon
            cfg = dataclasses.replace(cfg, fisher=dataclasses.replace(cfg.fisher, epsilon=eps))
        return cfg

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialConfig:
        """Rebuild from Ray's flat config (no model build: the spec load checked every searched
        value); a Repeater replica index picks its seed."""
        flat = {k: v for k, v in config.items() if k not in (TRIAL_INDEX_KEY, SEEDS_KEY)}
        if SEEDS_KEY in config:
            flat["train.seed"] = list(config[SEEDS_KEY])[int(config.get(TRIAL_INDEX_KEY, 0))]
        return cls.parse(unflatten(flat))

    def flat(self) -> dict[str, Any]:
        """Dotted names → values, e.g. ``{"train.lr": 0.01, "model.padding": "same"}``."""
        prefix = "model.options."
        return {k.replace(prefix, "model.", 1) if k.startswith(prefix) else k: v for k, v in flatten(self).items()}

    def with_value(self, dotted: str, value: Any) -> TrialConfig:
        """A copy with one dotted field replaced, validated like the rest of the file (the model
        is built only if the new value gives another model × data × penalty)."""
        flat = self.flat()
        if dotted not in flat:
            raise ConfigError(f"search.space: {dotted!r} is not a trial field; known fields: {sorted(flat)}")
        flat[dotted] = value
        return TrialConfig.from_mapping(unflatten(flat))

    @property
    def epsilon(self) -> float:
        assert self.fisher.epsilon is not None  # resolved in parse
        return self.fisher.epsilon


@functools.cache
def check_fits(model: ModelConfig, data_name: str, penalty_kind: str) -> None:
    """Build the model (and the penalty's own parameters) on a dummy batch of the data's shape.

    Cached: a spec load checks its base config and every searched value, and only a model
    option, the data set or the penalty kind can change the outcome, so each distinct
    combination is built once per process (a failure, a :class:`ConfigError`, is not cached).
    """
    info = dataset_info(data_name)
    built = build_model(model.name, model.options, info.input_shape, info.num_classes)
    make_penalty(penalty_kind, 0.0).prepare(built, torch.zeros(16, *info.input_shape))


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "fisher": FisherConfig,
    "penalty": PenaltyConfig,
}
