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


def test_analyze_makes_the_clis_checks_and_raises_config_errors(tmp_path: Path) -> None:
    """It skipped them: epsilon -1 gave a report, a mistyped store was created, an unknown study
    raised a LookupError rather than the ValueError the README promises."""
    import pytest
    from mlflow.tracking import MlflowClient

    import fishtune
    from trainables.schema import ConfigError

    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # an MLflow store with no study
    with pytest.raises(ConfigError, match=r"^--epsilon: must be > 0"):
        fishtune.analyze("s", tracking_uri=f"sqlite:///{store}", epsilon=-1.0)
    with pytest.raises(ConfigError, match=r"^--smooth-epochs: must be > 0"):
        fishtune.analyze("s", tracking_uri=f"sqlite:///{store}", smooth_epochs=0.0)
    with pytest.raises(ConfigError, match=r"no MLflow database at"):
        fishtune.analyze("s", tracking_uri=f"sqlite:///{tmp_path / 'typo.db'}")
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(ConfigError, match=r"study 's'"):
        fishtune.analyze("s", tracking_uri=f"sqlite:///{store}", out=tmp_path / "r")


def test_run_refuses_a_bad_argument_with_a_config_error_not_an_exit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import pytest

    import fishtune
    from fishtune.api import _plain
    from trainables.schema import ConfigError

    with pytest.raises(ConfigError, match=r"^num_samples: expected an integer"):
        fishtune.run(tmp_path / "x.yaml", num_samples="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"cannot read the study spec"):
        monkeypatch.chdir(tmp_path)
        fishtune.run("-x.yaml")  # a relative path argparse took for a flag
    grid = {"search": {"space": {"train.lr": {"grid": list(np.logspace(-3, -1, 3))}}}, "seeds": (np.int64(1),)}
    assert _plain(grid) == {"search": {"space": {"train.lr": {"grid": [0.001, 0.01, 0.1]}}}, "seeds": [1]}
