"""The study spec (design.md §3): YAML → validated, frozen dataclasses.

Imports neither Ray, Optuna nor MLflow, so a bad spec is refused within seconds, before
anything starts. Trial fields and their defaults live in :mod:`trainables.config`; this module
adds search, resources and tracking around them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from study.spec_core import NAME_PATTERN, Tracking, check_storage_url, resolved_storage
from trainables.config import TrialConfig
from trainables.report import OBJECTIVES, VAL_ACCURACY, VAL_LOSS
from trainables.schema import ConfigError, check, merge, parse, require, unflatten

MIN_CPU = 1e-4  # Ray's resource granularity: smaller fractions are refused
MINIMISED = {VAL_LOSS: "min"}  # objectives a study minimises; the others it maximises
SEED_FIELD = "train.seed"
MAX_SPEC_BYTES = 2**20  # a spec is a page of YAML; anything larger is the wrong file
_TRIAL_SECTIONS = tuple(f.name for f in fields(TrialConfig))  # data, model, train, fisher, …


@dataclass(frozen=True, slots=True)
class Domain:
    """One searched field: ``kind`` ∈ loguniform | uniform | int | choice | grid."""

    kind: Literal["loguniform", "uniform", "int", "choice", "grid"]
    values: tuple[Any, ...]  # (lo, hi) for ranges, the options for choice and grid

    @property
    def is_categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    def to_yaml(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}

    @classmethod
    def parse(cls, data: Any, path: str) -> Domain:
        kinds = ("loguniform", "uniform", "int", "choice", "grid")
        if not isinstance(data, Mapping) or len(data) != 1 or next(iter(data)) not in kinds:
            raise ConfigError(f"{path}: expected one of {{{': [...]}, {'.join(kinds)}: [...]}}, got {data!r}")
        kind, values = next(iter(data.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}.{kind}: expected a non-empty list, got {values!r}")
        if kind in ("choice", "grid"):
            nested = [v for v in values if isinstance(v, (Mapping, list))]
            if nested:
                raise ConfigError(
                    f"{path}.{kind}: options are single values (numbers, strings, booleans, null), got {nested[0]!r}; "
                    "search a section's own fields (e.g. fisher.spectrum.k) or run one study per setting"
                )
            repeated = [v for i, v in enumerate(values) if any(_same(v, w) for w in values[:i])]
            if repeated:
                raise ConfigError(f"{path}.{kind}: {repeated[0]!r} is listed twice; each option once")
            return cls(kind, tuple(values))
        if len(values) != 2:
            raise ConfigError(f"{path}.{kind}: expected [lo, hi], got {values!r}")
        lo, hi = values
        numeric = int if kind == "int" else (int, float)
        if not all(isinstance(v, numeric) and not isinstance(v, bool) for v in (lo, hi)):
            what = "integers" if kind == "int" else "numbers"
            raise ConfigError(f"{path}.{kind}: lo and hi must be {what}, got {values!r}")
        require(math.isfinite(lo) and math.isfinite(hi), f"{path}.{kind}", "[lo, hi], both finite", values)
        require(lo < hi, f"{path}.{kind}", "[lo, hi] with lo < hi", values)
        if kind == "loguniform":
            require(lo > 0, f"{path}.{kind}", "[lo, hi] with 0 < lo < hi", values)
        return cls(kind, (lo, hi))


def _same(a: Any, b: Any) -> bool:
    """Options that name the same setting: equal values of the same kind (1 and 1.0 are one
    number; true and 1 are not)."""
    return (type(a) is type(b) or (_numeric(a) and _numeric(b))) and a == b


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True, slots=True)
class AshaConfig:
    grace_period: int = 5  # epochs
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        path = "search.scheduler.asha"
        require(self.grace_period >= 1, f"{path}.grace_period", "an integer ≥ 1", self.grace_period)
        require(self.reduction_factor >= 2, f"{path}.reduction_factor", "an integer ≥ 2", self.reduction_factor)


@dataclass(frozen=True, kw_only=True, slots=True)
class Schedulers:
    """The YAML form of a scheduler, ``{asha: {...}}`` (one scheduler so far)."""

    asha: AshaConfig


SchedulerChoice = Literal["none"] | Schedulers | None  # search.scheduler as written in a spec


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSpec:
    space: dict[str, Domain]
    sampler: Literal["tpe", "random", "qmc", "grid"] = "tpe"
    seed: int = 0
    num_samples: int = 12
    max_concurrent: int = 2
    metric: str = VAL_ACCURACY
    mode: Literal["min", "max"] = "max"
    scheduler: AshaConfig | None = None
    storage: str | None = None  # Optuna's database URL; None: optuna.db in the study folder

    def __post_init__(self) -> None:
        require(self.metric in OBJECTIVES, "search.metric", f"one of {list(OBJECTIVES)}", self.metric)
        require(0 <= self.seed < 2**32, "search.seed", "an integer in [0, 2^32) (the samplers' seed range)", self.seed)
        best = MINIMISED.get(self.metric, "max")
        require(self.mode == best, "search.mode", f"{best} with search.metric: {self.metric}", self.mode)
        if self.storage is not None:
            check_storage_url(self.storage)

    @property
    def seeds(self) -> tuple[int, ...] | None:
        """Replica seeds when ``train.seed`` is a grid (each configuration runs once per seed)."""
        domain = self.space.get(SEED_FIELD)
        return tuple(domain.values) if domain else None

    @property
    def searched(self) -> dict[str, Domain]:
        """The fields the searcher samples (seeds are replicated, never sampled)."""
        return {k: v for k, v in self.space.items() if k != SEED_FIELD}

    @property
    def replicas(self) -> int:
        return len(self.seeds) if self.seeds else 1

    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.searched.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        require(self.cpu >= MIN_CPU, "resources.cpu", f"a number ≥ {MIN_CPU} (Ray's smallest fraction)", self.cpu)
        require(self.gpu >= 0, "resources.gpu", "≥ 0", self.gpu)
        require(self.gpu <= 1 or self.gpu.is_integer(), "resources.gpu", "a fraction ≤ 1 or a whole number", self.gpu)


@dataclass(frozen=True, kw_only=True, slots=True)
class StudySpec:
    name: str
    trial: TrialConfig
    search: SearchSpec
    resources: Resources = field(default_factory=Resources)
    tracking: Tracking = field(default_factory=Tracking)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved spec, every default written out; parses back to an equal spec."""
        nested: dict[str, Any] = {"name": self.name, **unflatten(self.trial.flat())}
        s = self.search
        nested["search"] = {
            "space": {k: d.to_yaml() for k, d in s.space.items()},
            "sampler": s.sampler,
            "seed": s.seed,
            "num_samples": s.num_samples,
            "max_concurrent": s.max_concurrent,
            "metric": s.metric,
            "mode": s.mode,
            "scheduler": {
                "asha": {"grace_period": s.scheduler.grace_period, "reduction_factor": s.scheduler.reduction_factor}
            }
            if s.scheduler
            else "none",
            "storage": s.storage,
        }
        nested["resources"] = {"cpu": self.resources.cpu, "gpu": self.resources.gpu}
        nested["tracking"] = {"uri": self.tracking.uri}
        return nested

    def resolved(self, base: Path) -> StudySpec:
        """SQLite paths of the tracking URI and the Optuna storage made absolute against ``base``."""
        storage = self.search.storage and resolved_storage(self.search.storage, base)
        return replace(self, tracking=self.tracking.resolved(base), search=replace(self.search, storage=storage))

    def identity(self) -> dict[str, Any]:
        """What may not change when a study is extended: trial config and search definition."""
        d = self.to_yaml_dict()
        return {k: v for k, v in d.items() if k not in ("resources", "tracking")} | {
            "search": {k: v for k, v in d["search"].items() if k not in ("num_samples", "max_concurrent", "storage")}
        }


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Read and validate a study spec file; every problem is a :class:`ConfigError`.

    ``overrides`` (dotted name → value, e.g. from CLI flags) replace values of the file before
    validation, so they are checked like the rest.
    """
    text = _read_spec(Path(path))
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except ConfigError as exc:  # a key written twice
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(data, Mapping):
        data = merge(data, overrides or {})
    return parse_spec(data, source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error: PyYAML keeps the
    last silently, and a second ``space:`` under ``search:`` dropped the first one's fields."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are refused by the validation that follows
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"line {mark.line + 1}: {key!r} appears twice in the same mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_spec(path: Path) -> str:
    """The spec's text; a file that is not a small UTF-8 text file is a :class:`ConfigError`."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the study spec ({exc.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_SPEC_BYTES // 2**20} MiB, too large for a study spec")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None
    if "\0" in text:
        raise ConfigError(f"{path}: a binary file (it holds NUL bytes), not a YAML study spec")
    return text


def parse_spec(data: Any, source: str = "spec") -> StudySpec:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with at least 'name' and 'search', got {data!r}")
    allowed = {"name", *_TRIAL_SECTIONS, "search", "resources", "tracking"}
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed top-level keys are {sorted(allowed)}")
    name = data.get("name")
    if name is None:
        raise ConfigError("name: required (the study name, e.g. digits-quick)")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"name: {name!r} is not allowed; use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    trial = TrialConfig.from_mapping({k: data.get(k) for k in _TRIAL_SECTIONS})
    search = _parse_search(data.get("search"), trial)
    return StudySpec(
        name=name,
        trial=trial,
        search=search,
        resources=parse(Resources, data.get("resources"), "resources"),
        tracking=parse(Tracking, data.get("tracking"), "tracking"),
    )


def _parse_search(data: Any, trial: TrialConfig) -> SearchSpec:
    if not isinstance(data, Mapping):
        raise ConfigError("search: required, with a non-empty 'space' of dotted trial fields")
    raw_space = data.get("space")
    if not isinstance(raw_space, Mapping) or not raw_space:
        raise ConfigError("search.space: required and non-empty, e.g. {train.lr: {loguniform: [1.0e-3, 1.0e-1]}}")
    space = {}
    fields = trial.flat()
    for dotted, raw in raw_space.items():
        path = f"search.space.{dotted}"
        if dotted not in fields:
            raise ConfigError(f"{path}: not a trial field; searchable fields are {sorted(fields)}")
        if dotted == "model.name":
            raise ConfigError(f"{path}: models have different options; run one study per model instead")
        domain = Domain.parse(raw, path)
        if (
            domain.kind in ("uniform", "loguniform")
            and isinstance(fields[dotted], int)
            and not isinstance(fields[dotted], bool)
        ):
            raise ConfigError(f"{path}: {dotted} is an integer field; use {{int: [lo, hi]}} (or a choice/grid)")
        for value in domain.values:  # bounds of a range, or every option
            try:
                trial.with_value(str(dotted), value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        space[str(dotted)] = domain
    scheduler = check(SchedulerChoice, data.get("scheduler"), "search.scheduler")
    asha = scheduler.asha if isinstance(scheduler, Schedulers) else None
    search = parse(SearchSpec, {**data, "space": space, "scheduler": asha}, "search")
    _check_search(search)
    if "penalty.coef" in search.searched and trial.penalty.kind == "none" and "penalty.kind" not in search.searched:
        raise ConfigError(
            "search.space.penalty.coef: penalty.kind is none, which ignores the coefficient; set a penalty.kind or search lr alone"
        )
    return search


def _check_search(s: SearchSpec) -> None:
    require(s.num_samples >= 1, "search.num_samples", "an integer ≥ 1", s.num_samples)
    require(s.max_concurrent >= 1, "search.max_concurrent", "an integer ≥ 1", s.max_concurrent)
    if SEED_FIELD in s.space:
        seed_domain = s.space[SEED_FIELD]
        require(
            seed_domain.kind == "grid",
            f"search.space.{SEED_FIELD}",
            "a {grid: [...]} of replica seeds (seeds are never sampled)",
            seed_domain.to_yaml(),
        )
        require(
            s.num_samples % s.replicas == 0,
            "search.num_samples",
            f"a multiple of the {s.replicas} seeds in search.space.{SEED_FIELD}",
            s.num_samples,
        )
        require(s.scheduler is None, "search.scheduler", "none when train.seed is replicated", "asha")
    if not s.searched and not s.seeds:
        raise ConfigError("search.space: required and non-empty")
    if s.sampler == "grid":
        bad = [k for k, d in s.searched.items() if not d.is_categorical]
        if bad:
            raise ConfigError(
                f"search.space.{bad[0]}: sampler grid needs every searched field to be {{grid: [...]}} or {{choice: [...]}}"
            )
        limit = s.grid_size() * s.replicas
        require(
            s.num_samples <= limit,
            "search.num_samples",
            f"≤ {limit}, the grid's size × seeds (sampler grid)",
            s.num_samples,
        )
