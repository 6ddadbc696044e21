"""Studies starting at once on one new SQLite MLflow store: the tables are made once, nobody dies."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def test_three_first_clients_at_once_all_get_the_tables(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'project.db'}"
    script = f"from study.store_tables import ensure_tables; ensure_tables({uri!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert MlflowClient(uri).get_experiment_by_name("Default") is not None
    with sqlite3.connect(tmp_path / "new" / "project.db") as con:  # kept in the file: every later connection
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
