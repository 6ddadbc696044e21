"""Official data-set archives: downloaded once, verified, decoded once into a pickle-free cache.

The security rule: an archive's bytes are checked against its published size, MD5 and SHA-256
before anything in it is decompressed or unpickled, and the bytes checked are the bytes decoded
(one open file handle). Unpickling then goes through a restricted unpickler that only builds
dicts, lists, bytes and numpy arrays (defence in depth). The decoded arrays are cached in a
``.npz`` named after the archive's SHA-256 and read back with ``allow_pickle=False``. Every write
into the cache folder is atomic (a temporary file in the same folder, then ``os.replace``), so
concurrent trials never see a partial file and concurrent downloads are harmless.

Public surface: :class:`Archive` (what to fetch and what it must hash to),
:func:`fetch_arrays`, :func:`ensure_decoded`, :func:`check_cache_dir`, :func:`write_cache` and
:func:`read_cache` (also used by generated data sets), :class:`DownloadProgress`
(the INFO lines a download logs), and the errors
:class:`DataUnavailable` and :class:`ChecksumMismatch`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainables.schema import ConfigError

logger = logging.getLogger(__name__)

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
    num_classes: int


def fetch_arrays(archive: Archive, cache_dir: str) -> dict[str, np.ndarray]:
    """train_x, train_y, test_x, test_y from the decoded cache in ``cache_dir``, else from the
    verified archive (downloaded if absent), then cached."""
    root = cache_root(cache_dir)
    decoded = _decoded_path(archive, root)
    path = root / archive.filename
    if decoded.is_file():
        try:
            return read_cache(decoded, np.uint8, (3, 32, 32), "decode the archive again", archive.num_classes)
        except DataUnavailable as exc:
            if not path.is_file():
                raise
            logger.warning("%s; decoding the verified archive beside it again", exc)
    if not path.is_file():
        _download(archive, path)
    with open(path, "rb") as f:  # one handle: the bytes verified are the bytes decoded
        _verify(archive, path, *_digests(f))
        f.seek(0)
        arrays = _decode(archive, f)
    write_cache(decoded, arrays)
    return arrays


def ensure_decoded(archive: Archive, cache_dir: str) -> None:
    """Download, verify and decode ``archive`` into ``cache_dir`` unless its decoded cache is
    there already. Raises :class:`DataUnavailable` when it cannot."""
    if not _decoded_path(archive, cache_root(cache_dir)).is_file():
        fetch_arrays(archive, cache_dir)


def require_absolute(cache_dir: str) -> None:
    """Refuse a relative ``data.cache_dir``: every trial runs in a working directory of its own,
    so each would download or generate the data set again into its own."""
    if not (cache_dir.startswith("~") or os.path.isabs(cache_dir)):
        raise ConfigError(
            f"data.cache_dir: must be an absolute path or start with ~ (trials run in their own "
            f"working directories), got {cache_dir!r}"
        )


def check_cache_dir(archive: Archive, cache_dir: str, *, dataset: str) -> None:
    """Refuse a ``data.cache_dir`` that cannot receive ``archive`` (without writing); ``dataset``
    names the data set in the message.

    A folder that already holds the decoded cache or the archive may be read-only (a cache
    prepared for a cluster); otherwise the folder, or its nearest existing parent, must be
    writable. Relative paths are refused: every trial runs in a working directory of its own."""
    require_absolute(cache_dir)
    root = cache_root(cache_dir)
    ready = (_decoded_path(archive, root), root / archive.filename)
    if any(p.is_file() and os.access(p, os.R_OK) for p in ready):
        return
    existing = root
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:  # e.g. a parent folder that cannot be searched
        raise ConfigError(f"data.cache_dir: cannot inspect {existing} ({exc.strerror})") from None
    if not existing.is_dir():
        raise ConfigError(f"data.cache_dir: {existing} is not a folder, so {root} cannot hold the {dataset} download")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == root else f"cannot be created ({existing} is not writable)"
        raise ConfigError(
            f"data.cache_dir: {root} {what}; choose a writable folder, or place {archive.filename} in it by hand"
        )


def cache_root(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser()


def _decoded_path(archive: Archive, root: Path) -> Path:
    """The decoded cache, named after the archive's checksum (a different archive, another file)."""
    return root / f"{archive.filename.removesuffix('.tar.gz')}.{archive.sha256[:16]}.npz"


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
    logger.info("downloading %s (%.0f MB) to %s", archive.url, archive.size / 1e6, path)
    progress = DownloadProgress(archive.filename, archive.size)
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
                        progress.update(size)
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


class DownloadProgress:
    """One INFO line each time a download passes another tenth of its expected size."""

    def __init__(self, name: str, total: int, steps: int = 10) -> None:
        self.name, self.total, self.steps = name, total, steps
        self._shown = 0  # tenths shown so far

    def update(self, done: int) -> None:
        reached = min(self.steps, done * self.steps // max(self.total, 1))
        if reached > self._shown:
            self._shown = reached
            logger.info(
                "%s: %.1f of %.1f MB (%d %%)", self.name, done / 1e6, self.total / 1e6, 100 * reached // self.steps
            )


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


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` (train_x, train_y, test_x, test_y) into the ``.npz`` at ``path``, atomically like
    the download; a read-only cache folder only costs a decode (or a generation) per trial."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        logger.warning("cannot cache the data set in %s (%s); it is rebuilt for every trial", path, exc)
        return
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **{k: arrays[k] for k in _DECODED_KEYS}, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename: a node crash leaves no empty cache
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: the arrays in memory are still good
        logger.warning("cannot cache the data set in %s (%s); it is rebuilt for every trial", path, exc)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_cache(path: Path, dtype: type, shape: tuple[int, ...], again: str, num_classes: int) -> dict[str, np.ndarray]:
    """The arrays :func:`write_cache` stored at ``path``, checked to be inputs of ``dtype`` and
    per-example ``shape`` with one label in [0, ``num_classes``) each, and a training split that is
    not empty; else :class:`DataUnavailable` naming the file and what deleting it does (``again``,
    e.g. "decode the archive again")."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _DECODED_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataUnavailable(f"{path} cannot be read ({exc}); delete it to {again}") from None
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != dtype or x.shape[1:] != shape or y.shape != (len(x),):
            raise DataUnavailable(f"{path} holds unexpected arrays; delete it to {again}")
        if len(y) and not (y.min() >= 0 and y.max() < num_classes):
            raise DataUnavailable(f"{path} holds labels outside 0–{num_classes - 1}; delete it to {again}")
    if not len(arrays["train_y"]):
        raise DataUnavailable(f"{path} holds no training example; delete it to {again}")
    return arrays
