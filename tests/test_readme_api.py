"""The README's Python API example, executed as written, on the smallest spec (a name and one
searched field: every other default must compose) with one trial."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- api-example: executed by tests/test_readme_api.py -->"


def example() -> str:
    text = (ROOT / "README.md").read_text()
    assert MARKER in text
    found = re.search(r"```python\n(.*?)```", text.split(MARKER, 1)[1], re.S)
    assert found is not None
    return found.group(1)


def test_the_readme_example_runs_the_minimal_spec(tmp_path: Path) -> None:
    """In a fresh interpreter in an empty folder, as a notebook runs it (its own local Ray)."""
    checks = """
assert result.outcome.code == 0, result.outcome.message
assert len(result.trials) == 1 and result.trials["outcome"].iloc[0] in ("completed", "diverged")
assert result.trials["epochs"].iloc[0] == 30  # the defaults: digits, simple_cnn (auto padding), 30 epochs
assert len(trace) > 0 and set(trace["trial"]) == set(result.trials["trial"])
assert report["n_trials"] == 1
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    done = subprocess.run(
        [sys.executable, "-c", example() + checks], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "reports" / "minimal" / "report.md").is_file()
