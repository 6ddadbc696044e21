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
# Optuna's JournalStorage on a log file: ``journal`` is the study folder's own file
# (``StudyStore.journal_path``), ``journal:///PATH`` a file elsewhere (a relative PATH is taken
# against the working directory of ``fishtune run``, as for SQLite). It keeps the trials in
# memory and reads only new log lines, so its suggest does not re-read the running trials from
# a database (benchmarks/README.md).
JOURNAL = "journal"
JOURNAL_PREFIX = "journal:///"
_PASSWORD_IN_NETLOC = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@?]*):[^@]*@")
_PASSWORD_IN_QUERY = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def masked(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (in the user part or a libpq
    ``password=`` query parameter): what logs, MLflow and the console may show of it."""
    return _PASSWORD_IN_QUERY.sub(r"\1***", _PASSWORD_IN_NETLOC.sub(r"\1:***@", url))


def check_storage_url(url: str) -> None:
    """``search.storage`` must be a journal file or a SQLAlchemy database URL that Optuna's RDBStorage takes."""
    if url == JOURNAL or (url.startswith(JOURNAL_PREFIX) and len(url) > len(JOURNAL_PREFIX)):
        return
    dialect = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    require(
        dialect in STORAGE_DIALECTS,
        "search.storage",
        f"a database URL for Optuna, {' | '.join(d + '://…' for d in STORAGE_DIALECTS)}, "
        f"{JOURNAL!r} (a journal file in the study folder) or {JOURNAL_PREFIX}PATH "
        "(leave it out for the study folder's optuna.db)",
        masked(url),
    )


def storage_file(url: str) -> tuple[str, Path] | None:
    """The prefix and file of a storage URL kept in a file (SQLite, journal); None for a server's."""
    for prefix in ("sqlite:///", JOURNAL_PREFIX):
        if url.startswith(prefix):
            return prefix, Path(url.removeprefix(prefix)).expanduser()
    return None


def resolved_storage(url: str, base: Path) -> str:
    """A SQLite or journal file's path made absolute against ``base``, as the tracking URI's; its folder must exist."""
    in_file = storage_file(url)
    if in_file is None:
        return url
    prefix, path = in_file
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.parent.is_dir():
        kind = "SQLite storage" if prefix == "sqlite:///" else "journal storage"
        raise ConfigError(f"search.storage: the folder {path.parent} of the {kind} does not exist")
    return f"{prefix}{path}"


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
        if scheme == "sqlite":
            path = self.uri.removeprefix("sqlite:///")
            ok = self.uri.startswith("sqlite:///") and path and not path.endswith("/")
            require(bool(ok), "tracking.uri", "sqlite:/// then the database file (e.g. sqlite:///mlflow.db)", self.uri)

    def resolved(self, base: Path) -> Tracking:
        """SQLite paths made absolute against ``base``; the database's folder must exist."""
        if not self.uri.startswith("sqlite:///"):
            return self
        path = Path(self.uri.removeprefix("sqlite:///")).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.parent.is_dir():
            raise ConfigError(f"tracking.uri: the folder {path.parent} of the SQLite store does not exist")
        return Tracking(uri=f"sqlite:///{path}")
