"""Data sets as whole tensors on the trial's device (no DataLoader workers).

Each data set is a registry entry with its input shape, class count and the default ε of the
early-Fisher rule (the train loss at which Tr(F) is read; see docs). Splits: a fixed test set
(the same for every trial, only ever evaluated: CIFAR's official test batch, a fixed 20% of
digits), and a train/val split of the rest seeded by ``data.seed``. Inputs are standardised per
channel with statistics of the training split.

CIFAR comes from the official python-format archives, downloaded once into ``data.cache_dir``
(atomically: a temporary file in the same folder, then ``os.replace``). An archive is checked
against its published size, MD5 and SHA-256 before anything in it is decompressed or unpickled,
then decoded once into a ``.npz`` beside it that later trials read without pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.schema import ConfigError

logger = logging.getLogger(__name__)

TEST_SPLIT_SEED = 20210101  # fixed: every trial of every study sees the same test images
DOWNLOAD_TIMEOUT_S = 60  # per socket operation, not for the whole download
_CHUNK = 1 << 20
_DECODED_KEYS = ("train_x", "train_y", "test_x", "test_y")


class DataUnavailable(ConfigError):
    """A data set cannot be had here (offline, unwritable cache): the message says where to put it."""


class ChecksumMismatch(DataUnavailable):
    """An archive is not the official one; it was never opened."""


@dataclass(frozen=True, slots=True)
class Archive:
    """An official download: where it comes from, what it must hash to, and what to read in it."""

    url: str
    filename: str
    size: int  # bytes
    md5: str
    sha256: str
    train_members: tuple[str, ...]
    test_member: str
    label_key: bytes


@dataclass(frozen=True, slots=True)
class RawData:
    """A data set before splitting: the pool that train and val are drawn from, and the fixed
    test set. x is (N, C, H, W), float32 in [0, 1] or uint8 in [0, 255] (converted per split)."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    loader: Callable[[DatasetInfo, str], RawData]  # (this entry, data.cache_dir)
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int
    default_epsilon: float
    archive: Archive | None = None  # None: shipped with a package, nothing to download
    augment: bool = False  # whether data.augment (random crop + flip) is offered


@dataclass(frozen=True, slots=True)
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    noisy_indices: torch.Tensor  # indices into the train split whose labels were corrupted


def _load_digits(info: DatasetInfo, cache_dir: str) -> RawData:
    """scikit-learn's 8×8 digits (1797 images), shipped inside scikit-learn: no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(y))
    n_test = round(0.2 * len(y))
    test, pool = order[:n_test], order[n_test:]
    return RawData(x=x[pool], y=y[pool], test_x=x[test], test_y=y[test])


def _load_cifar(info: DatasetInfo, cache_dir: str) -> RawData:
    assert info.archive is not None
    a = _arrays(info.archive, _root(cache_dir))
    return RawData(x=a["train_x"], y=a["train_y"], test_x=a["test_x"], test_y=a["test_y"])


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
# Sizes and MD5s as published on https://www.cs.toronto.edu/~kriz/cifar.html; the SHA-256s are
# those pinned by torchvision (prototype datasets, cifar.py) and Keras (datasets/cifar10.py,
# cifar100.py) for the same URLs.
CIFAR10_ARCHIVE = Archive(
    url=_TORONTO + "cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    size=170_498_071,
    md5="c58f30108f718f92721af3b95e74349a",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    train_members=tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    test_member="cifar-10-batches-py/test_batch",
    label_key=b"labels",
)
CIFAR100_ARCHIVE = Archive(
    url=_TORONTO + "cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz",
    size=169_001_437,
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    train_members=("cifar-100-python/train",),
    test_member="cifar-100-python/test",
    label_key=b"fine_labels",  # 100 classes; the 20 coarse super-classes are not used
)

DATASETS: dict[str, DatasetInfo] = {
    # ε = 0.6 on digits: the pilot (notes/pilot.md) found 1.2 is crossed inside epoch 1 while
    # Tr(F) is still rising; 0.6 lands near the peak. No augmentation: a flipped digit is
    # another shape, and a 4-px shift is half of an 8×8 image.
    "digits": DatasetInfo(_load_digits, (1, 8, 8), 10, default_epsilon=0.6),
    # ε from the paper (Section 3): 1.2 on CIFAR-10, 3.5 on CIFAR-100.
    "cifar10": DatasetInfo(_load_cifar, (3, 32, 32), 10, 1.2, archive=CIFAR10_ARCHIVE, augment=True),
    "cifar100": DatasetInfo(_load_cifar, (3, 32, 32), 100, 3.5, archive=CIFAR100_ARCHIVE, augment=True),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"data.name: unknown data set {name!r}; choose one of {sorted(DATASETS)}") from None


def load(
    name: str,
    *,
    val_fraction: float,
    label_noise: float,
    seed: int,
    cache_dir: str,
    train_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Splits:
    """Load, split, subsample (``train_size``), corrupt (label noise on train only),
    standardise and move to ``device``."""
    info = dataset_info(name)
    raw = info.loader(info, cache_dir)
    order = np.random.default_rng(seed).permutation(len(raw.y))
    n_val = max(1, round(val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_size is not None:  # the first train_size of the seeded order: nested across sizes
        train_idx = train_idx[:train_size]

    train_y = raw.y[train_idx].copy()
    noisy = _corrupt(train_y, label_noise, info.num_classes, seed)

    train_x = _unit(raw.x[train_idx])
    mean = train_x.mean(axis=(0, 2, 3), keepdims=True)
    std = train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-8

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device)

    def standardised(x: np.ndarray) -> torch.Tensor:  # x: a fresh float32 copy
        x -= mean  # in place: a CIFAR split is hundreds of MB in float32
        x /= std
        return tensor(x)

    return Splits(
        train_x=standardised(train_x),
        train_y=tensor(train_y),
        val_x=standardised(_unit(raw.x[val_idx])),
        val_y=tensor(raw.y[val_idx]),
        test_x=standardised(_unit(raw.test_x)),
        test_y=tensor(raw.test_y),
        num_classes=info.num_classes,
        noisy_indices=torch.as_tensor(noisy),
    )


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A random ``pad``-px shift (crop of the zero-padded image) and a horizontal flip with
    probability 1/2, independently per image of ``x`` (B, C, H, W), on ``x``'s device.

    Draws come from the CPU ``generator`` alone, so a trial's batches do not depend on the
    device. ``x`` is standardised, so the zero padding is the training mean colour."""
    n, c, h, w = x.shape
    shift = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator).to(x.device)
    flip = (torch.rand(n, 1, generator=generator) < 0.5).to(x.device)
    rows = shift[0] + torch.arange(h, device=x.device)  # (B, H) rows of the padded image
    cols = torch.arange(w, device=x.device)
    cols = shift[1] + torch.where(flip, w - 1 - cols, cols)  # (B, W), mirrored where flipped
    out = F.pad(x, (pad, pad, pad, pad)).gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # two 1-D gathers: 3× faster than one 2-D index


def ensure_available(name: str, cache_dir: str) -> None:
    """Download and verify data set ``name`` into ``cache_dir`` unless it is there already
    (nothing to do for embedded data sets). Raises :class:`DataUnavailable` when it cannot."""
    info = dataset_info(name)
    if info.archive is not None and not _decoded_path(info.archive, _root(cache_dir)).is_file():
        _arrays(info.archive, _root(cache_dir))


def check_cache_dir(name: str, cache_dir: str) -> None:
    """Refuse a ``data.cache_dir`` that cannot receive ``name``'s download (without writing).

    A folder that already holds the decoded cache or the archive may be read-only (a cache
    prepared for a cluster); otherwise the folder, or its nearest existing parent, must be
    writable. Relative paths are refused: every trial runs in a working directory of its own."""
    info = dataset_info(name)
    if info.archive is None:
        return
    if not (cache_dir.startswith("~") or os.path.isabs(cache_dir)):
        raise ConfigError(
            f"data.cache_dir: must be an absolute path or start with ~ (trials run in their own "
            f"working directories), got {cache_dir!r}"
        )
    root = _root(cache_dir)
    ready = (_decoded_path(info.archive, root), root / info.archive.filename)
    if any(p.is_file() and os.access(p, os.R_OK) for p in ready):
        return
    existing = root
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:  # e.g. a parent folder that cannot be searched
        raise ConfigError(f"data.cache_dir: cannot inspect {existing} ({exc.strerror})") from None
    if not existing.is_dir():
        raise ConfigError(f"data.cache_dir: {existing} is not a folder, so {root} cannot hold the {name} download")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == root else f"cannot be created ({existing} is not writable)"
        raise ConfigError(
            f"data.cache_dir: {root} {what}; choose a writable folder, or place {info.archive.filename} in it by hand"
        )


def _root(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser()


def _decoded_path(archive: Archive, root: Path) -> Path:
    """The decoded cache, named after the archive's checksum (a different archive, another file)."""
    return root / f"{archive.filename.removesuffix('.tar.gz')}.{archive.sha256[:16]}.npz"


def _arrays(archive: Archive, root: Path) -> dict[str, np.ndarray]:
    """train_x, train_y, test_x, test_y from the decoded cache, else from the verified archive
    (downloaded if absent), then cached."""
    decoded = _decoded_path(archive, root)
    if decoded.is_file():
        return _read_decoded(decoded)
    path = root / archive.filename
    if not path.is_file():
        _download(archive, path)
    with open(path, "rb") as f:  # one handle: the bytes verified are the bytes decoded
        _verify(archive, path, *_digests(f))
        f.seek(0)
        arrays = _decode(archive, f)
    _write_decoded(decoded, arrays)
    return arrays


def _digests(f: IO[bytes]) -> tuple[int, str, str]:
    size, md5, sha256 = 0, hashlib.md5(usedforsecurity=False), hashlib.sha256()
    while chunk := f.read(_CHUNK):
        size += len(chunk)
        md5.update(chunk)
        sha256.update(chunk)
    return size, md5.hexdigest(), sha256.hexdigest()


def _verify(archive: Archive, path: Path, size: int, md5: str, sha256: str, downloaded: bool = False) -> None:
    if (size, md5, sha256) == (archive.size, archive.md5, archive.sha256):
        return
    got = f"got {size} bytes, MD5 {md5}, SHA-256 {sha256}"
    expected = f"expected {archive.size} bytes, MD5 {archive.md5}, SHA-256 {archive.sha256}"
    if downloaded:
        raise ChecksumMismatch(
            f"the download of {archive.url} is not the official archive ({got}; {expected}) and was discarded; "
            f"run again, or place the official file at {path} by hand"
        )
    raise ChecksumMismatch(
        f"{path} is not the official archive and was not opened ({got}; {expected}); "
        f"delete it to download it again from {archive.url}"
    )


def _download(archive: Archive, path: Path) -> None:
    """Fetch ``archive`` to ``path`` through a verified temporary file in the same folder, so
    concurrent trials never see a partial file (and concurrent downloads are harmless)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{archive.filename}.", suffix=".part")
    except OSError as exc:
        raise DataUnavailable(f"data.cache_dir: cannot write into {path.parent} ({exc.strerror})") from None
    logger.info("downloading %s to %s", archive.url, path)
    try:
        size, md5, sha256 = 0, hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(archive.url, headers={"User-Agent": "fishtune"})
                with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    while chunk := response.read(_CHUNK):
                        _write(out, chunk, path)
                        size += len(chunk)
                        md5.update(chunk)
                        sha256.update(chunk)
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                reason = getattr(exc, "reason", None) or exc
                raise DataUnavailable(
                    f"cannot download {archive.url} ({reason}); on a machine without internet access, "
                    f"download it elsewhere and place it at {path}"
                ) from None
        _verify(archive, path, size, md5.hexdigest(), sha256.hexdigest(), downloaded=True)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write(out: IO[bytes], chunk: bytes, path: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise DataUnavailable(f"data.cache_dir: cannot write {path} ({exc.strerror})") from None


class _NumpyUnpickler(pickle.Unpickler):
    """Only what CIFAR's pickles hold (dicts, lists, bytes, numpy arrays): defence in depth, as
    the archive's checksums were verified before this runs."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # how the official (numpy 1) pickles name it
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _decode(archive: Archive, f: IO[bytes]) -> dict[str, np.ndarray]:
    """Read the verified archive in one pass (stream mode: no seeking back in the gzip)."""
    wanted = {*archive.train_members, archive.test_member}
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(fileobj=f, mode="r|gz") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.name in wanted else None
            if handle is not None:
                batch = _NumpyUnpickler(handle, encoding="bytes").load()
                x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
                batches[member.name] = x, np.asarray(batch[archive.label_key], dtype=np.int64)
    missing = sorted(wanted - set(batches))
    if missing:
        raise DataUnavailable(f"{archive.filename} has no member {missing[0]}")
    train = [batches[m] for m in archive.train_members]
    test_x, test_y = batches[archive.test_member]
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
    }


def _write_decoded(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically, like the download; a read-only cache folder only costs a decode per trial."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        logger.warning("cannot cache the decoded data in %s (%s); decoding the archive every time", path, exc)
        return
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **{k: arrays[k] for k in _DECODED_KEYS}, allow_pickle=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _read_decoded(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _DECODED_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataUnavailable(f"{path} cannot be read ({exc}); delete it to decode the archive again") from None
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.shape[1:] != (3, 32, 32) or y.shape != (len(x),):
            raise DataUnavailable(f"{path} holds unexpected arrays; delete it to decode the archive again")
    return arrays


def _unit(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: a copy, so callers may work in place."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)  # one pass, no float copy first
    return x.astype(np.float32, copy=True)


def _corrupt(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Replace a seeded ``fraction`` of ``labels`` in place by a different, uniform class."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 1])
    idx = np.sort(rng.choice(len(labels), size=round(fraction * len(labels)), replace=False))
    shift = rng.integers(1, num_classes, size=len(idx))
    labels[idx] = (labels[idx] + shift) % num_classes
    return idx.astype(np.int64)
