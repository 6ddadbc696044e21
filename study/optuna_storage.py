"""The study's Optuna storage: an RDB (SQLAlchemy) database or a journal file, checked before Ray starts.

By default each study folder holds its own SQLite file; ``search.storage`` may name a shared
database (PostgreSQL: the ``postgres`` extra) or Optuna's journal storage on a log file, which
stays fast at hundreds of running trials and thousands of finished ones (``benchmarks/README.md``). A database server can be down, refuse the login
or lack its driver: one sentence before anything starts (exit 2). A shared database can also
hold a study of the same name from another study folder: a new study does not join it, since
those trials are not this folder's (and after a killed driver the searcher would take their
RUNNING trials for its own, :mod:`study.searcher`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend

from study.spec_core import JOURNAL, JOURNAL_PREFIX, masked
from trainables.schema import ConfigError

INSTALL_HINT = "pip install 'fishtune[postgres]'"


class SqliteStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage on a SQLite file in write-ahead-log mode, ``synchronous=NORMAL``.

    WAL: a commit appends to ``optuna.db-wal`` instead of going through a rollback journal, and
    with ``synchronous=NORMAL`` it is not fsynced (the WAL is, at each checkpoint); readers
    (``fishtune status``, the dashboard) do not block the driver's writes. Every intermediate
    value a trial reports is one commit on Tune's event loop, so at hundreds of trials
    reporting each second the commit is what the loop waits for (``benchmarks/README.md``).

    Safe on one host: a killed driver loses no committed trial (the next open replays the WAL
    file); a power loss or OS crash can lose the last commits but does not corrupt the file,
    and a resume already copes with an Optuna storage older or newer than Tune's saved state
    (:mod:`study.searcher`). Every process that opens the file must run on the machine that
    holds it (SQLite's WAL index is shared memory): no reading a study folder over a network
    file system while a driver runs, and a copy of the folder takes ``optuna.db-wal`` along.
    The mode is kept in the file; the per-connection setting is made again after unpickling
    (Tune saves the searcher with its storage).
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._tune_connections()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tune_connections()

    def _tune_connections(self) -> None:
        sqlalchemy.event.listen(self.engine, "connect", _normal_sync)
        self.engine.dispose()  # the connections Optuna opened so far were made without it
        with self.engine.connect() as con:
            con.exec_driver_sql("PRAGMA journal_mode=WAL")


def _normal_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's JournalStorage on the log file ``path``, created if absent.

    Every process that opens it replays the log into memory once and then reads only the lines
    appended since (the RDB storage re-reads every running trial, with its intermediate values,
    at each suggest). Appends take a lock file beside the log, so readers (``fishtune status``,
    the dashboard) and a resumed driver are safe on one host; Tune pickles the storage with the
    searcher, and the unpickled one replays the log again.
    """
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage behind a resolved ``search.storage`` URL (``StudyStore.storage_url``)."""
    if url.startswith(JOURNAL_PREFIX):
        return journal_storage(Path(url.removeprefix(JOURNAL_PREFIX)))
    return rdb_storage(url)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite"):
        return SqliteStorage(url)
    # A server may close a connection left idle between two trials of an hours-long study
    # (idle timeouts, a restart): pre-ping replaces it instead of failing the next tell().
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def check_storage(url: str | None, study_name: str, new_study: bool) -> None:
    """Open the spec's storage once (``None`` or ``journal``: the study folder's own file,
    nothing to check); for a ``new_study``, refuse a storage that already holds an Optuna study
    of its name."""
    if url is None or url == JOURNAL:
        return
    try:
        storage = open_storage(url)
    except ImportError:
        hint = INSTALL_HINT if url.startswith("postgresql") else "install the SQLAlchemy driver for its database"
        raise ConfigError(f"search.storage: {masked(url)} needs its database driver; {hint}") from None
    except Exception as exc:  # SQLAlchemy's errors: the server is down, refuses the login, no such database
        cause = getattr(exc, "orig", None) or exc  # the driver's own error, without SQLAlchemy's wrapping
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        raise ConfigError(
            f"search.storage: cannot open the Optuna storage {masked(url)} ({type(cause).__name__}: {masked(first)[:300]})"
        ) from exc
    try:
        exists = study_name in optuna.get_all_study_names(storage)
    finally:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()
    if new_study and exists:
        raise ConfigError(
            f"search.storage: {masked(url)} already holds an Optuna study {study_name!r} that this study folder "
            "did not start; pass --storage DIR where it was run, or start this one with --new-study NAME"
        )
