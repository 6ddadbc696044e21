"""MNIST-1D (Greydanus, 2020), generated here with the ``mnist1d`` package: nothing is downloaded.

The package's ``make_dataset`` builds 1-D signals of length 40 from ten digit-like templates
(padding, shear, translation, correlated and i.i.d. noise; then the whole set standardised).
With the arguments of :data:`GENERATOR` — the package's own defaults, whose ``seed`` 42 gives
the set its authors publish — it yields 4,000 training and 1,000 test signals. The generator
seed is fixed, not the spec's ``data.seed``: every trial of every study sees the same signals
and the same test split, as with CIFAR's official test batch; ``data.seed`` draws the
validation split and the label noise from the 4,000, as for the other sets.

``make_dataset`` seeds numpy's and Python's global random generators; their states are restored
afterwards, so loading the data does not change what a caller draws from them. The arrays are
cached per node in ``data.cache_dir`` (a ``.npz`` named after the generator's arguments, written
atomically) so that a node generates them once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from trainables.archives import DataUnavailable, cache_root, read_cache, write_cache

logger = logging.getLogger(__name__)
NUM_CLASSES = 10

SIGNAL_LENGTH = 40
GENERATOR: dict[str, Any] = {  # mnist1d.data.get_dataset_args() of mnist1d 0.0.2, without its download URL
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": SIGNAL_LENGTH,
    "seed": 42,
}


def arrays(cache_dir: str) -> dict[str, np.ndarray]:
    """train_x (4000, 1, 40) float32, train_y (4000,) int64, test_x, test_y: from the node's cache,
    else generated (a few seconds) and cached."""
    path = cache_path(cache_dir)
    if path.is_file():
        try:
            return read_cache(path, np.float32, (1, SIGNAL_LENGTH), "generate MNIST-1D again", NUM_CLASSES)
        except DataUnavailable as exc:  # generated here and deterministic: generate it again
            logger.warning("%s; generating it again", exc)
    generated = generate(GENERATOR)
    with contextlib.suppress(OSError):  # an unwritable folder: write_cache says so and moves on
        path.parent.mkdir(parents=True, exist_ok=True)
    write_cache(path, generated)
    return generated


def cache_path(cache_dir: str) -> Path:
    digest = hashlib.sha256(json.dumps(GENERATOR, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"mnist1d.{digest}.npz"


def generate(arguments: dict[str, Any]) -> dict[str, np.ndarray]:
    """The package's ``make_dataset`` with ``arguments``, leaving the global generators as they were."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(ObjectView(dict(arguments)))
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    def signals(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)[:, None, :]  # one channel

    return {
        "train_x": signals(made["x"]),
        "train_y": made["y"].astype(np.int64),
        "test_x": signals(made["x_test"]),
        "test_y": made["y_test"].astype(np.int64),
    }
