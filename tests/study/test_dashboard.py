"""``fishtune dashboard NAME``: optuna-dashboard on the study's Optuna storage, read back
through its HTTP API; without the extra, one sentence."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from study import dashboard
from study.cli import main
from study.optuna_storage import open_storage
from study.spec import load_spec
from study.store import StudyStore

from .helpers import free_port, serving, tiny_spec


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_serves_the_studys_trials(tmp_path: Path, journal: bool) -> None:
    pytest.importorskip(
        "optuna_dashboard", reason="optuna-dashboard is not installed (pip install 'fishtune[dashboard]')"
    )
    store = StudyStore(tmp_path, "dash")
    store.root.mkdir(parents=True)
    if journal:
        store.save_spec(load_spec(tiny_spec(tmp_path, "dash", storage="journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dash", storage=open_storage(store.optuna_url), direction="maximize")
    for lr in (0.01, 0.02, 0.03):
        study.enqueue_trial({"train.lr": lr})
    study.optimize(lambda t: t.suggest_float("train.lr", 0.001, 0.1, log=True) * 10, n_trials=3)

    port = free_port()
    command = [sys.executable, "-m", "study", "dashboard", "dash", "--storage", str(tmp_path), "--port", str(port)]
    studies = f"http://127.0.0.1:{port}/api/studies"
    with serving(command, studies, timeout_s=60) as server:
        summaries = get(studies)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["dash"]
        detail = get(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}?after=0")
        assert sorted(t["params"][0]["param_internal_value"] for t in detail["trials"]) == pytest.approx(
            [0.01, 0.02, 0.03]
        )
    assert f"optuna-dashboard for {store.optuna_url} on http://127.0.0.1:{port}" in server.output


def test_without_the_extra_it_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dashboard.importlib.util, "find_spec", lambda name: None)
    assert main(["dashboard", "dash", "--storage", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "fishtune: fishtune dashboard needs optuna-dashboard, which is not installed: pip install 'fishtune[dashboard]'"
    )


def test_a_study_without_storage_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    assert main(["dashboard", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no Optuna storage at" in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1
