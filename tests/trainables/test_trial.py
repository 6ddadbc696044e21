"""A trial's set-up and its random streams."""

from __future__ import annotations

import pytest
import torch

from trainables import trial as trial_module
from trainables.config import TrialConfig
from trainables.trial import Trial, seeded_generator

STREAMS = (
    trial_module.DATA_ORDER,
    trial_module.PENALTY_LABELS,
    trial_module.AUGMENT,
    trial_module.HESSIAN_PROBES,
    trial_module.FISHER_LABELS,
)


def test_the_step_0_labels_do_not_reuse_the_probe_permutation_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """data.seed = train.seed = 0 by default, and SeedSequence pads keys with zeros: a key
    (seed, step) at step 0 is the probe's (seed,)."""
    cfg = TrialConfig.from_mapping({"model": {"name": "mlp", "hidden": 8, "depth": 1}, "fisher": {"samples": 8}})
    assert cfg.data.seed == cfg.train.seed
    trial = Trial.set_up(cfg, torch.device("cpu"))
    seeds: list[int] = []
    measured = trial_module.fisher_trace

    def spy(*args, generator: torch.Generator, **kwargs):  # type: ignore[no-untyped-def]
        seeds.append(generator.initial_seed())
        return measured(*args, generator=generator, **kwargs)

    monkeypatch.setattr(trial_module, "fisher_trace", spy)
    trial.measure(step=0)
    assert seeds and seeded_generator(cfg.data.seed).initial_seed() not in seeds


def test_every_stream_has_its_own_nonzero_tag() -> None:
    assert len(set(STREAMS)) == len(STREAMS) and 0 not in STREAMS
    keys = [(0, 0, tag) for tag in STREAMS] + [(0,)]
    assert len({seeded_generator(*key).initial_seed() for key in keys}) == len(keys)
