"""The analysis tests' synthetic stores are SQLite files whose experiments keep MLflow's default
artifact root, ``./mlruns`` in the working directory, where ``analyze`` logs its report: each
test runs in its own temporary directory so that nothing lands in the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
