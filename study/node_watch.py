"""Stop a study whose Ray has no live node left, instead of letting it wait for ever.

When Ray's GCS marks a node dead (its raylet crashed, or missed every health check for a minute
on a machine too loaded to answer), Tune does not stop: it keeps stepping with zero cluster
resources, logs "Cluster resources not detected or are 0", and its trials stay pending for
ever. A dead node never comes back (a new raylet registers under a new id), so once no node is
alive the study cannot go on: this says so and ends the launch, whose saved state
``fishtune resume`` continues on a new Ray. A cluster that merely waits for its autoscaler
still has its head node alive and is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.tune import Callback

from study.exit_codes import CannotGoOn

log = logging.getLogger(__name__)

# How often the driver asks the GCS for its node table (one small RPC) while Tune steps.
CHECK_INTERVAL_S = 5.0


class RayNodesLost(CannotGoOn):
    """Every node of the study's Ray is dead: no trial can run on it again."""


def death_line(node: dict[str, Any]) -> str:
    """What the GCS says about one dead node, in one line."""
    where = node.get("NodeManagerAddress") or "unknown address"
    why = str(node.get("DeathReasonMessage") or node.get("DeathReason") or "").strip().splitlines()
    return f"node {str(node.get('NodeID', '?'))[:12]} at {where}: {why[0] if why else 'no reason given'}"


class NodeWatch(Callback):
    """A Tune callback that raises :class:`RayNodesLost` once the node table has no live node."""

    def __init__(
        self,
        study: str,
        interval_s: float = CHECK_INTERVAL_S,
        nodes: Callable[[], list[dict[str, Any]]] = ray.nodes,
    ) -> None:
        self.study = study
        self.interval_s = interval_s
        self.nodes = nodes
        self._checked_at = float("-inf")

    def __getstate__(self) -> dict[str, Any]:
        # a monotonic clock means nothing in the process that restores this callback
        return {**self.__dict__, "_checked_at": float("-inf")}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.interval_s:
            return
        self._checked_at = now
        try:
            table = self.nodes()
        except Exception as exc:  # a GCS that does not answer once is not a dead cluster: ask again next time
            log.warning(
                "could not read Ray's node table (%s: %s); asking again in %.0f s",
                type(exc).__name__,
                exc,
                self.interval_s,
            )
            return
        if table and not any(node.get("Alive") for node in table):
            dead = "; ".join(death_line(node) for node in table)
            raise RayNodesLost(
                f"study {self.study}: Ray has no live node left ({dead}), so no trial can run; "
                f"the experiment state saved last is kept: continue with `fishtune resume {self.study}`"
            )
