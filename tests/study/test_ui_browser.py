"""`fishtune ui` in a real browser: a finished tiny study, written by the real tracking callback,
opened in headless Chromium at the URL the command prints.

MLflow's UI is a React app: ``chromium --dump-dom`` after a virtual-time budget gives the
rendered DOM. Set ``FISHTUNE_SCREENSHOTS=<folder>`` to also save the screenshots the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.mlflow_parent import open_parent_run
from study.spec import load_spec
from study.tracking import MlflowTracking
from trainables.config import TrialConfig
from trainables.report import EpochReport, Outcome, Placement

from .helpers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install -y chromium)")
STUDY = "ui-browser"
PROFILE = Path(tempfile.gettempdir()) / "fishtune-test-chromium"  # one profile: its cache keeps the UI's code
TRIALS = [("a1", 0.0185, 2.4e-4, 0.81), ("b2", 0.05, 1.1e-3, 0.88), ("c3", 0.011, 3.0e-2, 0.74)]


def write_study(folder: Path) -> str:
    """Three finished trials of three epochs each, through MlflowTracking as Tune would drive it."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec_path = folder / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": STUDY,
                "tracking": {"uri": uri},
                "model": {"name": "mlp", "hidden": 16, "depth": 1},
                "penalty": {"kind": "fisher"},
                "search": {
                    "space": {"train.lr": {"loguniform": [0.01, 0.1]}, "penalty.coef": {"loguniform": [1e-4, 0.1]}}
                },
            }
        )
    )
    _, exp, parent = open_parent_run(load_spec(spec_path))
    tracking = MlflowTracking(uri, exp, parent)
    t0 = int(time.time() * 1000) - 600_000
    for trial_id, lr, coef, accuracy in TRIALS:
        config = {**TrialConfig().flat(), "penalty.kind": "fisher", "train.lr": lr, "penalty.coef": coef}
        trial: Any = SimpleNamespace(
            trial_id=trial_id,
            config=config,
            evaluated_params={"train.lr": lr, "penalty.coef": coef},
            last_result={},
            run_metadata=SimpleNamespace(num_failures=0),
        )
        tracking.on_trial_start(0, [], trial)
        for epoch in (1, 2, 3):
            steps = range(10 * epoch - 9, 10 * epoch + 1)
            trial.last_result = EpochReport(
                epoch=epoch,
                step=10 * epoch,
                metrics={"val_accuracy": accuracy * epoch / 3, "val_loss": 1.0 / epoch},
                curves={"fisher_trace": [(s, 50.0 * lr * s * (1.2 - s / 30)) for s in steps]},
                times={s: t0 + 2_000 * s for s in steps},
                outcome=Outcome.COMPLETED if epoch == 3 else Outcome.RUNNING,
            ).to_result(Placement("cpu"))
            tracking.on_trial_result(0, [], trial, trial.last_result)
            tracking.on_checkpoint(0, [], trial, checkpoint=None)
        tracking.on_trial_complete(0, [], trial)
    assert tracking.drain(timeout_s=60) == 0
    tracking.writes.close()
    MlflowClient(uri).set_terminated(parent)
    return uri


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(tracking URI, the study page's URL) of a running `fishtune ui`."""
    folder = tmp_path_factory.mktemp("ui")
    uri = write_study(folder)
    port = free_port()
    command = [sys.executable, "-m", "study", "ui", "--name", STUDY, "--tracking-uri", uri, "--port", str(port)]
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    found = re.search(r"(http://\S+/#/experiments/\S+)", lines[1])
    assert found, lines
    deadline = time.monotonic() + 180  # the UI server takes ≈10 s, much longer on a busy 2-CPU box
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.5)
    yield uri, found[1]
    proc.terminate()
    proc.wait(timeout=30)


def render(url: str, screenshot: Path | None = None, budget_ms: int = 15_000) -> str:
    """The DOM of ``url`` once the app has rendered (and a screenshot of it, if asked)."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--virtual-time-budget={budget_ms}"]
    command += ["--window-size=1280,720", "--hide-scrollbars", f"--user-data-dir={PROFILE}"]
    action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*command, *action, url], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def shots() -> Path | None:
    folder = os.environ.get("FISHTUNE_SCREENSHOTS")
    return Path(folder) if folder else None


def trial_runs(uri: str) -> dict[str, Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`fishtune.role` = 'trial'")
    return {r.info.run_name: r for r in runs}


def run_page(url: str, run: Any, tab: str = "") -> str:
    base, _ = url.split("/#/")
    page = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return f"{page}/{tab}" if tab else f"{page}?workflowType=machine_learning"  # a tab's route takes no query


def test_the_study_page_opens_in_model_training_mode(ui: tuple[str, str]) -> None:
    _, url = ui
    assert url.endswith("?workflowType=machine_learning")
    dom = render(url)
    assert "Model training" in dom and f">{STUDY}<" in dom  # the parent run, in the Runs table
    assert "Evaluation runs" not in dom  # MLflow 3's GenAI view names runs so
    if shots():
        render(url, shots() / "runs-table.png")  # type: ignore[operator]


def test_every_trial_run_is_reachable_by_its_name(ui: tuple[str, str]) -> None:
    uri, url = ui
    runs = trial_runs(uri)
    assert sorted(runs) == ["t001 lr=0.0185 coef=2.4e-4", "t002 lr=0.05 coef=0.0011", "t003 lr=0.011 coef=0.03"]
    for name, run in runs.items():
        assert name in render(run_page(url, run), budget_ms=8_000), name


def test_a_trial_run_has_its_tr_f_chart(ui: tuple[str, str]) -> None:
    uri, url = ui
    run = trial_runs(uri)["t002 lr=0.05 coef=0.0011"]
    chart = run_page(url, run, "model-metrics")
    render(chart)  # a first visit loads the chart code (plotly, megabytes) into the profile's cache

    def plotted(dom: str) -> bool:  # a plotted chart with its fisher_trace legend
        return "(fisher_trace)" in dom and 'class="main-svg' in dom

    for budget_ms in (25_000, 60_000, 120_000):  # a busy machine can still be drawing when a budget ends
        dom = render(chart, budget_ms=budget_ms)
        if plotted(dom):
            break
    assert plotted(dom), dom[-2000:]
    if shots():
        render(chart, shots() / "trf-chart.png")  # type: ignore[operator]
