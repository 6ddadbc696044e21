"""A spec path that is not a YAML text file: ``fishtune run`` exits 2 with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_cli


@pytest.mark.parametrize(
    ("case", "content", "expected"),
    [
        ("binary", bytes(range(256)) * 4, "not a UTF-8 text file"),
        ("huge", b"#\n" * 2**20, "larger than 1 MiB"),
    ],
)
def test_run_refuses_a_spec_that_is_not_text(tmp_path: Path, case: str, content: bytes, expected: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(["run", str(path), "--storage", str(work)], cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"fishtune: {path}: ") and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(work.iterdir()) == []
