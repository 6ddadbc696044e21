"""A trial's metric points, params and tags written straight into a local SQLite MLflow store.

Why: MLflow's ``SqlAlchemyStore.log_batch`` spends 0.25–0.4 ms of CPU a point in its ORM (an
object per point, each point validated twice, the latest-metrics merge in Python, a session
and a commit per part of the batch), and 256 trials reporting every second log ≈ 5,000
points a second: more than the one core the driver's writer has (``benchmarks/README.md``).
The same rows written with :mod:`sqlite3` cost a few µs a point and one commit a call.

What ``log_batch`` does that :meth:`SqliteRows.log` does too: one row per distinct point
(``INSERT OR IGNORE`` on MLflow's primary key, so a repeated write stores nothing twice),
NaN stored as 0 with ``is_nan``, ±inf as ±the largest float, ``latest_metrics`` kept at the
point with the largest (step, timestamp, value), tags set to their last value, a param stored
once (the same value again is no change), and no write to a run that is not active or whose
param would change (:meth:`~SqliteRows.log` returns False and the caller goes through MLflow,
which raises its own error). What it leaves to MLflow (:meth:`~SqliteRows.takes` is False):
``mlflow.*`` tags (MLflow treats some specially), metrics of a logged model (fishtune's carry
no model id), keys or values MLflow would refuse or truncate. :meth:`SqliteRows.find_run`
is ``search_runs`` for one tag's value, without MLflow's search parser and ORM.

The tables are MLflow's: :meth:`SqliteRows.open` checks their columns and returns None when they
differ (another MLflow version: every write goes through MLflow again), and
``tests/study/test_sqlite_rows.py`` writes the same batches both ways and compares what
``MlflowClient`` reads back, so an upgrade that changes their meaning fails there.
"""

from __future__ import annotations

import math
import re
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from study.store_tables import SQLITE

# The columns this module writes, as MLflow 3.17's tables have them (PRAGMA table_info order).
COLUMNS = {
    "metrics": ("key", "value", "timestamp", "run_uuid", "step", "is_nan"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "tags": ("key", "value", "run_uuid"),
    "params": ("key", "value", "run_uuid"),
    "runs": ("run_uuid", "lifecycle_stage", "experiment_id", "start_time"),  # read only: a subset of its columns
}
KEY = re.compile(r"^[\w\-./ :]{1,250}$")  # MLflow's allowed metric and tag names, and their length limit
MAX_TAG_VALUE = 8000  # MLflow's limit on a tag's value
MAX_PARAM_VALUE = 6000  # … and on a param's (longer ones MLflow refuses or truncates)
LOCK_WAIT_S = 30.0  # how long a write waits for another connection's lock (MLflow's, a reader's)

INSERT_POINT = "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)"
UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
    "step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > (latest_metrics.step, latest_metrics.timestamp, "
    "latest_metrics.value)"
)
INSERT_PARAM = "INSERT OR IGNORE INTO params (key, value, run_uuid) VALUES (?, ?, ?)"
# search_runs([experiment], "tags.`KEY` = 'VALUE'", max_results=1): active runs, newest first.
FIND_RUN = (
    "SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
    "WHERE runs.experiment_id = ? AND runs.lifecycle_stage = 'active' AND tags.key = ? AND tags.value = ? "
    "ORDER BY runs.start_time DESC, runs.run_uuid LIMIT 1"
)
UPSERT_TAG = "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value"


def stored_value(value: float) -> tuple[float, int]:
    """(value, is_nan) as MLflow stores a metric value: NaN as 0, ±inf as ±the largest float."""
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return math.copysign(sys.float_info.max, value), 0
    return value, 0


class SqliteRows:
    """One connection to a SQLite MLflow store, for the thread that made it."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
        # In WAL mode (study.store_tables) a commit then needs no fsync; the WAL is synced at
        # each checkpoint, so a crash of the machine, not of the driver, can lose the last ones.
        self._con.execute("PRAGMA synchronous=NORMAL")

    @classmethod
    def open(cls, tracking_uri: str) -> SqliteRows | None:
        """The store's rows, if ``tracking_uri`` is a SQLite file whose tables are as expected; else None."""
        if not tracking_uri.startswith(SQLITE) or "?" in tracking_uri:
            return None
        path = Path(tracking_uri.removeprefix(SQLITE))
        if not path.is_file():
            return None
        rows = cls(path)
        try:
            expected = rows._tables_as_expected()
        except sqlite3.Error:  # not a database, or locked for longer than LOCK_WAIT_S: MLflow's way then
            expected = False
        if not expected:
            rows.close()
            return None
        return rows

    def _tables_as_expected(self) -> bool:
        for table, columns in COLUMNS.items():
            have = [row[1] for row in self._con.execute(f"PRAGMA table_info({table})")]
            if not set(columns) <= set(have) or (table != "runs" and len(have) != len(columns)):
                return False
        return True

    @staticmethod
    def takes(metrics: Sequence[Metric], tags: Sequence[RunTag], params: Sequence[Param] = ()) -> bool:
        """Whether these points, tags and params are ones :meth:`log` writes as MLflow would."""
        return (
            all(KEY.match(p.key) and isinstance(p.value, str) and len(p.value) <= MAX_PARAM_VALUE for p in params)
            and len({p.key for p in params}) == len(params)
            and all(
                m.model_id is None
                and m.dataset_name is None
                and KEY.match(m.key)
                and isinstance(m.value, (int, float))
                and isinstance(m.timestamp, int)
                and isinstance(m.step, int)
                for m in metrics
            )
            and all(
                KEY.match(t.key) and not t.key.startswith("mlflow.") and len(str(t.value)) <= MAX_TAG_VALUE
                for t in tags
            )
        )

    def log(self, run_id: str, metrics: Sequence[Metric], tags: Sequence[RunTag], params: Sequence[Param] = ()) -> bool:
        """Store the points, tags and params on the run in one transaction; False (nothing
        stored) if the run is not an active run of the store or one of its params would change.
        Raises :class:`sqlite3.Error` as sqlite3 does."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade from a read lock that could deadlock
        try:
            stage = con.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            if stage is None or stage[0] != "active" or self._params_would_change(run_id, params):
                con.execute("ROLLBACK")
                return False
            con.executemany(INSERT_PARAM, [(p.key, p.value, run_id) for p in params])
            points = []
            for m in metrics:
                value, is_nan = stored_value(float(m.value))
                points.append((m.key, value, m.timestamp, run_id, m.step, is_nan))
            con.executemany(INSERT_POINT, points)
            con.executemany(UPSERT_LATEST, [(k, v, t, s, n, r) for k, v, t, r, s, n in points])
            con.executemany(UPSERT_TAG, [(t.key, str(t.value), run_id) for t in tags])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return True

    def _params_would_change(self, run_id: str, params: Sequence[Param]) -> bool:
        if not params:
            return False
        stored = dict(self._con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
        return any(p.key in stored and stored[p.key] != p.value for p in params)

    def find_run(self, experiment_id: str, key: str, value: str) -> str | None:
        """The newest active run of the experiment whose tag ``key`` has ``value``, or None."""
        found = self._con.execute(FIND_RUN, (int(experiment_id), key, value)).fetchone()
        return None if found is None else str(found[0])

    def histories(self, run_id: str) -> dict[str, dict[int, float]]:
        """Every metric of the run: step → value, in ``get_metric_history``'s order (timestamp,
        step, value), so that a step logged twice keeps the value MLflow lists last; NaN as NaN."""
        found: dict[str, dict[int, float]] = {}
        query = "SELECT key, step, value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY timestamp, step, value"
        for key, step, value, is_nan in self._con.execute(query, (run_id,)):
            found.setdefault(key, {})[step] = math.nan if is_nan else value
        return found

    def close(self) -> None:
        self._con.close()
