"""Fault injection for end-to-end tests, loaded at interpreter start-up when this folder is on
PYTHONPATH (so in the driver and in every Ray worker it starts) and FISHTUNE_TEST_FAULT is set.

``FISHTUNE_TEST_FAULT=model_raises`` registers a model ``boom``: an MLP that passes the spec's
eval-mode shape check but raises in every training-mode forward, a deterministic trial failure.
"""

import os

if os.environ.get("FISHTUNE_TEST_FAULT") == "model_raises":
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
