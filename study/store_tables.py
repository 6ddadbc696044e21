"""MLflow's tables in a new SQLite store, created by one study at a time.

The first client of a new SQLite store creates its tables (MLflow's migrations, ≈3 s); two
studies starting at once on one new store (one store per project is a common habit) both run
them, and one dies ("table … already exists", the alembic race). Here the first client is
made under an exclusive ``flock`` on the database file itself (SQLite's own locks are ``fcntl``
locks, independent of it): the second study waits, then finds the tables made and skips them.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"


def ensure_tables(tracking_uri: str) -> None:
    if not tracking_uri.startswith(SQLITE):
        return  # a server makes its own tables; other databases are not created by a client
    path = Path(tracking_uri.removeprefix(SQLITE))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as db:  # an empty file is a new SQLite database
        fcntl.flock(db, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(db, fcntl.LOCK_UN)
