"""A real two-node Ray cluster on 127.0.0.1: a head and a worker started by ``ray start``.

The head declares 1 GPU and the worker 2 (there is no CUDA here: trials are given logical
GPUs, run on CPU and say so), so fractional GPU placement is exercised. A study with
``resources.gpu: 0.5`` runs against it with ``--address``; the worker node is killed in the
middle of a trial, which must resume from its checkpoint on the head. Every process the test
starts is killed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from .helpers import ROOT, children, free_port, optuna_trials, tiny_spec, wait_for

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # notice a dead node within seconds instead of Ray's default half minute
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "PYTHONPATH": str(ROOT),
}
NODES = (
    "import json, ray; ray.init(address='{address}', log_to_driver=False); "
    "print(json.dumps([[n['NodeID'], n['Resources'].get('GPU', 0)] for n in ray.nodes() if n['Alive']]))"
)


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid``: `ray start` and all it spawned (workers included).

    Zombies are dead: a killed `ray start`, our own child, stays one until the fixture reaps it,
    and waiting for it to vanish cost the teardown its full 10 s per signal."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(") ", 1)[1].split()[0]
                if os.getsid(int(entry.name)) == sid and state != "Z":
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError, IndexError):
                continue  # exited meanwhile, or not ours
    return pids


def kill_session(sid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    head_id: str = ""
    worker_id: str = ""

    def alive_nodes(self) -> list[list]:
        out = subprocess.run(
            [sys.executable, "-c", NODES.format(address=self.address)],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **ENV}
    temp_dir = Path(f"/tmp/fishtune-ray-{port}")  # its own: `ray start` records its address there
    common = ["--num-cpus", "2", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    head_cmd = [RAY, "start", "--head", "--port", str(port), "--ray-client-server-port", str(free_port())]
    head_cmd += ["--include-dashboard=false"]
    worker_cmd = [RAY, "start", "--address", address]
    with (tmp_path / "head.log").open("wb") as hlog, (tmp_path / "worker.log").open("wb") as wlog:
        head = subprocess.Popen(
            [*head_cmd, *common, "--num-gpus", "1"], env=env, stdout=hlog, stderr=hlog, start_new_session=True
        )
        worker = None
        try:
            c = Cluster(address, temp_dir, head, head)
            wait_for(lambda: len(c.alive_nodes()) == 1, 90, "the head node")
            worker = subprocess.Popen(
                [*worker_cmd, *common, "--num-gpus", "2"], env=env, stdout=wlog, stderr=wlog, start_new_session=True
            )
            c.worker = worker
            wait_for(lambda: len(c.alive_nodes()) == 2, 90, "the worker node")
            ids = {gpus: node_id for node_id, gpus in c.alive_nodes()}
            c.head_id, c.worker_id = ids[1], ids[2]
            yield c
        finally:
            for proc in (worker, head):
                if proc is not None:
                    kill_session(proc.pid)  # start_new_session: the session id is the pid
                    proc.wait(timeout=30)  # reap `ray start` itself
            shutil.rmtree(temp_dir, ignore_errors=True)
            assert all(not session_pids(p.pid) for p in (worker, head) if p is not None)


def placements(result_files: list[Path]) -> list[tuple[str, str, float, float]]:
    """(node id, GPU id, start, end) of each process that ran a trial, from Tune's result files.

    A file may be read twice (the driver's staging copy and the synced one): spans merge by
    (trial directory, pid), so a line seen in either counts once.
    """
    spans: dict[tuple[str, int], list] = {}
    for path in result_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            gpu = re.search(r"Ray assigned GPU (\S+)", r["fishtune_device_note"])
            assert gpu, r["fishtune_device_note"]
            key = (path.parent.name, r["pid"])
            start = r["timestamp"] - r["time_this_iter_s"]
            span = spans.setdefault(key, [r["fishtune_node_id"], gpu.group(1), start, r["timestamp"]])
            span[2], span[3] = min(span[2], start), max(span[3], r["timestamp"])
    return [tuple(s) for s in spans.values()]  # type: ignore[misc]


def staged_results(temp_dir: Path, launch: str, into: Path) -> list[Path]:
    """Copies of the driver's staging ``result.json`` files of ``launch``, taken now.

    Tune writes a trial's results in the driver's staging directory and syncs them to the
    storage path now and then; a trial restored from a checkpoint gets its staging file back
    from storage, so lines reported since the last sync (those of a lost node) are gone from
    the file the study leaves. The test reads them here, before it kills the node.
    """
    copies = []
    found = temp_dir.glob(f"session_*/artifacts/*/{launch}/driver_artifacts/*/result.json")
    for i, path in enumerate(sorted({p.resolve() for p in found})):  # session_latest links to the session
        copy = into / f"{i}" / path.parent.name / "result.json"
        copy.parent.mkdir(parents=True)
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_study_on_two_nodes_packs_fractional_gpus_and_survives_losing_a_node(cluster: Cluster, tmp_path: Path) -> None:
    name = "multinode"
    lrs = [0.05, 0.04, 0.03, 0.02, 0.015, 0.01]
    spec = tiny_spec(tmp_path, name, space={"train.lr": {"grid": lrs}}, sampler="grid", num_samples=6, max_concurrent=4)
    text = yaml.safe_load(spec.read_text())
    text["train"] = {"epochs": 6, "batch_size": 32}
    text["fisher"]["schedule"] = {"dense_until_epoch": 1, "dense_every": 8, "sparse_every": 16}
    text["resources"] = {"cpu": 0.5, "gpu": 0.5}
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "storage"
    command = [sys.executable, "-m", "study", "run", str(spec), "--address", cluster.address, "--storage", str(storage), "--tracking-uri", uri]  # fmt: skip
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(
            command, cwd=tmp_path, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT
        )
    seen_nodes: set[str] = set()

    def worker_trial_mid_run() -> bool:
        """A trial on the worker node with at least one epoch (so a checkpoint) done."""
        if MlflowClient(uri).get_experiment_by_name(name) is None:
            return False
        runs = children(uri, name)
        seen_nodes.update(r.data.tags.get("fishtune.node_id", "") for r in runs)
        return any(
            r.data.tags.get("fishtune.node_id") == cluster.worker_id
            and r.data.tags.get("fishtune.outcome") == "running"
            and "val_accuracy" in r.data.metrics
            for r in runs
        )

    log_text: Callable[[], str] = lambda: (tmp_path / "driver.log").read_text()  # noqa: E731
    try:
        wait_for(worker_trial_mid_run, 300, "a trial running on the worker node")
        staged = staged_results(cluster.temp_dir, "launch-1", tmp_path / "staged")
        assert staged, sorted(str(p) for p in cluster.temp_dir.rglob("result.json"))
        kill_session(cluster.worker.pid)  # the worker node and its trial processes die at once
        assert driver.wait(timeout=480) == 0, log_text()
    finally:
        driver.kill()
    out = log_text()
    assert "cluster: 2 node(s), 4 CPU, 3 GPU" in out and "6 fit at once" in out
    assert "lost its worker" in out

    runs = children(uri, name)
    assert len(runs) == 6 and len({r.data.tags["fishtune.trial_id"] for r in runs}) == 6
    seen_nodes.update(r.data.tags["fishtune.node_id"] for r in runs)
    assert {cluster.head_id, cluster.worker_id} <= seen_nodes  # trials ran on both nodes
    client = MlflowClient(uri)
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["fishtune.outcome"] == "completed", tags
        assert tags["fishtune.device"] == "cpu" and "torch sees no CUDA device" in tags["fishtune.device_note"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert len(steps) == 6 == len(set(steps)), steps  # every epoch once, across the restart
    restarted = [r for r in runs if "fishtune.restarts" in r.data.tags]
    assert restarted and all(r.data.tags["fishtune.node_id"] == cluster.head_id for r in restarted)
    assert [t.state for t in optuna_trials(storage, name)] == [optuna.trial.TrialState.COMPLETE] * 6

    spans = placements([*staged, *(storage / "runs" / name / "ray" / "launch-1").glob("*/result.json")])
    assert {node for node, *_ in spans} == {cluster.head_id, cluster.worker_id}
    for node in (cluster.head_id, cluster.worker_id):
        for gpu in {g for n, g, *_ in spans if n == node}:
            assert max_overlap([(a, b) for n, g, a, b in spans if (n, g) == (node, gpu)]) <= 2  # 1 / 0.5 per GPU
