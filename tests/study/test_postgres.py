"""A lab's set-up for real: an MLflow tracking server on a PostgreSQL backend with an artifact
root, and the Optuna storage on PostgreSQL (``search.storage``). A study runs against both, is
interrupted, resumed, read by ``status`` and ``analyze``; run and trial counts are checked in
both stores, and the database password appears in no output, MLflow param or artifact.

Needs a PostgreSQL server: ``$FISHTUNE_TEST_POSTGRES_URL`` (a superuser's URL; ``.ci/run``
starts one with ``.ci/postgres``), else postgres on 127.0.0.1:5432 if one answers; without
either every test here is skipped, with the reason. Each test gets fresh databases, dropped at
its end, and every process it starts is stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.spec_core import masked
from study.store import StudyStore

from .helpers import CLI_TIMEOUT_S, STUDY_TIMEOUT_S, children, free_port, run_until, tiny_spec, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.postgres]
POSTGRES_ENV = "FISHTUNE_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def libpq(url: str) -> str:
    """The URL as libpq takes it: SQLAlchemy's ``postgresql+driver://`` without the driver."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def with_database(url: str, name: str) -> str:
    """``url`` on database ``name`` (same server, user and password)."""
    base, _, query = url.partition("?")
    return re.sub(r"/[^/]*$", f"/{name}", base) + (f"?{query}" if query else "")


def password(url: str) -> str | None:
    found = re.match(r"^[\w+.-]+://[^:/@?]*:([^@]*)@", url)
    return found.group(1) if found and found.group(1) else None


@pytest.fixture(scope="session")
def postgres() -> str:
    """The server's admin URL; skips when no server answers (fails when the variable names one)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'fishtune[postgres]'")
    given = os.environ.get(POSTGRES_ENV, "").strip()
    url = given or DEFAULT_URL
    try:
        psycopg.connect(libpq(url), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        if given:  # CI named a server: its absence is a failure, not a reason to skip
            raise AssertionError(f"{POSTGRES_ENV}={masked(url)} does not answer: {exc}") from exc
        pytest.skip(
            f"no PostgreSQL server at {masked(url)} ({str(exc).strip().splitlines()[0]}); "
            f"set {POSTGRES_ENV} to a superuser's URL (.ci/postgres starts one)"
        )
    return url


@pytest.fixture
def databases(postgres: str) -> Iterator[tuple[str, str]]:
    """Two fresh databases, for MLflow and for Optuna; dropped at the end, connections and all."""
    import psycopg

    names = [f"fishtune_test_{uuid.uuid4().hex[:8]}_{role}" for role in ("mlflow", "optuna")]
    with psycopg.connect(libpq(postgres), autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres, names[0]), with_database(postgres, names[1])
    finally:
        with psycopg.connect(libpq(postgres), autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop_group(proc: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    """SIGTERM a process group this test started (a server's workers, a driver's local Ray);
    SIGKILL whatever is left of it after ``timeout_s``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        if group_gone(proc, timeout_s):
            break
    proc.wait(timeout=timeout_s)


def group_gone(proc: subprocess.Popen[Any], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member of its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def mlflow_server(databases: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on the MLflow database, artifacts under tmp_path: (its URL, the artifact root)."""
    port, artifacts, log = free_port(), tmp_path / "artifacts", tmp_path / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", databases[0]]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url) or server.poll() is not None, 180, f"mlflow server on {url}")
        assert server.poll() is None, log.read_text()[-3000:]
        yield url, artifacts
    finally:
        stop_group(server)


def test_study_on_an_mlflow_server_and_optuna_on_postgres_resumes_and_counts_right(
    databases: tuple[str, str],  # first: without a server the test is skipped before Ray starts
    mlflow_server: tuple[str, Path],
    ray_session: None,
    storage: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    optuna_url = databases[1]
    tracking, artifacts = mlflow_server
    name = "pg-study"
    spec = tiny_spec(tmp_path, name, num_samples=3, max_concurrent=1, storage=optuna_url)
    run = [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", tracking]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, head = run_until(run, tmp_path, "[1/3]", env)
    try:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        stop_group(proc)  # what is left of the local Ray it started
    output = head + rest
    assert proc.returncode == 130, output
    assert f"Optuna: {masked(optuna_url)}" in output and f"MLflow: {tracking}" in output
    assert "View run" not in output  # MLflow's own line per ended run, among the progress lines

    assert main(["resume", name, "--storage", str(storage)]) == 0  # finds both stores in the study folder
    runs = children(tracking, name)
    assert len(runs) == 3 and len({r.data.tags["fishtune.trial_id"] for r in runs}) == 3
    assert {r.data.tags["fishtune.outcome"] for r in runs} == {"completed"}
    trials = optuna.load_study(study_name=name, storage=optuna_url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert {t.user_attrs["fishtune.ray_trial_id"] for t in trials} == {r.data.tags["fishtune.trial_id"] for r in runs}
    assert not StudyStore(storage, name).optuna_path.exists()  # no SQLite file beside the study

    assert main(["status", name, "--storage", str(storage), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["tracking_uri"] == tracking and status["outcomes"] == {"completed": 3}
    out = tmp_path / "report"
    assert main(["analyze", name, "--storage", str(storage), "--out", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert list(artifacts.rglob("report.md")) and list(artifacts.rglob("curves.parquet"))  # in the server's root
    assert main(["ui", "--name", name, "--storage", str(storage)]) == 0  # the server is the UI: nothing started
    assert f"study {name}: {tracking}/#/experiments/{runs[0].info.experiment_id}" in capsys.readouterr().out

    # A second study folder does not join the Optuna study this one owns in the shared database.
    other = tmp_path / "other"
    assert main(["run", str(spec), "--storage", str(other), "--tracking-uri", tracking]) == 2
    assert "already holds an Optuna study 'pg-study'" in capsys.readouterr().err

    secret = password(optuna_url)
    if secret:  # .ci/postgres's URL has one
        client = MlflowClient(tracking)
        parent = client.search_runs([runs[0].info.experiment_id], "tags.`fishtune.role` = 'study'")[0]
        assert parent.data.params["search.storage"] == masked(optuna_url)
        spec_artifact = next(artifacts.rglob("spec.yaml")).read_text()
        logged = [output, json.dumps(parent.data.params), json.dumps(parent.data.tags), spec_artifact]
        assert not [text for text in logged if secret in text]


def test_mlflow_tables_on_a_new_postgres_store_are_made_once_for_two_studies(databases: tuple[str, str]) -> None:
    """Two drivers starting on one new PostgreSQL MLflow store (no server) at once: both go on."""
    script = f"from study.store_tables import ensure_tables; ensure_tables({databases[0]!r})"
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=STUDY_TIMEOUT_S)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert MlflowClient(databases[0]).get_experiment_by_name("Default") is not None
