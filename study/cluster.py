"""What the Ray cluster can give a study, checked on the driver before any trial starts.

A trial needs ``resources.cpu`` and ``resources.gpu`` on one node. Ray would leave a trial that
no node can hold pending forever, so: on a local Ray (which never grows) such a spec is refused;
on a cluster without an autoscaler too; on an autoscaling cluster fishtune asks the autoscaler
for one such node and waits at most ``--pending-timeout``. On a multi-node cluster the Tune
results folder (checkpoints) must be visible from every node, or a trial restarted on another
node would start from scratch; a local folder is checked from each node.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from study.spec import Resources, StudySpec
from trainables.schema import ConfigError

log = logging.getLogger(__name__)

POLL_S = 5.0
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    cpu: float
    gpu: float

    def fits(self, res: Resources) -> int:
        """How many trials needing ``res`` this node holds at once."""
        fit = int(self.cpu // res.cpu)
        return min(fit, int(self.gpu // res.gpu)) if res.gpu else fit


def alive_nodes() -> list[Node]:
    return [
        Node(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def autoscaler_configured() -> bool | None:
    """Whether the cluster can add nodes; None when Ray does not say (e.g. its v2 autoscaler).

    Read from the autoscaler's status in Ray's KV store (private API, Ray 2.60): a cluster
    started by hand with ``ray start`` runs the autoscaler with a read-only provider, whose
    node types are named after the node ids themselves.
    """
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not raw:
        return None
    mapping: dict[str, str] = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if not mapping:
        return None
    return not all(node_type == f"node_{node_id}" for node_id, node_type in mapping.items())


def _shortfall(res: Resources, nodes: list[Node]) -> str | None:
    if any(node.fits(res) for node in nodes):
        return None
    largest = max(nodes, key=lambda n: (n.gpu, n.cpu), default=Node("", 0.0, 0.0))
    return (
        f"resources: a trial needs {res.cpu:g} CPU and {res.gpu:g} GPU on one node, but the largest node "
        f"has {largest.cpu:g} CPU and {largest.gpu:g} GPU"
    )


def check_resources(spec: StudySpec, address: str | None, pending_timeout_s: float) -> str:
    """Refuse or wait for trials no node can hold; return the concurrency arithmetic to print."""
    res = spec.resources
    nodes = alive_nodes()
    missing = _shortfall(res, nodes)
    if missing and address is None:
        raise ConfigError(missing)  # a local Ray never grows
    if missing and autoscaler_configured() is False:
        raise ConfigError(f"{missing}, and this cluster has no autoscaler to add such a node")
    if missing:
        nodes = _wait_for_node(res, missing, pending_timeout_s)
    fit = sum(node.fits(res) for node in nodes)
    concurrency = min(fit, spec.search.max_concurrent)
    cpus, gpus = sum(n.cpu for n in nodes), sum(n.gpu for n in nodes)
    return (
        f"cluster: {len(nodes)} node(s), {cpus:g} CPU, {gpus:g} GPU; each trial takes {res.cpu:g} CPU, {res.gpu:g} GPU "
        f"→ {fit} fit at once, max_concurrent {spec.search.max_concurrent} → {concurrency} trial(s) at a time"
    )


def _wait_for_node(res: Resources, missing: str, timeout_s: float) -> list[Node]:
    from ray.autoscaler.sdk import request_resources

    log.warning("%s; asking the autoscaler for one and waiting up to %.0f s (--pending-timeout)", missing, timeout_s)
    bundle = {"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}
    request_resources(bundles=[bundle])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            nodes = alive_nodes()
            if _shortfall(res, nodes) is None:
                return nodes
    finally:
        request_resources(bundles=[])  # from here on, pending trials drive the autoscaler
    raise ConfigError(f"{missing}, and no such node joined within --pending-timeout {timeout_s:g} s")


def _sees(path: str) -> bool:
    return os.path.isfile(path)


def check_results_shared(results: str) -> None:
    """On a multi-node cluster, refuse a results folder that some node cannot see.

    URIs (``s3://``, ``gs://``…) go through Tune's own file system layer and are not probed.
    """
    if "://" in results:
        return
    nodes = alive_nodes()
    if len(nodes) < 2:
        if autoscaler_configured():
            log.warning(
                "--results %s is a local folder; nodes the autoscaler adds later must see it too "
                "(a shared file system), or pass an s3:// or gs:// URI",
                results,
            )
        return
    folder = Path(results)
    marker = folder / f".fishtune-shared-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text("fishtune: is this folder shared by every node?\n")
    except OSError as exc:
        raise ConfigError(f"--results {results}: cannot write there ({exc.strerror})") from None
    try:
        blind = [node.node_id for node, seen in zip(nodes, _probe(nodes, str(marker)), strict=True) if not seen]
    finally:
        marker.unlink()
    if blind:
        raise ConfigError(
            f"--results {results}: a folder that {len(blind)} of {len(nodes)} nodes cannot see "
            f"(e.g. node {blind[0][:12]}); on a multi-node cluster pass a shared folder (NFS) or an s3:// or gs:// URI"
        )


def _probe(nodes: list[Node], path: str) -> list[bool]:
    """Whether each node sees ``path``: a zero-CPU task pinned to each node."""
    probe: Any = ray.remote(num_cpus=0)(_sees)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote(path)
        for node in nodes
    ]
    try:
        return list(ray.get(refs, timeout=PROBE_TIMEOUT_S))
    except (GetTimeoutError, RayError) as exc:  # a node died or hangs: the folder cannot be vouched for
        raise ConfigError(
            f"--results: could not check from every node that {path} is visible ({type(exc).__name__}); "
            "retry, or pass an s3:// or gs:// URI"
        ) from None
