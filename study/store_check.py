"""Is the tracking URI an MLflow store fishtune can use? Asked before anything starts.

MLflow's own client retries an unreachable server for minutes and then raises, opens a database
it cannot reach only after Ray has started, and turns any SQLite file it is given into an MLflow
store by adding its tables (an Optuna database, say). One quick check per command instead, with
one sentence naming the URI. No MLflow import: ``fishtune status`` stays fast.
"""

from __future__ import annotations

import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from study.spec_core import masked
from trainables.schema import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLE = "experiments"  # present in every MLflow SQL store


def check_tracking_store(uri: str, *, reading: bool, timeout_s: float = 10.0) -> None:
    """``reading``: the command only reads the store, which must then exist already."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_s)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri.removeprefix("sqlite:///")), reading)
    elif uri.startswith(("postgresql", "mysql")):
        _check_database(uri, timeout_s)


def _check_server(uri: str, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:  # it answered: reachable (an auth proxy may refuse /health)
        if exc.code >= 500:
            raise ConfigError(f"tracking.uri: the MLflow server at {uri} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tracking.uri: cannot reach the MLflow server at {uri} ({exc})") from None


def _check_sqlite(path: Path, reading: bool) -> None:
    """An existing file must be an SQLite database that is empty or holds MLflow's tables."""
    if path.is_dir():
        raise ConfigError(f"tracking.uri: {path} is a folder; name the SQLite file, e.g. sqlite:///{path}/mlflow.db")
    if not path.is_file():
        if reading:
            raise ConfigError(f"tracking.uri: no MLflow database at {path}")
        return
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"tracking.uri: {path} is not an SQLite database")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"tracking.uri: cannot read the SQLite database {path} ({exc})") from None
    if tables and MLFLOW_TABLE not in tables:
        raise ConfigError(
            f"tracking.uri: {path} is an SQLite database but not an MLflow store (no {MLFLOW_TABLE!r} table; "
            f"it holds {', '.join(sorted(tables)[:4])}…); give the MLflow database, e.g. the study's mlflow.db"
        )
    if reading and not tables:
        raise ConfigError(f"tracking.uri: {path} is an empty database, not an MLflow store with studies")


def _check_database(uri: str, timeout_s: float) -> None:
    """One connection with a timeout (SQLAlchemy, which MLflow brings)."""
    import sqlalchemy  # only for database URIs: the SQLite path of `status` stays light

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout_s)})
        with engine.connect():
            pass
    except Exception as exc:  # any driver's error: the one-line reason is the user's to act on
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"tracking.uri: cannot connect to the database at {masked(uri)} ({reason})") from None
