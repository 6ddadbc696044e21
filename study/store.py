"""The local study folder ``<storage>/runs/<study>/``: resolved spec, Optuna storage, launches.

``spec.yaml`` is the resolved spec (tracking URI absolute) that ``resume``, ``status``,
``analyze`` and ``ui`` read; ``optuna.db`` is the persistent Optuna storage, so a search
continues where it stopped, unless the spec's ``search.storage`` names another database or a
journal (``optuna.journal`` here, for ``journal``; the stored spec keeps the setting, so
``resume`` and ``dashboard`` find it); ``launches.json`` records each ``run`` (its Tune experiment, the
total number of trials asked for, and whether it finished); ``mlflow-unwritten.jsonl`` holds
what the MLflow store did not take before a launch ended, until the next launch writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from study.spec_core import JOURNAL, Tracking
from trainables.schema import ConfigError

if TYPE_CHECKING:
    from study.spec import StudySpec


@dataclass(slots=True)
class Launch:
    index: int
    experiment: str  # Tune experiment name under the results path
    results: str  # Tune storage_path
    total_samples: int  # the study's trial count once this launch is done
    num_samples: int  # trials this launch runs
    finished: bool = False


class StudyStore:
    def __init__(self, storage: str | Path, name: str) -> None:
        self.root = Path(storage).expanduser().resolve() / "runs" / name
        self.name = name

    @property
    def spec_path(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def default_optuna_url(self) -> str:
        """The Optuna storage of a study whose spec names none: ``optuna.db`` in this folder."""
        return f"sqlite:///{self.optuna_path}"

    def storage_url(self, storage: str | None) -> str:
        """The URL of the Optuna storage a spec's ``search.storage`` names for this folder:
        ``optuna.db`` for none, ``optuna.journal`` for ``journal``, else the URL itself."""
        if not storage:
            return self.default_optuna_url
        if storage == JOURNAL:
            return f"journal:///{self.journal_path}"
        return storage

    @property
    def optuna_url(self) -> str:
        """The stored study's Optuna storage (its ``search.storage``, else the default), read
        without parsing the whole spec; the default before the study is stored."""
        search = self._stored().get("search") if self.exists() else None
        url = search.get("storage") if isinstance(search, dict) else None
        return self.storage_url(url if isinstance(url, str) else None)

    @property
    def default_results(self) -> str:
        return str(self.root / "ray")

    @property
    def unwritten_path(self) -> Path:
        """MLflow writes a launch could not store (the store was down): JSON lines, replayed later."""
        return self.root / "mlflow-unwritten.jsonl"

    @property
    def optuna_path(self) -> Path:
        return self.root / "optuna.db"

    @property
    def journal_path(self) -> Path:
        return self.root / "optuna.journal"

    def exists(self) -> bool:
        return self.spec_path.is_file()

    def load_spec(self) -> StudySpec:
        from study.spec import parse_spec  # builds the trial config: imports torch

        return parse_spec(self._stored(), source=str(self.spec_path))

    def tracking_uri(self) -> str:
        """The stored study's MLflow URI, read without parsing the whole spec (no torch import):
        the stored spec is the resolved one, its URI already absolute."""
        tracking = self._stored().get("tracking") or {}
        uri = tracking.get("uri") if isinstance(tracking, dict) else None
        return (Tracking(uri=uri) if isinstance(uri, str) else Tracking()).uri

    def _stored(self) -> dict[str, Any]:
        if not self.exists():
            raise ConfigError(
                f"study {self.name!r}: no {self.spec_path}; start it with `fishtune run SPEC.yaml` "
                "or pass --storage DIR where it was run"
            )
        data = yaml.safe_load(self.spec_path.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"{self.spec_path}: not a study spec (expected a mapping)")
        return data

    def save_spec(self, spec: StudySpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spec_path.write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))

    def launches(self) -> list[Launch]:
        path = self.root / "launches.json"
        return [Launch(**d) for d in json.loads(path.read_text())] if path.is_file() else []

    def save_launches(self, launches: list[Launch]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "launches.json").write_text(json.dumps([asdict(x) for x in launches], indent=1))
