"""A trial's data set as an MLflow dataset input: its name, digest, source and split sizes.

Described on the driver's MLflow writer thread, once per data config (the driver already made the
data available, ``study.launcher.prepare_data``), and logged with the trial's other writes. MLflow
keeps one dataset per (name, digest) in an experiment, with the profile it was first logged with,
so a split of other sizes gets its own name; label noise and split seed are the run's params. The digest is the archive's SHA-256 where there is
an archive, else one of the arrays, cut to the 36 characters MLflow's SQL stores hold.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag

from trainables.config import DataConfig
from trainables.data import dataset_info, split_sizes

MAX_DIGEST_CHARS = 36  # the digest column of MLflow's SQL stores
CONTEXT = "training"  # MLflow's mlflow.data.context tag of the input


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """What the run's dataset input holds."""

    name: str
    digest: str
    source_type: str
    source: str
    profile: str

    def to_input(self) -> DatasetInput:
        dataset = Dataset(self.name, self.digest, self.source_type, self.source, profile=self.profile)
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", CONTEXT)])


def dataset_record(data: DataConfig) -> DatasetRecord:
    return _record(data.name, data.val_fraction, data.train_size, data.cache_dir)


@functools.cache
def _record(name: str, val_fraction: float, train_size: int | None, cache_dir: str) -> DatasetRecord:
    info = dataset_info(name)
    raw = info.loader(info, cache_dir)
    n_train, n_val = split_sizes(len(raw.y), val_fraction, train_size)
    sizes = {"train": n_train, "val": n_val, "test": len(raw.test_y)}
    default = DataConfig()
    own_split = train_size is not None or val_fraction != default.val_fraction
    if info.archive is not None:
        sha256, source_type, source = info.archive.sha256, "http", {"url": info.archive.url}
    else:
        sha256, source_type, source = _arrays_sha256(raw.x, raw.y, raw.test_x, raw.test_y), "code", {"loader": name}
    profile: dict[str, Any] = {
        **sizes,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "sha256": sha256,
        "val_fraction": val_fraction,
    }
    return DatasetRecord(
        name=f"{name} train={n_train} val={n_val}" if own_split else name,
        digest=sha256[:MAX_DIGEST_CHARS],
        source_type=source_type,
        source=json.dumps(source),
        profile=json.dumps(profile),
    )


def _arrays_sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str((a.dtype.str, a.shape)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()
