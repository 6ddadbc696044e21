"""Launch, extend and resume a study on Ray Tune with Optuna and MLflow.

Each ``fishtune run`` of a study is one *launch*: a Tune experiment ``launch-<n>`` that runs
the trials still missing to reach ``search.num_samples``, against the study's persistent
Optuna storage (so the sampler sees every earlier trial). ``fishtune resume`` restores the last
unfinished launch with ``Tuner.restore``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler

import trainables
from study import exit_codes
from study.cluster import check_resources, check_results_shared
from study.mlflow_study import experiment_id, parent_run
from study.options import RAY_JOB_ENV, LaunchOptions
from study.progress import ProgressPrinter
from study.searcher import build_searcher
from study.spec import StudySpec
from study.status import print_summary
from study.store import Launch, StudyStore
from study.tracking import MlflowTracking
from trainables.config import SEEDS_KEY
from trainables.data import ensure_available
from trainables.schema import ConfigError
from trainables.train import fishtune_trainable

log = logging.getLogger(__name__)

WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# Retries of a trial from its last checkpoint after a lost worker or node, or a transient error
# (trainables/train.py); preempted nodes do not count, errors in the trial's code are not retried.
WORKER_RUNTIME_ENV: dict[str, Any] = {"env_vars": WORKER_ENV}
MAX_FAILURES = 3
# The queue in study/tracking.py retries failed writes; MLflow's own client would block the
# driver for minutes per call (7 retries with exponential backoff) while a server is down.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    message: str


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use Ray if this process already initialised it; else start (or join) and shut it down."""
    os.environ.update(WORKER_ENV)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; ProgressPrinter prints
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = dict(runtime_env=WORKER_RUNTIME_ENV, log_to_driver=False, configure_logging=False)
    if address is None:
        # "local": a new Ray even where `ray start` left an address behind (ray.init() would join it)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    else:
        if RAY_JOB_ENV not in os.environ:  # a Ray job's working_dir already ships the code
            # Other nodes import the trainable from this copy of `trainables`, not from
            # whatever version their image has.
            kwargs["runtime_env"] = {**WORKER_RUNTIME_ENV, "py_modules": [str(Path(trainables.__file__).parent)]}
        ray.init(address=address, **kwargs)
    # Ray's core worker installs a SIGTERM handler that aborts the driver; take SIGTERM back so
    # that it stops the study like Ctrl-C does (Tune saves its state, exit 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()


def replay_unwritten(spec: StudySpec, store: StudyStore, client: MlflowClient, exp: str, parent: str) -> None:
    """Write what an earlier launch could not store in MLflow (kept in the study folder)."""
    if not store.unwritten_path.is_file():
        return
    left = MlflowTracking(spec.tracking.uri, exp, parent).replay(store.unwritten_path)
    if left:
        raise ConfigError(
            f"tracking.uri: the MLflow store {spec.tracking.uri} still does not take the {left} write(s) kept in "
            f"{store.unwritten_path}; check the store, or delete that file to give them up"
        )
    print(f"study {spec.name}: wrote the MLflow data an earlier launch had kept in {store.unwritten_path}", flush=True)
    launches = store.launches()
    if launches and launches[-1].finished:
        _close_parent(client, parent, RunStatus.to_string(RunStatus.FINISHED))


def prepare_data(spec: StudySpec) -> None:
    """Download and verify every data set the study can use, once, on the driver: an offline
    machine gets one clear error (exit 2) before anything starts, not failing trials. On a
    multi-node cluster each node still needs ``data.cache_dir`` shared or its own download."""
    domain = spec.search.searched.get("data.name")
    names = {str(v) for v in domain.values} if domain is not None else {spec.trial.data.name}
    for name in sorted(names):
        ensure_available(name, spec.trial.data.cache_dir)


def _replay_without_launch(spec: StudySpec, store: StudyStore) -> None:
    if store.unwritten_path.is_file():
        check_reachable(spec.tracking.uri)
        client, exp, parent = open_parent_run(spec)
        replay_unwritten(spec, store, client, exp, parent)


def versions() -> dict[str, str]:
    out = {name: metadata.version(name) for name in ("torch", "ray", "optuna", "mlflow")}
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_parent_run(spec: StudySpec) -> tuple[MlflowClient, str, str]:
    """Connect to the tracking store (a user error if unreachable) and get the parent run."""
    client = MlflowClient(spec.tracking.uri)
    try:
        exp = experiment_id(client, spec)
        run_id = parent_run(client, spec, versions())
    except Exception as exc:  # any failure to open the store is the user's URI or server
        raise ConfigError(
            f"tracking.uri: cannot open the MLflow store {spec.tracking.uri} ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    return client, exp, run_id


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """One quick request to an HTTP tracking server: MLflow's own client retries for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:  # it answered: reachable (an auth proxy may refuse /health)
        if exc.code >= 500:
            raise ConfigError(f"tracking.uri: the MLflow server at {uri} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tracking.uri: cannot reach the MLflow server at {uri} ({exc})") from None


def param_space(spec: StudySpec) -> dict[str, object]:
    space: dict[str, object] = dict(spec.trial.flat())
    if spec.search.seeds:
        space[SEEDS_KEY] = list(spec.search.seeds)
    return space


def trainable(spec: StudySpec) -> Callable[..., Any]:
    return tune.with_resources(fishtune_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def use_short_mlflow_retries() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def start_launch(spec: StudySpec, store: StudyStore, options: LaunchOptions) -> Outcome:
    use_short_mlflow_retries()
    launches = store.launches()
    if launches and not launches[-1].finished:
        raise ConfigError(
            f"study {spec.name!r} has an unfinished launch; finish it with `fishtune resume {spec.name}` first"
        )
    done = launches[-1].total_samples if launches else 0
    todo = spec.search.num_samples - done
    if todo <= 0:
        _replay_without_launch(spec, store)
        return Outcome(
            exit_codes.OK, f"study {spec.name!r} already has {done} trials; raise --num-samples to extend it"
        )
    check_reachable(spec.tracking.uri)  # an unreachable store is refused before Ray starts
    prepare_data(spec)
    with ray_session(options.address):
        arithmetic = check_resources(spec, options.address, options.pending_timeout_s)
        results = options.results or store.default_results
        if options.address is not None:
            check_results_shared(results)
        client, exp, parent = open_parent_run(spec)  # MLflow is written only once every check passed
        replay_unwritten(spec, store, client, exp, parent)
        store.save_spec(spec)
        index = len(launches) + 1
        launch = Launch(index, f"launch-{index}", results, spec.search.num_samples, todo)
        store.save_launches([*launches, launch])
        client.set_tag(
            parent,
            f"fishtune.launch.{index}",
            f"num_samples={todo} total={spec.search.num_samples} max_concurrent={spec.search.max_concurrent} commit={_git_commit()}",
        )
        print(arithmetic, flush=True)
        print(
            f"study {spec.name}: running {todo} trial(s) (total {spec.search.num_samples}); MLflow: {spec.tracking.uri}",
            flush=True,
        )
        tuner = tune.Tuner(
            trainable(spec),
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(spec.search, spec.name, store.optuna_url),
                scheduler=_scheduler(spec),
                num_samples=todo,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=launch.experiment,
                storage_path=launch.results,
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
                callbacks=[
                    MlflowTracking(spec.tracking.uri, exp, parent),
                    ProgressPrinter(list(spec.search.space), spec.search.num_samples, already_done=done),
                ],
            ),
        )
        return _finish(spec, store, client, parent, tuner, options.mlflow_wait_s)


def resume_launch(spec: StudySpec, store: StudyStore, options: LaunchOptions) -> Outcome:
    use_short_mlflow_retries()
    launches = store.launches()
    if not launches or launches[-1].finished:
        _replay_without_launch(spec, store)
        return Outcome(
            exit_codes.OK,
            f"study {spec.name!r} has nothing to resume; extend it with `fishtune run SPEC --num-samples N`",
        )
    launch = launches[-1]
    path = f"{launch.results.rstrip('/')}/{launch.experiment}"
    check_reachable(spec.tracking.uri)
    prepare_data(spec)
    with ray_session(options.address):
        print(check_resources(spec, options.address, options.pending_timeout_s), flush=True)
        if options.address is not None:
            check_results_shared(launch.results)
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"study {spec.name!r}: no Tune experiment state at {path} to resume")
        client, exp, parent = open_parent_run(spec)
        replay_unwritten(spec, store, client, exp, parent)
        print(f"study {spec.name}: resuming {launch.experiment} from {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable(spec), resume_unfinished=True, param_space=param_space(spec))
        return _finish(spec, store, client, parent, tuner, options.mlflow_wait_s)


def tracking_callbacks(tuner: tune.Tuner) -> list[MlflowTracking]:
    """The tuner's MLflow callbacks, restored ones included, to flush what they buffered.

    Tune keeps the (possibly unpickled) run config on its private ``TunerInternal`` (Ray 2.60).
    """
    internal = getattr(tuner, "_local_tuner", None)
    callbacks = getattr(getattr(internal, "_run_config", None), "callbacks", None) or []
    return [cb for cb in callbacks if isinstance(cb, MlflowTracking)]


def _scheduler(spec: StudySpec) -> ASHAScheduler | None:
    asha = spec.search.scheduler
    if asha is None:
        return None
    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch: grace_period and max_t are epochs
        metric=spec.search.metric,
        mode=spec.search.mode,
        max_t=spec.trial.train.epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


def _finish(
    spec: StudySpec, store: StudyStore, client: MlflowClient, parent: str, tuner: tune.Tuner, mlflow_wait_s: float
) -> Outcome:
    client.update_run(parent, status=RunStatus.to_string(RunStatus.RUNNING))
    interrupted, unwritten, refused = True, 0, 0
    try:
        grid = tuner.fit()
        launches = store.launches()
        interrupted = grid.num_terminated + grid.num_errors < launches[-1].num_samples
        if not interrupted:
            launches[-1].finished = True
            store.save_launches(launches)
    finally:  # also when fit() raised: what MLflow has not taken yet is kept, never dropped
        for callback in tracking_callbacks(tuner):
            if callback.drain(mlflow_wait_s):
                unwritten += len(callback.pending)
                callback.save_pending(store.unwritten_path)
            refused += callback.refused
        status = RunStatus.KILLED if interrupted else RunStatus.FINISHED
        _close_parent(client, parent, RunStatus.to_string(status))
    kept = (
        f"; the MLflow store {spec.tracking.uri} did not take {unwritten} write(s): they are kept in "
        f"{store.unwritten_path} and written by the next `fishtune resume {spec.name}` or `fishtune run`"
        if unwritten
        else ""
    )
    if interrupted:
        return Outcome(
            exit_codes.INTERRUPTED,
            f"study {spec.name} interrupted; state saved. Continue with: fishtune resume {spec.name}{kept}",
        )
    if unwritten:
        return Outcome(exit_codes.FAILED, f"study {spec.name} finished{kept}")
    print_summary(client, spec.name)
    if refused:
        return Outcome(
            exit_codes.FAILED, f"study {spec.name} finished; MLflow refused {refused} write(s) (errors above)"
        )
    reported = (grid[i].metrics or {} for i in range(len(grid)))
    failed = grid.num_errors + sum(m.get("fishtune_outcome") == "failed" for m in reported)
    if failed:
        return Outcome(exit_codes.FAILED, f"study {spec.name} finished; {failed} trial(s) failed (errors above)")
    return Outcome(exit_codes.OK, f"study {spec.name} finished")


def _close_parent(client: MlflowClient, parent: str, status: str) -> None:
    try:
        client.set_terminated(parent, status=status)
    except Exception as exc:  # the store is down: replaying the kept writes closes it later
        log.warning("could not close the study's MLflow run %s (%s: %s)", parent, type(exc).__name__, str(exc)[:200])
