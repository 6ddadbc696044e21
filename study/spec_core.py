"""The parts of a spec that the read-only commands (``status``, ``dashboard``, ``ui``) need:
the study-name rule, the tracking URI and the Optuna storage URL (and how to print either
without its password). Importable without torch, Ray, Optuna or MLflow, so
those commands start in well under a second; :mod:`study.spec` builds the rest on them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainables.schema import ConfigError, require

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")
# SQLAlchemy's dialects that Optuna's RDBStorage is tested on or documents (a driver may follow
# the dialect: postgresql+psycopg://…); PostgreSQL needs the `postgres` extra (psycopg).
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
_PASSWORD_IN_NETLOC = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@?]*):[^@]*@")
_PASSWORD_IN_QUERY = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def masked(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (in the user part or a libpq
    ``password=`` query parameter): what logs, MLflow and the console may show of it."""
    return _PASSWORD_IN_QUERY.sub(r"\1***", _PASSWORD_IN_NETLOC.sub(r"\1:***@", url))


def check_storage_url(url: str) -> None:
    """``search.storage`` must be a SQLAlchemy database URL that Optuna's RDBStorage takes."""
    dialect = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    require(
        dialect in STORAGE_DIALECTS,
        "search.storage",
        f"a database URL for Optuna, {' | '.join(d + '://…' for d in STORAGE_DIALECTS)} "
        "(leave it out for the study folder's optuna.db)",
        masked(url),
    )


def resolved_storage(url: str, base: Path) -> str:
    """A SQLite storage's path made absolute against ``base``, as the tracking URI's; its folder must exist."""
    if not url.startswith("sqlite:///"):
        return url
    path = Path(url.removeprefix("sqlite:///")).expanduser()
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.parent.is_dir():
        raise ConfigError(f"search.storage: the folder {path.parent} of the SQLite storage does not exist")
    return f"sqlite:///{path}"


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
