"""Fault injection for end-to-end tests, loaded at interpreter start-up when this folder is on
PYTHONPATH (so in the driver and in every Ray worker it starts) and FISHTUNE_TEST_FAULT is set.

``model_raises`` registers a model ``boom``: an MLP that passes the spec's eval-mode shape check
but raises in every training-mode forward, a deterministic trial failure.

``kill_worker_once`` makes the process running a trial SIGKILL itself in the middle of its
optimizer step number ``FISHTUNE_TEST_KILL_AT_STEP`` (counted in that process), once per test:
the file ``FISHTUNE_TEST_FAULT_MARKER`` records that it happened, so the restarted trial and
the other trials run normally.
"""

import os

FAULT = os.environ.get("FISHTUNE_TEST_FAULT")

if FAULT == "model_raises":
    import torch

    from trainables import models

    class Boom(torch.nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                raise RuntimeError("injected fault: this model cannot train")
            return super().forward(x)

    def boom(opts, input_shape, num_classes):  # type: ignore[no-untyped-def]
        return Boom(*models.mlp(opts, input_shape, num_classes))

    models.MODELS["boom"] = models.ModelEntry(boom, models.MLPOptions)

if FAULT == "kill_worker_once":
    import signal
    from pathlib import Path

    import torch

    marker = Path(os.environ["FISHTUNE_TEST_FAULT_MARKER"])
    kill_at = int(os.environ["FISHTUNE_TEST_KILL_AT_STEP"])
    sgd_step = torch.optim.SGD.step
    steps = [0]

    def step_or_die(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        steps[0] += 1
        if steps[0] == kill_at and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return sgd_step(self, *args, **kwargs)

    torch.optim.SGD.step = step_or_die
