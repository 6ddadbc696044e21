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


API_CHECKS = """
import numpy as np, pytest
from mlflow.tracking import MlflowClient
import fishtune
from fishtune.api import _plain
from trainables.schema import ConfigError

# analyze skipped the CLI's checks: epsilon -1 gave a report, a mistyped store was created, an
# unknown study raised a LookupError rather than the ValueError the README promises
MlflowClient("sqlite:///mlflow.db").search_experiments()  # an MLflow store with no study
with pytest.raises(ConfigError, match=r"^--epsilon: must be > 0"):
    fishtune.analyze("s", tracking_uri="sqlite:///mlflow.db", epsilon=-1.0)
with pytest.raises(ConfigError, match=r"^--smooth-epochs: must be > 0"):
    fishtune.analyze("s", tracking_uri="sqlite:///mlflow.db", smooth_epochs=0.0)
with pytest.raises(ConfigError, match=r"no MLflow database at"):
    fishtune.analyze("s", tracking_uri="sqlite:///typo.db")
import os; assert not os.path.exists("typo.db")
with pytest.raises(ConfigError, match=r"study 's'"):
    fishtune.analyze("s", tracking_uri="sqlite:///mlflow.db", out="r")

# run turned a bad argument into argparse's SystemExit, NumPy scalars into a YAML error
with pytest.raises(ConfigError, match=r"^num_samples: expected an integer"):
    fishtune.run("x.yaml", num_samples="x")
with pytest.raises(ConfigError, match=r"cannot read the study spec"):
    fishtune.run("-x.yaml")  # a relative path argparse took for a flag
grid = {"search": {"space": {"train.lr": {"grid": list(np.logspace(-3, -1, 3))}}}, "seeds": (np.int64(1),)}
assert _plain(grid) == {"search": {"space": {"train.lr": {"grid": [0.001, 0.01, 0.1]}}}, "seeds": [1]}
print("ok")
"""


def test_the_api_makes_the_clis_checks_and_raises_config_errors(tmp_path: Path) -> None:
    """In a fresh interpreter in an empty folder, as a notebook calls it (the test suite's own
    ``tests/trainables`` package would shadow fishtune's in this process)."""
    done = subprocess.run([sys.executable, "-c", API_CHECKS], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
