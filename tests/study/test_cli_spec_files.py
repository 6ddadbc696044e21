"""A spec path that is not a YAML text file: ``fishtune run`` exits 2 with one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = "import sys; from study.cli import main; sys.exit(main(sys.argv[1:]))"


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
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "run", str(path), "--storage", str(work)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"fishtune: {path}: ") and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(work.iterdir()) == []
