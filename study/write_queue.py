"""The driver's ordered MLflow write queue: enqueue without I/O, one writer thread, nothing lost.

Callers only enqueue (:meth:`WriteQueue.put` never touches the store). One background writer
thread stores the writes in order; a write that fails stays at the head and the writer pauses
(:data:`RETRY_PAUSE_S`) before retrying; a write the store refuses for good is logged and
dropped so that it does not hold back the rest.

One store call costs far more than one point in it (a SQLite ``log_batch`` of 20 points ≈ 20–30
ms, of 200 ≈ 50 ms: commits and MLflow's latest-metrics update), and hundreds of trials report
every second (``benchmarks/study_scale.py``). So the writer stores the head together with the
``batch`` writes of the same trial queued after it, up to the trial's next write of another
kind, as one ``log_batch`` within MLflow's limits (:func:`~study.mlflow_writes.merged`): each
trial's writes keep their order, and a writer that falls behind makes fewer, larger calls
instead of falling further behind. If the store refuses a merged call for good, its writes are stored one by one, so that
only the one at fault is dropped. On a local SQLite store the writer stores points and tags
with :mod:`study.sqlite_rows` instead of MLflow's ORM (a few µs a point instead of ≈ 0.3 ms).
The parent run's summary (rewritten after each finished trial, from every trial run) is the
one write that can be skipped: while a newer one is queued, it is stored at most every
:data:`SUMMARY_EVERY_S`, and the last one always (so while the writer is behind, the parent's
progress curves, ``trials_*`` and ``best_val_accuracy`` by finished trials, get a point at most
that often instead of one per trial). At the end, :meth:`WriteQueue.drain`
waits for the queue to empty, and :meth:`WriteQueue.spill` keeps what the store never took on
disk, for :meth:`WriteQueue.replay` by the next launch.

How long one request may block the writer is MLflow's choice: ``MLFLOW_HTTP_REQUEST_TIMEOUT``
and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` are read from the process environment at every HTTP
request (``mlflow/utils/rest_utils.py::http_request``, MLflow 3.17), with no per-client setting,
so the launcher sets short values for the whole driver process (the user's own values win;
``study.mlflow_parent.use_short_mlflow_retries``). A store that hangs delays only the writer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study.mlflow_writes import REFUSED_FOR_GOOD, ChildRuns, Write, fits_with, merged
from study.sqlite_rows import SqliteRows

log = logging.getLogger(__name__)

SUMMARY_EVERY_S = 30.0  # how stale the parent run's summary may be while a newer one is queued
RETRY_PAUSE_S = 10.0  # after a failed write, before the writer tries the store again
DRAIN_POLL_S = 2.0  # the same pause while :meth:`WriteQueue.drain` waits
REPLAY_WAIT_S = 30.0  # how long a replay waits for a store that takes nothing


class WriteQueue:
    """Ordered writes to the child runs (nested under ``parent_run_id``) of one experiment.

    ``client`` (tests): the client to write with, instead of one opened on ``tracking_uri``.
    Picklable (Tune pickles its callbacks): the copy has the queued writes and no thread.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        parent_run_id: str,
        *,
        client: MlflowClient | None = None,
        retry_pause_s: float = RETRY_PAUSE_S,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.retry_pause_s = retry_pause_s
        self.refused = 0  # writes the store refused for good (logged, dropped)
        self._client = client
        self._names: dict[str, str] = {}  # trial id → run label, to create the run when the store allows
        self._queue([])
        self._start_sync()

    def _queue(self, writes: list[Write]) -> None:
        self._pending: OrderedDict[int, Write] = OrderedDict()  # by number, in order; the head is in flight
        self._by_trial: dict[str, deque[int]] = {}  # trial id → its writes' numbers, in order
        self._count = 0  # writes numbered so far
        self._summaries = 0  # ``summary`` writes among them
        self._summary_at = time.monotonic()  # when the study's summary was last stored (or the queue made)
        self._append(writes)

    def _append(self, writes: tuple[Write, ...] | list[Write]) -> None:
        for write in writes:
            self._pending[self._count] = write
            self._by_trial.setdefault(write.trial_id, deque()).append(self._count)
            self._count += 1
            self._summaries += write.kind == "summary"

    def _start_sync(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._hurry = False  # a drain is waiting: retry every DRAIN_POLL_S, and now
        self._head_alone = False  # a merged call was refused for good: store the head by itself
        self._warned = False  # the user was told that the store is unreachable
        self._stored_at = time.monotonic()  # when the store last took a write

    def __getstate__(self) -> dict[str, Any]:
        with self._cond:
            keep = ("tracking_uri", "experiment", "parent_run_id", "retry_pause_s", "refused")
            return {k: getattr(self, k) for k in keep} | {
                "_client": None,
                "_pending": list(self._pending.values()),
                "_names": dict(self._names),
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        writes = state.pop("_pending")
        self.__dict__.update(state)
        self._queue(list(writes))
        self._start_sync()

    @property
    def pending(self) -> list[Write]:
        """What the store has not taken yet, in order (the head may be in flight)."""
        with self._cond:
            return list(self._pending.values())

    def name_run(self, trial_id: str, name: str) -> None:
        """The label (searched values) the trial's child run is named after if the writer has to create it."""
        with self._cond:
            self._names.setdefault(trial_id, name)

    def put(self, *writes: Write) -> None:
        """Queue ``writes`` after everything queued so far; returns at once, without I/O."""
        with self._cond:
            if self._stopped:
                raise RuntimeError(
                    f"the MLflow write queue for {self.tracking_uri} is stopped; {len(writes)} write(s) refused"
                )
            self._append(writes)
            self._start_writer()

    def _start_writer(self) -> None:
        if self._thread is None and self._pending:
            self._thread = threading.Thread(target=self._write_all, name="fishtune-mlflow-writer", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def drain(self, timeout_s: float) -> int:
        """Wait until every queued write is stored, or until the store has taken nothing for
        ``timeout_s`` (a store that keeps taking writes is waited for). Returns how many are
        left; if any, the writer is stopped, so that :attr:`pending` is what :meth:`spill` keeps."""
        with self._cond:
            self._hurry = True
            if not self._stopped:
                self._start_writer()
            if self._pending and self._warned:
                log.warning(
                    "waiting up to %.0f s for the MLflow store to take %d buffered write(s)",
                    timeout_s,
                    len(self._pending),
                )
            started = time.monotonic()
            while self._pending and not self._stopped:
                left_s = max(started, self._stored_at) + timeout_s - time.monotonic()
                if left_s <= 0:
                    break
                self._cond.wait(left_s)
            self._hurry = False
            if self._pending:
                self._stop()
            return len(self._pending)

    def spill(self, path: Path) -> int:
        """Stop the writer and append what the store never took to ``path`` (JSON lines), for
        :meth:`replay`. Returns how many writes were kept."""
        with self._cond:
            self._stop()
            writes = list(self._pending.values())
            self._queue([])
            if writes:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    for write in writes:
                        name = {write.trial_id: self._names.get(write.trial_id, write.trial_id)}
                        f.write(json.dumps({"runs": name, "write": write.to_json()}) + "\n")
            return len(writes)

    def replay(self, path: Path, timeout_s: float = REPLAY_WAIT_S) -> int:
        """Queue the writes an earlier launch spilled to ``path`` and :meth:`drain` them; the
        file is removed once all of them are stored, else kept whole. Returns how many are left."""
        if not path.is_file():
            return 0
        writes = []
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            for trial_id, name in entry["runs"].items():
                self.name_run(trial_id, name)
            writes.append(Write.from_json(entry["write"]))
        self.put(*writes)
        left = self.drain(timeout_s)
        if not left:
            path.unlink()
        return left

    def close(self) -> None:
        """Stop the writer after its current request; what is queued stays in :attr:`pending`."""
        with self._cond:
            self._stop()

    def _stop(self) -> None:
        self._stopped = True
        self._cond.notify_all()

    def _write_all(self) -> None:
        """The writer thread: store the head of the queue until stopped."""
        rows = SqliteRows.open(self.tracking_uri) if self._client is None else None
        runs = ChildRuns(self._client or MlflowClient(self.tracking_uri), self.experiment, self.parent_run_id, rows)
        try:
            self._store_all(runs)
        finally:
            if rows is not None:
                rows.close()

    def _store_all(self, runs: ChildRuns) -> None:
        while (head := self._next()) is not None:
            group, writes, label = head
            try:
                runs.apply(merged(writes) if len(writes) > 1 else writes[0], label)
            except MlflowException as exc:
                if exc.error_code not in REFUSED_FOR_GOOD:
                    self._unreachable(exc)
                    continue
                if len(group) > 1:  # which of them? the head goes alone next, then the rest merged again
                    self._alone()
                    continue
                log.error("MLflow refused %s; it is not retried: %s", writes[0].describe(), str(exc)[:300])
                self._done(group, refused=1)
            except Exception as exc:  # the store is down or hangs: keep everything, retry later
                self._unreachable(exc)
            else:
                self._done(group, refused=0)

    def _next(self) -> tuple[list[int], list[Write], str] | None:
        """The writes to store next, their numbers and their run's label: the head, and its
        trial's ``batch`` writes that follow it and fit in one call; None once
        stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._stopped)
            if self._stopped:
                return None
            head, write = next(iter(self._pending.items()))
            while self._superseded(write):
                self._pop([head])
                head, write = next(iter(self._pending.items()))
            group = [head]
            if write.kind == "batch" and not self._head_alone:
                group, size = [], (0, 0, 0)
                for number in self._by_trial[write.trial_id]:  # the head first: it is the trial's oldest
                    later = self._pending[number]
                    if later.kind != "batch" or not fits_with(size, later):
                        break
                    size = (size[0] + len(later.params), size[1] + len(later.metrics), size[2] + len(later.tags))
                    group.append(number)
            self._head_alone = False
            return group, [self._pending[n] for n in group], self._names.get(write.trial_id, write.trial_id)

    def _superseded(self, write: Write) -> bool:
        """A ``summary`` write with a newer one queued behind it, while the stored summary is
        younger than :data:`SUMMARY_EVERY_S`: the newer one covers it. A summary reads every
        trial run of the study, so one per finished trial would cost the writer time that
        grows with the study (O(trials²) in all)."""
        recent = time.monotonic() - self._summary_at < SUMMARY_EVERY_S
        return write.kind == "summary" and self._summaries > 1 and recent

    def _alone(self) -> None:
        with self._cond:
            self._head_alone = True

    def _done(self, group: list[int], refused: int) -> None:
        """The writes numbered ``group`` are stored, or (``refused``) refused for good."""
        with self._cond:
            if self._stopped:  # spilled meanwhile, these writes included: a replay repeats them harmlessly
                return
            if any(self._pending[n].kind == "summary" for n in group):
                self._summary_at = time.monotonic()
            self._pop(group)
            self.refused += refused
            self._stored_at = time.monotonic()
            if not self._pending and self._warned:
                log.warning("MLflow store reachable again; every buffered write is stored")
                self._warned = False
            self._cond.notify_all()

    def _pop(self, group: list[int]) -> None:
        """Take the writes numbered ``group`` off the queue (the caller holds the lock)."""
        for number in group:
            write = self._pending.pop(number)
            self._by_trial[write.trial_id].popleft()
            if not self._by_trial[write.trial_id]:
                del self._by_trial[write.trial_id]
            self._summaries -= write.kind == "summary"

    def _unreachable(self, exc: Exception) -> None:
        with self._cond:
            if not self._warned:
                log.warning(
                    "MLflow store %s unreachable (%s: %s); buffering %d write(s) and retrying",
                    self.tracking_uri,
                    type(exc).__name__,
                    str(exc)[:200],
                    len(self._pending),
                )
                self._warned = True
            started = time.monotonic()
            while not self._stopped:  # new writes do not cut the pause short; a drain does
                pause_s = DRAIN_POLL_S if self._hurry else self.retry_pause_s
                left_s = started + pause_s - time.monotonic()
                if left_s <= 0:
                    return
                self._cond.wait(left_s)
