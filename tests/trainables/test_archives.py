"""Archives: verified before anything is unpickled, a restricted unpickler, atomic downloads, a
decoded cache read without pickle, data.cache_dir checks. Through the public data API, with tiny
archives in the official CIFAR format."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import logging
import os
import pickle
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainables import archives, data
from trainables.config import DataConfig
from trainables.data import ChecksumMismatch, DataUnavailable, ensure_available
from trainables.schema import ConfigError

from .cifar_archive import TinyArchive, cifar_splits, installed_cifar10, placed, write_cifar10


@pytest.fixture
def tiny10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyArchive:
    return installed_cifar10(tmp_path, monkeypatch)


def test_a_corrupted_archive_is_refused_before_anything_is_unpickled(
    tiny10: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = placed(tiny10, tmp_path / "cache")
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bad)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used on an unverified archive")

    unpickled: list[int] = []
    original = archives._NumpyUnpickler.load
    monkeypatch.setattr(archives._NumpyUnpickler, "load", lambda self: unpickled.append(1) or original(self))
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ChecksumMismatch) as err:
        cifar_splits("cifar10", tmp_path / "cache")
    message, entry = str(err.value), data.DATASETS["cifar10"].archive
    assert entry is not None and str(path) in message and "delete it" in message
    assert entry.md5 in message and entry.sha256 in message  # expected
    assert hashlib.md5(bad).hexdigest() in message  # actual
    assert unpickled == [] and path.read_bytes() == bad  # never opened, and the user's file is left alone
    path.write_bytes(good)  # the control: the same code path does unpickle a verified archive
    cifar_splits("cifar10", tmp_path / "cache")
    assert len(unpickled) == 6  # five training batches and the test batch


def test_the_unpickler_refuses_anything_but_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("true",))

    tiny = write_cifar10(tmp_path)
    with tarfile.open(tiny.path, "w:gz") as tar:  # the same layout, with a poisoned test batch
        for i, member in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
            blob = pickle.dumps({b"data": tiny.train_x[:20], b"labels": Evil() if i == 5 else [0] * 20}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tiny.install(monkeypatch, "cifar10")
    with pytest.raises(pickle.UnpicklingError, match="system"):
        cifar_splits("cifar10", placed(tiny, tmp_path / "cache").parent)


def test_offline_names_the_path_to_place_the_archive_and_the_url(
    tiny10: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    tiny10.install(monkeypatch, "cifar10", url)
    cache = tmp_path / "cache"
    with pytest.raises(DataUnavailable) as err:
        ensure_available("cifar10", str(cache))
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    assert url in str(err.value) and str(cache / "cifar-10-python.tar.gz") in str(err.value)
    assert list(cache.iterdir()) == []  # no partial file left behind


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_lands_atomically_and_concurrent_downloads_agree(
    tiny10: TinyArchive, tmp_path: Path, served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, base = served
    shutil.copy(tiny10.path, folder)
    tiny10.install(monkeypatch, "cifar10", base + "cifar-10-python.tar.gz")
    cache = tmp_path / "shared" / "cache"  # created on the way
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            ensure_available("cifar10", str(cache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entry = data.DATASETS["cifar10"].archive
    assert entry is not None
    decoded = f"cifar-10-python.{entry.sha256[:16]}.npz"
    assert sorted(p.name for p in cache.iterdir()) == [decoded, "cifar-10-python.tar.gz"]  # no temporary files
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == tiny10.path.read_bytes()
    assert torch.equal(cifar_splits("cifar10", cache).test_y, torch.as_tensor(tiny10.test_y))


def test_a_download_logs_where_it_goes_and_its_progress(
    tiny10: TinyArchive,
    tmp_path: Path,
    served: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder, base = served
    shutil.copy(tiny10.path, folder)
    tiny10.install(monkeypatch, "cifar10", base + "cifar-10-python.tar.gz")
    with caplog.at_level(logging.INFO, logger="trainables.archives"):
        ensure_available("cifar10", str(tmp_path / "cache"))
    lines = [r.getMessage() for r in caplog.records if r.name == "trainables.archives"]
    assert lines[0].startswith(f"downloading {base}cifar-10-python.tar.gz") and str(tmp_path / "cache") in lines[0]
    assert lines[-1].startswith("cifar-10-python.tar.gz: ") and lines[-1].endswith("(100 %)")


def test_download_progress_is_one_line_per_tenth(caplog: pytest.LogCaptureFixture) -> None:
    progress = archives.DownloadProgress("cifar-100-python.tar.gz", 169_001_437)
    with caplog.at_level(logging.INFO, logger="trainables.archives"):
        for done in range(0, 169_001_437, 1 << 20):  # 1 MiB reads
            progress.update(done)
        progress.update(169_001_437)
        progress.update(169_001_437 + 10)  # more than announced: still one 100 % line
    lines = [r.getMessage() for r in caplog.records]
    assert [line.rsplit("(", 1)[1] for line in lines] == [f"{p} %)" for p in range(10, 101, 10)]
    assert lines[0].startswith("cifar-100-python.tar.gz: 17.") and lines[0].endswith(" of 169.0 MB (10 %)")
    assert lines[-1] == "cifar-100-python.tar.gz: 169.0 of 169.0 MB (100 %)"


def test_a_download_that_does_not_match_is_discarded(
    tiny10: TinyArchive, tmp_path: Path, served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, base = served
    (folder / "cifar-10-python.tar.gz").write_bytes(b"<html>captive portal</html>")
    tiny10.install(monkeypatch, "cifar10", base + "cifar-10-python.tar.gz")
    with pytest.raises(ChecksumMismatch, match="discarded"):
        ensure_available("cifar10", str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_decoded_cache_is_read_without_pickle_or_the_archive(
    tiny10: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cifar_splits("cifar10", placed(tiny10, tmp_path / "cache").parent)
    (tmp_path / "cache" / "cifar-10-python.tar.gz").unlink()
    calls: list[dict[str, Any]] = []
    np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: calls.append(kw) or np_load(*a, **kw))
    monkeypatch.setattr(tarfile, "open", None)
    ensure_available("cifar10", str(tmp_path / "cache"))  # nothing to do: no archive needed
    again = cifar_splits("cifar10", tmp_path / "cache")
    assert calls == [{"allow_pickle": False}]
    for a, b in zip(dataclasses.astuple(first), dataclasses.astuple(again), strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_a_damaged_cache_beside_its_archive_is_decoded_again_and_without_it_refused(
    tiny10: TinyArchive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache with labels out of range (or unreadable) is not trusted; the verified archive beside
    it rebuilds it, and without the archive it is one sentence naming the file."""
    cache = placed(tiny10, tmp_path / "cache").parent
    first = cifar_splits("cifar10", cache)
    (decoded,) = cache.glob("cifar-10-python.*.npz")
    with np.load(decoded) as z:
        arrays = dict(z)
    arrays["train_y"] = arrays["train_y"] + 50  # labels 50–59 in a 10-class data set
    np.savez(decoded, **arrays)
    again = cifar_splits("cifar10", cache)
    assert torch.equal(again.train_y, first.train_y) and "labels outside 0–9" in caplog.text
    np.savez(decoded, **arrays)
    (cache / "cifar-10-python.tar.gz").unlink()
    with pytest.raises(DataUnavailable, match=r"holds labels outside 0–9; delete it to decode the archive again"):
        cifar_splits("cifar10", cache)


def test_cache_dir_must_be_able_to_receive_the_download(
    tiny10: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for bad in (str(a_file / "cache"), "relative/cache", ""):
        with pytest.raises(ConfigError, match=r"^data\.cache_dir: "):
            DataConfig(name="cifar10", cache_dir=bad)
    DataConfig(name="digits", cache_dir="relative/cache")  # digits downloads nothing
    DataConfig(name="cifar10", cache_dir=str(tmp_path / "to" / "be" / "created"))
    assert not (tmp_path / "to").exists()  # validation writes nothing

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not (mode & os.W_OK))  # root too
    for bad in (str(locked), str(locked / "sub")):
        with pytest.raises(ConfigError, match=r"^data\.cache_dir: .*writable"):
            DataConfig(name="cifar10", cache_dir=bad)
    placed(tiny10, locked)  # a read-only folder that holds the archive is fine ...
    DataConfig(name="cifar10", cache_dir=str(locked))
    monkeypatch.setattr(archives.tempfile, "mkstemp", _raise_permission_error)
    assert len(cifar_splits("cifar10", locked).test_y) == 20  # ... decoded in memory each time
    assert not list(locked.glob("*.npz"))


def _raise_permission_error(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(13, "Permission denied")
