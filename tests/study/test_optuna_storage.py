"""The study's Optuna storage (``search.storage``) without a database server: refused in one
sentence before anything starts, its password never shown, kept by the study folder; a journal
file instead of a database. The same against a real PostgreSQL server: test_postgres.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from study.cli import main
from study.optuna_storage import check_storage, open_storage, rdb_storage
from study.spec import load_spec, parse_spec
from study.store import StudyStore
from trainables.schema import ConfigError

from .helpers import children, free_port, optuna_trials, tiny_spec


def test_an_unreachable_database_is_one_sentence_without_its_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'fishtune[postgres]'")
    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(ConfigError) as info:
        check_storage(url, "study", new_study=True)
    message = str(info.value)
    assert message.startswith("search.storage: cannot open the Optuna storage postgresql://me:***@127.0.0.1:")
    assert "s3cret" not in message and "\n" not in message.strip()


def test_a_run_against_an_unreachable_database_stops_before_ray_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'fishtune[postgres]'")
    spec = tiny_spec(tmp_path, "unreachable", storage=f"postgresql://me:s3cret@127.0.0.1:{free_port()}/optuna")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "search.storage: cannot open the Optuna storage" in err and "s3cret" not in err
    assert not (tmp_path / "st").exists()


def test_a_new_study_does_not_join_a_shared_storage_that_holds_its_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="taken", storage=url)
    with pytest.raises(ConfigError, match="already holds an Optuna study 'taken' that this study folder did not start"):
        check_storage(url, "taken", new_study=True)
    check_storage(url, "taken", new_study=False)  # its own folder extends or resumes it
    check_storage(url, "other", new_study=True)
    check_storage(None, "taken", new_study=True)  # the folder's own optuna.db: nothing to check


def test_the_study_folder_keeps_the_storage_and_refuses_another_on_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = StudyStore(tmp_path / "st", "kept")
    assert store.optuna_url == store.default_optuna_url  # nothing stored yet
    store.save_spec(load_spec(tiny_spec(tmp_path, "kept", storage=url)))
    assert store.optuna_url == url  # what resume and dashboard open

    spec = tiny_spec(tmp_path, "kept")  # the same study, without search.storage
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--num-samples", "8"]) == 2
    err = capsys.readouterr().err
    assert f"search.storage: study 'kept' keeps its Optuna trials in {url}" in err
    assert yaml.safe_load(store.spec_path.read_text())["search"]["storage"] == url  # unchanged


def test_inside_a_ray_job_a_relative_sqlite_storage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_spec(tmp_path, "job", storage="sqlite:///optuna.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", uri]) == 2
    assert "search.storage sqlite:///optuna.db: inside a Ray job" in capsys.readouterr().err


@pytest.mark.parametrize("unpickled", [False, True], ids=["made", "unpickled"])
def test_a_sqlite_storage_writes_ahead_without_an_fsync_per_commit(tmp_path: Path, unpickled: bool) -> None:
    """WAL mode, synchronous=NORMAL (1) on every connection, also once Tune has unpickled it."""
    storage = rdb_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    if unpickled:
        storage = pickle.loads(pickle.dumps(storage))
    with storage.engine.connect() as con:
        modes = (
            con.exec_driver_sql("PRAGMA journal_mode").scalar(),
            con.exec_driver_sql("PRAGMA synchronous").scalar(),
        )
    storage.engine.dispose()
    assert modes == ("wal", 1)


def test_journal_names_the_study_folders_file_and_a_path_is_made_absolute(tmp_path: Path) -> None:
    store = StudyStore(tmp_path / "st", "j")
    assert store.storage_url("journal") == f"journal:///{store.root / 'optuna.journal'}"
    spec = load_spec(tiny_spec(tmp_path, "j", storage="journal:///trials.journal"))
    assert spec.resolved(tmp_path).search.storage == f"journal:///{tmp_path / 'trials.journal'}"  # as `run` does
    assert load_spec(tiny_spec(tmp_path, "k", storage="journal")).search.storage == "journal"
    with pytest.raises(
        ConfigError,
        match=r"search.storage: must be a database URL .*, 'journal' \(a journal file in the study folder\)",
    ):
        parse_spec({"name": "j", "search": {"space": {"train.lr": {"grid": [0.1]}}, "storage": "journal:///"}})


def test_a_journal_storage_unpickled_as_tune_restores_it_reads_what_was_written_since(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    saved = pickle.dumps(study._storage)  # Tune saves the searcher with its storage
    study.add_trial(optuna.trial.create_trial(value=0.5))
    restored = pickle.loads(saved)
    assert [t.value for t in optuna.load_study(study_name="s", storage=restored).trials] == [0.5]
    check_storage(url, "s", new_study=False)
    with pytest.raises(ConfigError, match="already holds an Optuna study 's'"):
        check_storage(url, "s", new_study=True)


def test_a_study_on_a_journal_runs_and_extends_without_a_database(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_spec(tmp_path, "journaled", num_samples=2, storage="journal")
    store = StudyStore(storage, "journaled")
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    assert f"Optuna: journal:///{store.journal_path}" in capsys.readouterr().out
    spec = tiny_spec(tmp_path, "journaled", num_samples=3, storage="journal")
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    assert store.journal_path.is_file() and not store.optuna_path.exists()
    trials = optuna_trials(storage, "journaled")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    runs = children(mlflow_uri, "journaled")
    assert {t.user_attrs["fishtune.ray_trial_id"] for t in trials} == {r.data.tags["fishtune.trial_id"] for r in runs}


def test_extending_a_study_into_another_mlflow_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ran, split the study's runs between two stores and rewrote the stored tracking URI."""
    kept = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = StudyStore(tmp_path / "st", "kept")
    store.save_spec(load_spec(tiny_spec(tmp_path, "kept"), {"tracking": {"uri": kept}}))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    spec = tiny_spec(tmp_path, "kept")
    assert (
        main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", other, "--num-samples", "8"]) == 2
    )
    assert f"tracking.uri: study 'kept' keeps its MLflow runs in {kept}" in capsys.readouterr().err
    assert yaml.safe_load(store.spec_path.read_text())["tracking"]["uri"] == kept  # unchanged
