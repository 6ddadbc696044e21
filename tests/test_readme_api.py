"""The README's Python API example, executed as written, on the smallest spec (a name and one
searched field: every other default must compose) with one trial."""

from __future__ import annotations

import re
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


def test_the_readme_example_runs_the_minimal_spec(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scope: dict = {}
    exec(compile(example(), "README.md", "exec"), scope)
    assert scope["result"].outcome.code == 0, scope["result"].outcome.message
    trials = scope["result"].trials
    assert len(trials) == 1 and trials["outcome"].iloc[0] in ("completed", "diverged")
    assert trials["epochs"].iloc[0] == 30  # the defaults: digits, simple_cnn (auto padding), 30 epochs
    assert len(scope["trace"]) > 0 and set(scope["trace"]["trial"]) == set(trials["trial"])
    assert scope["report"]["n_trials"] == 1 and (tmp_path / "reports" / "minimal" / "report.md").is_file()
