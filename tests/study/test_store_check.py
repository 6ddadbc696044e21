"""The tracking URI is checked before anything starts: one sentence, no writes, no minutes of retries."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from study.cli import main
from study.spec_core import Tracking
from study.store_check import check_tracking_store
from trainables.schema import ConfigError


def optuna_like(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
    return path


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("reading", [True, False])
def test_an_sqlite_database_that_is_not_an_mlflow_store_is_refused_and_left_alone(
    tmp_path: Path, reading: bool
) -> None:
    """`analyze` on an Optuna database added MLflow's tables to it."""
    path = optuna_like(tmp_path / "optuna.db")
    with pytest.raises(ConfigError, match=r"is an SQLite database but not an MLflow store .* it holds studies"):
        check_tracking_store(f"sqlite:///{path}", reading=reading)
    assert tables(path) == {"studies"}


def test_analyze_on_a_foreign_database_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = optuna_like(tmp_path / "optuna.db")
    assert main(["analyze", "s", "--tracking-uri", f"sqlite:///{path}", "--out", str(tmp_path / "r")]) == 2
    assert "not an MLflow store" in capsys.readouterr().err and tables(path) == {"studies"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not a database"), "is not an SQLite database"),
        (lambda p: p.mkdir(), "is a folder; name the SQLite file"),
        (lambda p: None, "no MLflow database at"),
    ],
    ids=["text file", "folder", "missing"],
)
def test_a_read_needs_an_existing_sqlite_store(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mlflow.db"
    make(path)
    with pytest.raises(ConfigError, match=message):
        check_tracking_store(f"sqlite:///{path}", reading=True)


def test_a_run_may_create_its_sqlite_store(tmp_path: Path) -> None:
    check_tracking_store(f"sqlite:///{tmp_path / 'new.db'}", reading=False)
    assert not (tmp_path / "new.db").exists()  # checked, not created


def test_an_unreachable_database_is_refused_in_seconds() -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^tracking.uri: cannot connect to the database at postgresql://"):
        check_tracking_store("postgresql://fishtune@127.0.0.1:9/none", reading=False, timeout_s=2)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("uri", ["sqlite://mlflow.db", "sqlite:///", "sqlite:///runs/"])
def test_a_malformed_sqlite_uri_is_refused_in_the_spec(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"^tracking.uri: must be sqlite:/// then the database file"):
        Tracking(uri=uri)
