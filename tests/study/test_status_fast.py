"""``fishtune status``: the SQLite reader gives the MlflowClient reader's table, JSON and CSV
parse, and the status and help paths import neither torch nor MLflow."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study import mlflow_study, run_tags
from study.cli import main
from study.status import RunRecord, format_table, render, runs_table, study_table, table_from_runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A study as the driver writes it: a parent run, three trials (one NaN metric, one without
    metrics), and a deleted run that no reader may show."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={run_tags.ROLE: "study", run_tags.SEARCHED: "train.lr,model.name"})
    for i, (metrics, name) in enumerate(
        [
            ({"epoch": 2.0, "val_accuracy": 0.5, "fisher_peak": 3.0}, "mlp"),
            ({"epoch": 1.5, "val_accuracy": math.nan}, "simple_cnn"),
            ({}, "mlp"),
        ]
    ):
        run = client.create_run(
            exp,
            tags={
                run_tags.ROLE: "trial",
                run_tags.TRIAL_ID: f"t{i}",
                run_tags.OUTCOME: "completed",
                "mlflow.parentRunId": parent.info.run_id,
            },
            start_time=1000 + i,
        )
        client.log_param(run.info.run_id, "train.lr", str(0.01 * (i + 1)))
        client.log_param(run.info.run_id, "model.name", name)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, 0.0, step=0)
            client.log_metric(run.info.run_id, key, value, step=1)
    gone = client.create_run(exp, tags={run_tags.ROLE: "trial", run_tags.TRIAL_ID: "gone"})
    client.delete_run(gone.info.run_id)
    return uri


def test_the_sqlite_reader_gives_the_clients_table(store: str) -> None:
    fast = study_table(store, "s")
    assert list(fast["trial"]) == ["t0", "t1", "t2"]
    assert list(fast.columns) == [
        "trial",
        "train.lr",
        "model.name",
        "outcome",
        "epochs",
        "val_acc",
        "test_acc",
        "TrF_peak",
    ]
    assert fast["epochs"].tolist()[:2] == [2, 1]
    pd.testing.assert_frame_equal(fast, runs_table(MlflowClient(store), "s"))


def test_json_and_csv_parse(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "s", "--tracking-uri", store, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["study"] == "s" and data["outcomes"] == {"completed": 3}
    assert [t["trial"] for t in data["trials"]] == ["t0", "t1", "t2"]
    assert data["trials"][0]["val_acc"] == 0.5 and data["trials"][1]["val_acc"] is None
    assert data["trials"][2]["epochs"] is None and data["trials"][0]["train.lr"] == 0.01
    assert main(["status", "s", "--tracking-uri", store, "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table["trial"].tolist() == ["t0", "t1", "t2"] and table["val_acc"].iloc[0] == 0.5


def test_an_unknown_study_is_one_sentence(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "nope", "--tracking-uri", store, "--format", "json"]) == 2
    assert capsys.readouterr().err.strip() == "fishtune: study 'nope': no such MLflow experiment in this tracking store"


def test_the_tag_names_are_the_ones_the_driver_writes() -> None:
    assert (run_tags.ROLE, run_tags.TRIAL_ID, run_tags.OUTCOME) == (
        mlflow_study.ROLE,
        mlflow_study.TRIAL_ID,
        mlflow_study.OUTCOME,
    )


def test_status_and_help_import_neither_torch_nor_mlflow(store: str) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from study.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['status', 's', '--tracking-uri', {store!r}, '--format', 'json']) == 0\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import study.dashboard\n"
        "heavy = sorted({'torch', 'mlflow', 'ray', 'optuna'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_table_shows_missing_values_as_a_dash_and_integer_params_as_integers() -> None:
    parent = RunRecord({run_tags.SEARCHED: "train.lr,train.seed"}, {}, {}, 0)
    trial = RunRecord(
        {run_tags.ROLE: "trial", run_tags.TRIAL_ID: "t0", run_tags.OUTCOME: "running"},
        {"train.lr": "0.01", "train.seed": "1"},
        {},
        0,
    )
    table = table_from_runs(parent, [trial])
    assert table["train.seed"].tolist() == [1] and table["train.seed"].dtype.kind == "i"
    text = format_table(table)
    assert "None" not in text and "—" in text and " 1 " in text.splitlines()[1] + " "
    header = render(table_from_runs(parent, []), "s", "u", "csv")
    assert header.split(",")[:4] == ["trial", "train.lr", "train.seed", "outcome"]  # an empty study's CSV
