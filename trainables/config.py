"""The typed config of one trial: data, model, train, fisher, penalty.

Single home of every trial field and its default (design.md §3). The study spec composes this
with search, resources and tracking; Ray's ``param_space`` carries its flattened, dotted form
and :meth:`TrialConfig.from_tune` rebuilds it, without building the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from trainables.data import DATASETS, Splits, check_cache_dir, dataset_info, split_sizes
from trainables.data import load as load_splits
from trainables.fisher_config import FisherConfig
from trainables.models import build_model, model_entry
from trainables.penalties import PENALTIES, VarianceConstancyPenalty, make_penalty
from trainables.schema import ConfigError, flatten, parse, require, unflatten

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
        require(self.seed >= 0, "data.seed", "an integer ≥ 0", self.seed)
        if self.train_size is not None:
            require(self.train_size >= 1, "data.train_size", "an integer ≥ 1", self.train_size)
        require(0 < self.val_fraction < 1, "data.val_fraction", "in (0, 1)", self.val_fraction)
        n_train, n_val = split_sizes(info.pool, self.val_fraction, None)
        why = f"small enough to leave training examples ({self.name} splits {info.pool} into training and validation)"
        require(n_train >= 1, "data.val_fraction", why, self.val_fraction)
        if self.train_size is not None:
            why = f"at most {n_train} ({self.name}'s {info.pool} examples less {n_val} for validation)"
            require(self.train_size <= n_train, "data.train_size", why, self.train_size)
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
        require(self.seed >= 0, "train.seed", "an integer ≥ 0", self.seed)
        require(
            self.collapse_after_epoch >= 0, "train.collapse_after_epoch", "an integer ≥ 0", self.collapse_after_epoch
        )
        require(self.batch_size >= 1, "train.batch_size", "an integer ≥ 1", self.batch_size)
        require(self.lr > 0, "train.lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "train.weight_decay", "≥ 0", self.weight_decay)


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
class HessianTraceConfig:
    """Tr(H) of the training loss on the Tr(F) probe by Hutchinson's estimator with ``probes``
    Gaussian probes (the paper's M = 30), at step 0 and at the end of every ``every_epochs``-th
    epoch: a point costs about ``probes`` Hessian-vector products (benchmarks/README.md)."""

    probes: int = 30
    every_epochs: int = 1

    def __post_init__(self) -> None:
        require(self.probes >= 2, "hessian.trace.probes", "an integer ≥ 2 (a standard error needs two)", self.probes)
        require(self.every_epochs >= 1, "hessian.trace.every_epochs", "an integer ≥ 1", self.every_epochs)


@dataclass(frozen=True, kw_only=True, slots=True)
class HessianConfig:
    """``trace``: Tr(H) by Hutchinson (off unless given, e.g. ``hessian: {trace: {probes: 30}}``)."""

    trace: HessianTraceConfig | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig.parse)
    train: TrainConfig = field(default_factory=TrainConfig)
    fisher: FisherConfig = field(default_factory=FisherConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)

    def __post_init__(self) -> None:
        if self.penalty.kind == "vcl":
            least = 2 * VarianceConstancyPenalty.SUBSET
            why = (
                f"≥ {least} with penalty.kind: vcl (it compares the variances of two subsets of {least // 2} examples)"
            )
            require(self.train.batch_size >= least, "train.batch_size", why, self.train.batch_size)

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
    "hessian": HessianConfig,
}
