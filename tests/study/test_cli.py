"""The CLI's user-error path: exit 2, one line, no traceback, nothing started or written."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main

BAD_GPU = """
name: gpu-study
model: {name: mlp}
search: {space: {train.lr: {loguniform: [1.0e-3, 1.0e-1]}}}
resources: {cpu: 1, gpu: 1}
"""

PROBE = (
    "import sys; from study.cli import main; rc = main(sys.argv[1:]); "
    "print('imported:', sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules)); sys.exit(rc)"
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("name: x\nsearch: [\n", "YAML syntax error at line"),
        ("name: Bad Name\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\n", "name:"),
        (
            "name: x\nmodel: {name: mlp}\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\ntrain: {lr: -1}\n",
            "train.lr",
        ),
        (BAD_GPU, "resources.gpu"),
    ],
)
def test_bad_spec_exits_2_without_traceback_imports_or_files(tmp_path: Path, spec: str, expected: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "run", str(path), "--storage", str(work)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fishtune: ") and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "imported: []" in proc.stdout  # validated before Ray, MLflow or Optuna were imported
    assert list(work.iterdir()) == []  # nothing written


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "study", "--debug", "run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_unknown_study_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "nope", "--storage", str(tmp_path)]) == 2
    assert main(["resume", "nope", "--storage", str(tmp_path)]) == 2
    assert "fishtune run" in capsys.readouterr().err
    assert main(["status", "Not/AName"]) == 2


def test_ray_client_address_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: {name: mlp}\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\n")
    assert main(["run", str(spec), "--storage", str(tmp_path), "--address", "ray://head:10001"]) == 2
    assert "ray job submit" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ui_serves_the_store_on_localhost(tmp_path: Path) -> None:
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["ui", "--tracking-uri", uri]) == 2  # no database there yet: nothing is created
    assert not (tmp_path / "mlflow.db").exists()
    MlflowClient(uri).search_experiments()  # creates the store
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "MLflow UI did not come up"
                time.sleep(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_unreachable_tracking_server_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: {name: mlp}\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\n")
    uri = f"http://127.0.0.1:{_free_port()}"
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", uri]) == 2
    assert "cannot reach the MLflow server" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()
