"""What ``study_scale.py`` measures, each probe in one place.

- :class:`LoopProbe`: a Tune callback (first in the list) timing the event loop: each step
  (``on_step_begin`` → ``on_step_end``) and, per result, the delay from the trial's
  ``tune.report`` to the driver's ``on_trial_result`` (Tune's own queueing of results).
- :class:`TimedTracking`: fishtune's MLflow callback, timing how long its hooks hold the loop.
- :class:`LagPoller`: a separate process that reads the SQLite MLflow store every
  ``poll_s`` and notes when each trial's ``val_accuracy`` point of each epoch first becomes
  readable; lag = that time − the point's timestamp (the trial's clock at ``tune.report``).
- :func:`thread_cpu_s` / :func:`system_busy`: CPU time of one driver thread and of the machine.
- :func:`lost_points`: what a finished study lacks in MLflow against what its trials reported.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from scale_trial import REPORTED_AT, TrialShape

from study.tracking import MlflowTracking

TICKS = os.sysconf("SC_CLK_TCK")


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, median, p95, max of ``values`` (None when empty)."""
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


class LoopProbe(Callback):
    """Tune's event loop, seen from a callback: step durations and result delivery delays."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.delays: list[float] = []
        self.reported: list[tuple[float, str]] = []  # (when the trial reported, its id)
        self._began = 0.0

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._began = time.perf_counter()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.steps.append(time.perf_counter() - self._began)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if REPORTED_AT in result:
            self.delays.append(time.time() - result[REPORTED_AT])
            self.reported.append((result[REPORTED_AT], trial.trial_id))

    def most_reporting(self, window_s: float) -> int:
        """The most distinct trials that reported within one ``window_s`` window (trials running at once)."""
        reported = sorted(self.reported)
        most, lo = 0, 0
        for hi in range(len(reported)):
            while reported[hi][0] - reported[lo][0] >= window_s * 1.5:
                lo += 1
            most = max(most, len({trial for _, trial in reported[lo : hi + 1]}))
        return most


class TimedTracking(MlflowTracking):
    """fishtune's MLflow callback, with the time each of its hooks holds Tune's loop."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.hook_s: list[float] = []

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        super().on_trial_result(*args, **kwargs)
        self.hook_s.append(time.perf_counter() - began)

    def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        super().on_checkpoint(*args, **kwargs)
        self.hook_s.append(time.perf_counter() - began)


def _poll(db: str, poll_s: float, stop: Any, out: Any) -> None:
    seen: dict[tuple[str, int], float] = {}
    lags: list[float] = []
    con: sqlite3.Connection | None = None
    while True:
        last = stop.is_set()
        try:
            con = con or sqlite3.connect(db, timeout=30)  # only reads (a mode=ro reader broke MLflow's writes)
            rows = con.execute("SELECT run_uuid, step, timestamp FROM metrics WHERE key = 'val_accuracy'").fetchall()
        except sqlite3.OperationalError:  # the store is not created yet
            rows = []
        now = time.time()
        for run, step, stamp in rows:
            if (run, step) not in seen:
                seen[(run, step)] = now
                lags.append(now - stamp / 1000)
        if last:
            break
        time.sleep(poll_s)
    out.put(lags)


class LagPoller:
    """Report → readable-in-MLflow lag of every epoch's ``val_accuracy`` point, from outside the driver."""

    def __init__(self, db: Path, poll_s: float = 0.5) -> None:
        ctx = mp.get_context("spawn")  # not forked from a process that runs Ray
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._process = ctx.Process(target=_poll, args=(str(db), poll_s, self._stop, self._out), daemon=True)
        self._process.start()

    def stop(self) -> list[float]:
        self._stop.set()
        lags: list[float] = self._out.get(timeout=120)
        self._process.join(timeout=30)
        return lags


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


class CpuMeter:
    """CPU shares over an interval: the driver process, its main thread, the MLflow writer, the machine."""

    def __init__(self) -> None:
        self._main = threading.main_thread().native_id or 0
        self._began = (time.monotonic(), process_cpu_s(), thread_cpu_s(self._main), *system_busy())

    def shares(self, writer_native_id: int | None, writer_cpu_at_start: float = 0.0) -> dict[str, float]:
        wall, proc, main, busy, total = self._began
        wall_s = time.monotonic() - wall
        now_busy, now_total = system_busy()
        writer = thread_cpu_s(writer_native_id) - writer_cpu_at_start if writer_native_id else 0.0
        return {
            "wall_s": wall_s,
            "driver_cpu_share": (process_cpu_s() - proc) / wall_s,  # of one core
            "main_thread_cpu_share": (thread_cpu_s(self._main) - main) / wall_s,
            "writer_thread_cpu_share": writer / wall_s,
            "machine_busy_share": (now_busy - busy) / max(1e-9, now_total - total),  # of all cores
        }


def lost_points(db: Path, experiment_id: str, shape: TrialShape, trials: int) -> dict[str, int]:
    """Runs and metric points missing from the store, against ``trials`` trials of ``shape``."""
    expected = shape.expected_points()
    con = sqlite3.connect(db)
    runs = [
        r
        for (r,) in con.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = ? AND t.key = 'fishtune.role' AND t.value = 'trial'",
            (experiment_id,),
        )
    ]
    got: dict[str, Counter[str]] = {r: Counter() for r in runs}
    for run, key, count in con.execute("SELECT run_uuid, key, COUNT(*) FROM metrics GROUP BY run_uuid, key"):
        if run in got:
            got[run][key] = count
    finished = con.execute(
        f"SELECT COUNT(*) FROM runs WHERE status = 'FINISHED' AND run_uuid IN ({','.join('?' * len(runs))})", runs
    ).fetchone()[0]
    con.close()
    missing = sum(max(0, n - counts[key]) for counts in got.values() for key, n in expected.items())
    missing += (trials - len(runs)) * sum(expected.values())
    return {
        "runs": len(runs),
        "runs_finished": finished,
        "points_expected": trials * sum(expected.values()),
        "points_lost": missing,
    }
