"""Two studies at once on one machine (issue 17): two `fishtune run` processes, each with its
own local Ray, writing to one new SQLite MLflow store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from .helpers import children, optuna_trials, tiny_spec

pytestmark = pytest.mark.ray


def test_two_studies_on_one_sqlite_store_both_finish_with_nothing_lost(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'project.db'}"  # new: both also race to create its tables
    storage = tmp_path / "storage"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for name in ("together-a", "together-b"):
        spec = tiny_spec(tmp_path, name, num_samples=3, max_concurrent=1)
        command = [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", uri]
        procs.append(
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            try:
                outputs.append(proc.communicate(timeout=600)[0])
            except subprocess.TimeoutExpired as exc:  # pytest would show only the start of the output
                tail = (exc.output or b"")[-6000:]
                pytest.fail(
                    f"{proc.args[4]} still running after 600 s; the end of its output:\n{tail.decode(errors='replace')}"
                )
    finally:
        for proc in procs:  # whatever a study's Ray left, and a study still running after a failure
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "database is locked" not in out or "retrying" in out, out
    for name in ("together-a", "together-b"):
        runs = children(uri, name)
        assert len(runs) == 3 and len({r.data.tags["fishtune.trial_id"] for r in runs}) == 3
        assert {(r.data.tags["fishtune.outcome"], r.info.status) for r in runs} == {("completed", "FINISHED")}
        for run in runs:
            assert {"final_val_accuracy", "fisher_peak"} <= set(run.data.metrics)
        trials = optuna_trials(storage, name)
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
