"""Tiny CIFAR archives in the official python format, a registry entry that accepts them, and
helpers to place them in a cache folder and load them (shared by test_data and test_archives).

The layout is that of cifar-10-python.tar.gz / cifar-100-python.tar.gz: a gzipped tar of
pickled dicts whose b"data" is uint8 (N, 3072) (R, G, B planes of 32×32, row-major) and whose
labels are lists of ints (b"labels"; CIFAR-100: b"fine_labels" and b"coarse_labels").
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from trainables import data


@dataclass(frozen=True)
class TinyArchive:
    path: Path
    train_x: np.ndarray  # (N, 3, 32, 32) uint8, in archive order
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    coarse_train_y: np.ndarray | None  # CIFAR-100 only

    def registry_entry(self, name: str, url: str | None = None) -> data.DatasetInfo:
        """``name``'s registry entry, with checksums (and optionally the URL) of this archive."""
        blob = self.path.read_bytes()
        info = data.DATASETS[name]
        assert info.archive is not None
        archive = dataclasses.replace(
            info.archive,
            size=len(blob),
            md5=hashlib.md5(blob).hexdigest(),
            sha256=hashlib.sha256(blob).hexdigest(),
            url=url or info.archive.url,
        )
        return dataclasses.replace(info, archive=archive)

    def install(self, monkeypatch: pytest.MonkeyPatch, name: str, url: str | None = None) -> None:
        monkeypatch.setitem(data.DATASETS, name, self.registry_entry(name, url))


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _add(tar: tarfile.TarFile, name: str, obj: object) -> None:
    blob = pickle.dumps(obj, protocol=2)  # as the official files (Python 2 cPickle)
    member = tarfile.TarInfo(name)
    member.size = len(blob)
    tar.addfile(member, io.BytesIO(blob))


def write_cifar10(folder: Path, per_batch: int = 20, seed: int = 0) -> TinyArchive:
    rng = np.random.default_rng(seed)
    batches = [(_images(rng, per_batch), rng.integers(0, 10, per_batch)) for _ in range(6)]
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
        for i, (x, y) in enumerate(batches):
            member = f"data_batch_{i + 1}" if i < 5 else "test_batch"
            names = [f"image_{i}_{j}.png".encode() for j in range(len(y))]
            batch = {b"batch_label": member.encode(), b"labels": [int(v) for v in y], b"data": x, b"filenames": names}
            _add(tar, f"cifar-10-batches-py/{member}", batch)
    train_x = np.concatenate([x for x, _ in batches[:5]]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([y for _, y in batches[:5]])
    test_x, test_y = batches[5]
    return TinyArchive(path, train_x, train_y, test_x.reshape(-1, 3, 32, 32), test_y, None)


def write_cifar100(folder: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> TinyArchive:
    rng = np.random.default_rng(seed)
    splits = {}
    path = folder / "cifar-100-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-100-python/meta", {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20})
        for member, n in (("train", n_train), ("test", n_test)):
            x, fine, coarse = _images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
            batch = {
                b"filenames": [f"{member}_{j}.png".encode() for j in range(n)],
                b"batch_label": member.encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": x,
            }
            _add(tar, f"cifar-100-python/{member}", batch)
            splits[member] = x.reshape(-1, 3, 32, 32), fine, coarse
    (train_x, train_y, coarse_y), (test_x, test_y, _) = splits["train"], splits["test"]
    return TinyArchive(path, train_x, train_y, test_x, test_y, coarse_y)


def installed_cifar10(folder: Path, monkeypatch: pytest.MonkeyPatch) -> TinyArchive:
    """A tiny CIFAR-10 archive (5 × 20 train + 20 test images) written in ``folder``/src and
    registered as "cifar10"."""
    (folder / "src").mkdir()
    archive = write_cifar10(folder / "src")
    archive.install(monkeypatch, "cifar10")
    return archive


def placed(archive: TinyArchive, cache: Path) -> Path:
    """The archive put in the cache folder by hand, as on an offline machine."""
    cache.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(archive.path, cache))


def cifar_splits(name: str, cache: Path, seed: int = 0) -> data.Splits:
    return data.load(name, val_fraction=0.1, label_noise=0.0, seed=seed, cache_dir=str(cache))
