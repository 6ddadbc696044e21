"""The CLI's user-error path: exit 2, one line, no traceback, nothing started or written."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.exit_codes import OK, Outcome
from study.options import LaunchOptions

from .helpers import free_port, run_cli, serving

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
    proc = run_cli(["run", str(path), "--storage", str(work)], cwd=work, script=PROBE)
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


def _own_address() -> str:
    """This machine's outward IPv4 address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only used to pick the outward interface
        address = str(s.getsockname()[0])
    assert not address.startswith("127."), address
    return address


def test_ui_serves_the_store_on_localhost(tmp_path: Path) -> None:
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["ui", "--tracking-uri", uri]) == 2  # no database there yet: nothing is created
    assert not (tmp_path / "mlflow.db").exists()
    MlflowClient(uri).search_experiments()  # creates the store
    command = [sys.executable, "-m", "study", "ui", "--tracking-uri", uri, "--port", str(port)]
    with serving(command, f"http://127.0.0.1:{port}/health", timeout_s=90):
        with pytest.raises(ConnectionRefusedError):  # bound to loopback only: not on the machine's own address
            socket.create_connection((_own_address(), port), timeout=5).close()


def test_unreachable_tracking_server_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: {name: mlp}\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\n")
    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", uri]) == 2
    assert "cannot reach the MLflow server" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


GOOD = "name: job-study\nmodel: {name: mlp}\nsearch: {space: {train.lr: {loguniform: [1.0e-3, 1.0e-1]}}}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "--storage .: inside a Ray job"),  # the default storage is the (temporary) working directory
        (["--storage", "/abs/fishtune"], "tracking.uri sqlite:///mlflow.db: inside a Ray job"),
    ],
)
def test_inside_a_ray_job_relative_study_paths_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert main(["run", str(path), *args]) == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("flag", ["--mlflow-wait", "--pending-timeout"])
def test_negative_waits_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD)
    assert main(["run", str(path), "--storage", str(tmp_path), flag, "-1"]) == 2
    assert f"{flag}: expected seconds ≥ 0" in capsys.readouterr().err


def test_a_data_set_that_cannot_be_downloaded_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from trainables import data

    with socket.socket() as s:  # a port nobody listens on: as offline as it gets
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/cifar-10-python.tar.gz"
    info = data.DATASETS["cifar10"]
    assert info.archive is not None
    monkeypatch.setitem(
        data.DATASETS, "cifar10", dataclasses.replace(info, archive=dataclasses.replace(info.archive, url=url))
    )
    cache, work = tmp_path / "cache", tmp_path / "work"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: offline\n"
        f"data: {{name: cifar10, cache_dir: {cache}}}\n"
        "model: {name: simple_cnn, width: 4, hidden: 8}\n"
        "search: {space: {train.lr: {loguniform: [1.0e-3, 1.0e-1]}}}\n"
    )
    db = tmp_path / "mlflow.db"
    assert main(["run", str(spec), "--storage", str(work), "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert url in err and str(cache / "cifar-10-python.tar.gz") in err
    assert len(err.strip().splitlines()) == 1
    assert not work.exists() and not db.exists()  # no study folder, no MLflow store


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"fishtune {metadata.version('fishtune')}"


def test_help_states_the_precedence_of_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "this flag > $MLFLOW_TRACKING_URI > the spec / stored study > ./mlflow.db" in text
    assert "this flag > $RAY_ADDRESS > start a local Ray" in text


def test_mlflow_tracking_uri_is_used_unless_the_flag_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from_env = tmp_path / "from-env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{from_env}")
    assert main(["status", "nope", "--storage", str(tmp_path)]) == 2  # not the stored study's store
    assert f"no MLflow database at {from_env}" in capsys.readouterr().err
    from_flag = tmp_path / "from-flag.db"
    assert main(["status", "nope", "--tracking-uri", f"sqlite:///{from_flag}"]) == 2
    assert f"no MLflow database at {from_flag}" in capsys.readouterr().err

    spec = tmp_path / "s.yaml"
    spec.write_text(GOOD)
    env_server, flag_server = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_server)
    assert main(["run", str(spec), "--storage", str(tmp_path / "st")]) == 2  # beats the spec's default store
    assert f"cannot reach the MLflow server at {env_server}" in capsys.readouterr().err
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", flag_server]) == 2
    assert f"cannot reach the MLflow server at {flag_server}" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    assert main(["run", str(spec), "--storage", str(tmp_path / "st")]) == 2
    assert "MLFLOW_TRACKING_URI=databricks in the environment" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "environ", "expected"), [([], "auto", "auto"), (["--address", "h:1"], "auto", "h:1")])
def test_ray_address_joins_that_cluster_without_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], environ: str, expected: str
) -> None:
    from study import launcher

    seen: list[LaunchOptions] = []

    def start_launch(spec: object, store: object, options: LaunchOptions) -> Outcome:
        seen.append(options)
        return Outcome(OK, "started")

    monkeypatch.setattr(launcher, "start_launch", start_launch)
    monkeypatch.setenv("RAY_ADDRESS", environ)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(GOOD)
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), *flag]) == 0
    assert [o.address for o in seen] == [expected]


def test_a_ray_client_address_in_the_environment_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(GOOD)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert main(["run", str(spec), "--storage", str(tmp_path)]) == 2
    assert "fishtune: RAY_ADDRESS ray://head:10001: ray:// client" in capsys.readouterr().err
