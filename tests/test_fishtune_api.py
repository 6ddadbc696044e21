"""``import fishtune`` reaches fishtune's own packages even where a notebook folder has its own
``analysis/`` first on ``sys.path``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shadowed(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("SHADOW = True\n")
    (tmp_path / "analysis" / "report.py").write_text("raise RuntimeError('the notebook folder was imported')\n")
    return subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_a_notebook_analysis_folder_does_not_shadow_fishtunes(tmp_path: Path) -> None:
    done = shadowed(
        tmp_path,
        "import fishtune, analysis, analysis.report\n"
        "assert not hasattr(analysis, 'SHADOW'), analysis.__file__\n"
        f"assert analysis.__file__ == {str(ROOT / 'analysis' / '__init__.py')!r}, analysis.__file__\n"
        "assert callable(fishtune.run) and callable(fishtune.load) and callable(fishtune.analyze)\n"
        "assert 'torch' not in sys.modules\n",
    )
    assert done.returncode == 0, done.stderr


def test_a_shadow_imported_first_is_named(tmp_path: Path) -> None:
    done = shadowed(tmp_path, "import analysis\nimport fishtune\n")
    assert done.returncode == 1
    assert f"a module 'analysis' from {tmp_path / 'analysis'} was imported before fishtune" in done.stderr
