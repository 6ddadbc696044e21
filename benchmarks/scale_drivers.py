"""The two ways ``study_scale.py`` drives a study: through Ray Tune, or fed without Ray.

Both open the study's MLflow store and parent run as ``fishtune run`` does, watch the store
with a :class:`~scale_probes.LagPoller`, drain fishtune's write queue at the end and count what
the store lacks; one row (a dict) per setting comes back.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scale_probes import CpuMeter, LagPoller, LoopProbe, TimedTracking, lost_points, summary
from scale_trial import TrialShape, epoch_result, synthetic_trainable

from study.mlflow_parent import open_parent_run
from study.spec import StudySpec
from study.store import Launch, StudyStore
from study.store_tables import SQLITE, ensure_tables

DRAIN_S = 600.0


def _open(spec: StudySpec, work: Path) -> tuple[StudyStore, str, str, Path]:
    store = StudyStore(work, spec.name)
    store.root.mkdir(parents=True, exist_ok=True)
    ensure_tables(spec.tracking.uri)
    _, exp, parent = open_parent_run(spec)
    return store, exp, parent, Path(spec.tracking.uri.removeprefix(SQLITE))


class ActorMemory(threading.Thread):
    """Every ``every_s``: the number and resident memory of the trial actors (``ray::ImplicitFunc``)."""

    def __init__(self, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.done = every_s, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            rss = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                        status = Path(f"/proc/{pid}/status").read_text()
                        rss.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
                except (OSError, IndexError):
                    continue
            self.samples.append((len(rss), sum(rss)))

    def result(self) -> dict[str, float]:
        self.done.set()
        if not self.samples:
            return {}
        count, total = max(self.samples, key=lambda s: s[0])
        return {"trial_actors": count, "trial_actors_rss_mib": total, "rss_per_actor_mib": total / max(1, count)}


def _finish(
    spec: StudySpec,
    tracking: TimedTracking,
    poller: LagPoller,
    meter: CpuMeter,
    db: Path,
    exp: str,
    shape: TrialShape,
) -> dict[str, Any]:
    began = time.monotonic()
    left = tracking.drain(DRAIN_S)
    drain_s = time.monotonic() - began
    thread = tracking.writes._thread
    cpu = meter.shares(thread.native_id if thread is not None else None)
    lags = poller.stop()
    tracking.writes.close()
    return {
        "concurrency": spec.search.max_concurrent,
        "trials": spec.search.num_samples,
        "mlflow_lag_s": summary(lags),
        "drain_s": drain_s,
        "left_unwritten": left,
        "callback_hook_s": summary(tracking.hook_s),
        **cpu,
        **lost_points(db, exp, shape, spec.search.num_samples),
    }


def run_tune(spec: StudySpec, work: Path, shape: TrialShape, interval_s: float) -> dict[str, Any]:
    """The study through fishtune's Tuner (``study.tuning.build_tuner``) with the synthetic trainable."""
    import ray
    from ray import tune

    from study import tuning
    from study.progress import ProgressPrinter
    from study.ray_runtime import WORKER_ENV

    store, exp, parent, db = _open(spec, work)
    concurrency = spec.search.max_concurrent
    barrier = store.root / "barrier"
    barrier.mkdir()
    poller = LagPoller(db)
    os.environ.update(WORKER_ENV)
    bench = str(Path(__file__).resolve().parent)
    env = {**WORKER_ENV, "PYTHONPATH": os.pathsep.join([bench, os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=spec.search.max_concurrent, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2, runtime_env={"env_vars": env})  # fmt: skip
    try:
        wrapped = tune.with_resources(
            tune.with_parameters(
                synthetic_trainable, shape=shape, interval_s=interval_s, barrier=str(barrier), wave=concurrency
            ),
            {"cpu": 1},
        )
        tuning.trainable = lambda _spec: wrapped  # the real Tuner, a trainable that only reports
        launch = Launch(1, "launch-1", store.default_results, spec.search.num_samples, spec.search.num_samples)
        probe, tracking = LoopProbe(), TimedTracking(spec.tracking.uri, exp, parent)
        progress = ProgressPrinter(list(spec.search.space), spec.search.num_samples, out=open(os.devnull, "w"))
        tuner = tuning.build_tuner(spec, store, launch, [probe, tracking, progress])
        memory = ActorMemory()
        memory.start()
        meter = CpuMeter()
        began = time.monotonic()
        grid = tuner.fit()
        fit_s = time.monotonic() - began
        row = _finish(spec, tracking, poller, meter, db, exp, shape)
    finally:
        ray.shutdown()
    reports = len(probe.delays)
    return {
        "mode": "tune",
        **row,
        "fit_s": fit_s,
        "errors": grid.num_errors,
        "reports": reports,
        "reports_per_s": reports / fit_s,
        "reporting_at_once": probe.most_reporting(interval_s),
        "tune_step_s": summary(probe.steps),
        "result_delivery_s": summary(probe.delays),
        **memory.result(),
    }


def run_feed(spec: StudySpec, work: Path, shape: TrialShape, interval_s: float) -> dict[str, Any]:
    """C simulated trials fed to fishtune's callback and searcher in this thread, without Ray."""
    from study.searcher import build_searcher
    from study.tracking import MlflowTracking

    store, exp, parent, db = _open(spec, work)
    poller = LagPoller(db)
    searcher = build_searcher(spec.search, spec.name, store.storage_url(spec.search.storage))
    tracking = TimedTracking(spec.tracking.uri, exp, parent)
    base = spec.trial.flat()
    concurrency, total = spec.search.max_concurrent, spec.search.num_samples
    due: list[tuple[float, int, int]] = []  # (when, trial number, epoch: 0 = start)
    trials: dict[int, Any] = {}
    started = time.time()
    for n in range(min(concurrency, total)):  # the first wave starts within one interval
        heapq.heappush(due, (started + interval_s * n / concurrency, n, 0))
    lateness, next_trial = [], min(concurrency, total)
    meter = CpuMeter()
    while due:
        when, n, epoch = heapq.heappop(due)
        time.sleep(max(0.0, when - time.time()))
        now = time.time()
        lateness.append(now - when)
        if epoch == 0:
            trials[n] = _start(searcher, tracking, base, n)
            heapq.heappush(due, (now + interval_s, n, 1))
            continue
        trial = trials[n]
        result = epoch_result(shape, epoch, float(trial.config["train.lr"]), now, interval_s)
        trial.last_result = {**result, "training_iteration": epoch, "node_ip": "127.0.0.1", "should_checkpoint": True}
        searcher.on_trial_result(trial.trial_id, trial.last_result)
        tracking.on_trial_result(0, [], trial, trial.last_result)
        tracking.on_checkpoint(0, [], trial, checkpoint=None)
        if epoch < shape.epochs:
            heapq.heappush(due, (when + interval_s, n, epoch + 1))
            continue
        searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        MlflowTracking.on_trial_complete(tracking, 0, [], trial)
        if next_trial < total:
            heapq.heappush(due, (now, next_trial, 0))
            next_trial += 1
    fed_s = time.time() - started
    row = _finish(spec, tracking, poller, meter, db, exp, shape)
    return {"mode": "feed", **row, "fit_s": fed_s, "event_lateness_s": summary(lateness),
            "reports_per_s": len(tracking.hook_s) / 2 / fed_s}  # fmt: skip


def _start(searcher: Any, tracking: TimedTracking, base: dict[str, Any], n: int) -> Any:
    trial_id = f"feed{n:05d}"
    suggested = searcher.suggest(trial_id)
    trial = SimpleNamespace(
        trial_id=trial_id,
        config={**base, **suggested},
        evaluated_params=suggested,
        last_result={},
        run_metadata=SimpleNamespace(num_failures=0),
    )
    tracking.on_trial_start(0, [], trial)
    return trial
