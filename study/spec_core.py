"""The parts of a spec that the read-only commands (``status``, ``dashboard``, ``ui``) need:
the study-name rule and the tracking URI. Importable without torch, Ray, Optuna or MLflow, so
those commands start in well under a second; :mod:`study.spec` builds the rest on them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainables.schema import ConfigError, require

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")


@dataclass(frozen=True, kw_only=True, slots=True)
class Tracking:
    uri: str = "sqlite:///mlflow.db"

    def __post_init__(self) -> None:
        scheme = self.uri.split(":", 1)[0] if ":" in self.uri else ""
        require(
            scheme in TRACKING_SCHEMES,
            "tracking.uri",
            f"a URI with scheme {'|'.join(TRACKING_SCHEMES)} (MLflow 3 refuses plain paths and file:)",
            self.uri,
        )

    def resolved(self, base: Path) -> Tracking:
        """SQLite paths made absolute against ``base``; the database's folder must exist."""
        if not self.uri.startswith("sqlite:///"):
            return self
        path = Path(self.uri.removeprefix("sqlite:///")).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.parent.is_dir():
            raise ConfigError(f"tracking.uri: the folder {path.parent} of the SQLite store does not exist")
        return Tracking(uri=f"sqlite:///{path}")
