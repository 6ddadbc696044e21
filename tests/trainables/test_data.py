"""Data: digits splits; CIFAR from tiny archives in the official format (verified before anything
is unpickled, downloaded atomically, cached without pickle); data.cache_dir; augmentation."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
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
import torch.nn.functional as F

from trainables import data
from trainables.config import DataConfig, TrialConfig
from trainables.data import ChecksumMismatch, DataUnavailable, augment, ensure_available, load
from trainables.loop import train
from trainables.schema import ConfigError

from .cifar_archive import TinyArchive, write_cifar10, write_cifar100


def split(**kw):  # type: ignore[no-untyped-def]
    args = {"val_fraction": 0.1, "label_noise": 0.0, "seed": 0, "cache_dir": "unused"} | kw
    return load("digits", **args)


def test_test_set_is_fixed_and_disjoint_from_train_and_val() -> None:
    a, b = split(seed=0), split(seed=1)
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797 and len(a.test_y) == 359
    torch.testing.assert_close(a.test_y, b.test_y)  # same test labels in the same order
    assert not torch.equal(a.val_y, b.val_y)  # the train/val split follows data.seed
    raw = load("digits", val_fraction=0.1, label_noise=0.0, seed=0, cache_dir="")
    assert raw.train_x.shape[1:] == (1, 8, 8)
    assert abs(float(a.train_x.mean())) < 1e-5 and abs(float(a.train_x.std()) - 1) < 1e-2  # standardised on train


def test_train_size_is_a_nested_seeded_subset() -> None:
    full, small, smaller = split(), split(train_size=300), split(train_size=100)
    assert len(small.train_y) == 300 and len(smaller.train_y) == 100
    torch.testing.assert_close(small.train_y[:100], smaller.train_y)
    assert len(small.val_y) == len(full.val_y)


def test_label_noise_corrupts_a_seeded_fraction_of_train_labels_only() -> None:
    clean, noisy = split(), split(label_noise=0.3)
    changed = (clean.train_y != noisy.train_y).nonzero().squeeze(1)
    assert torch.equal(changed, noisy.noisy_indices)
    assert len(changed) == round(0.3 * len(clean.train_y))
    torch.testing.assert_close(clean.test_y, noisy.test_y)
    torch.testing.assert_close(clean.val_y, noisy.val_y)


# --- CIFAR from tiny archives ------------------------------------------------------------------


@pytest.fixture
def tiny10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyArchive:
    (tmp_path / "src").mkdir()
    archive = write_cifar10(tmp_path / "src")  # 5 × 20 train + 20 test images
    archive.install(monkeypatch, "cifar10")
    return archive


def placed(archive: TinyArchive, cache: Path) -> Path:
    """The archive put in the cache folder by hand, as on an offline machine."""
    cache.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(archive.path, cache))


def cifar(name: str, cache: Path, seed: int = 0) -> data.Splits:
    return load(name, val_fraction=0.1, label_noise=0.0, seed=seed, cache_dir=str(cache))


def unit(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32) / 255


def test_cifar10_keeps_the_official_test_batch_and_standardises_on_train(tiny10: TinyArchive, tmp_path: Path) -> None:
    placed(tiny10, tmp_path / "cache")
    s = cifar("cifar10", tmp_path / "cache")
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (90, 10, 20) and s.num_classes == 10
    assert s.train_x.shape[1:] == (3, 32, 32) and s.train_x.dtype == torch.float32
    order = np.random.default_rng(0).permutation(100)  # val = the first 10% of data.seed's order
    train = unit(tiny10.train_x[order[10:]])
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(s.train_x, (train - mean) / std, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.val_x, (unit(tiny10.train_x[order[:10]]) - mean) / std, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.test_x, (unit(tiny10.test_x) - mean) / std, atol=1e-4, rtol=1e-4)  # not re-split
    assert torch.equal(s.test_y, torch.as_tensor(tiny10.test_y))
    assert torch.equal(s.val_y, torch.as_tensor(tiny10.train_y[order[:10]]))
    other = cifar("cifar10", tmp_path / "cache", seed=1)
    assert torch.equal(other.test_y, s.test_y) and not torch.equal(other.val_y, s.val_y)
    assert torch.equal(cifar("cifar10", tmp_path / "cache").val_x, s.val_x)  # same seed, same split


def test_cifar100_uses_the_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = write_cifar100(tmp_path)
    tiny.install(monkeypatch, "cifar100")
    s = cifar("cifar100", placed(tiny, tmp_path / "cache").parent)
    assert s.num_classes == 100 and (len(s.train_y), len(s.val_y), len(s.test_y)) == (90, 10, 20)
    assert torch.equal(s.test_y, torch.as_tensor(tiny.test_y))
    pool = torch.cat([s.train_y, s.val_y]).sort().values
    assert torch.equal(pool, torch.as_tensor(tiny.train_y).sort().values)
    assert tiny.coarse_train_y is not None and not torch.equal(pool, torch.as_tensor(tiny.coarse_train_y).sort().values)


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
    original = data._NumpyUnpickler.load
    monkeypatch.setattr(data._NumpyUnpickler, "load", lambda self: unpickled.append(1) or original(self))
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ChecksumMismatch) as err:
        cifar("cifar10", tmp_path / "cache")
    message, entry = str(err.value), data.DATASETS["cifar10"].archive
    assert entry is not None and str(path) in message and "delete it" in message
    assert entry.md5 in message and entry.sha256 in message  # expected
    assert hashlib.md5(bad).hexdigest() in message  # actual
    assert unpickled == [] and path.read_bytes() == bad  # never opened, and the user's file is left alone
    path.write_bytes(good)  # the control: the same code path does unpickle a verified archive
    cifar("cifar10", tmp_path / "cache")
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
        cifar("cifar10", placed(tiny, tmp_path / "cache").parent)


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
    assert torch.equal(cifar("cifar10", cache).test_y, torch.as_tensor(tiny10.test_y))


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
    first = cifar("cifar10", placed(tiny10, tmp_path / "cache").parent)
    (tmp_path / "cache" / "cifar-10-python.tar.gz").unlink()
    calls: list[dict[str, Any]] = []
    np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: calls.append(kw) or np_load(*a, **kw))
    monkeypatch.setattr(tarfile, "open", None)
    ensure_available("cifar10", str(tmp_path / "cache"))  # nothing to do: no archive needed
    again = cifar("cifar10", tmp_path / "cache")
    assert calls == [{"allow_pickle": False}]
    for a, b in zip(dataclasses.astuple(first), dataclasses.astuple(again), strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_ensure_available_has_nothing_to_do_for_digits() -> None:
    ensure_available("digits", "/nonexistent/never/created")
    assert not Path("/nonexistent").exists()


# --- data.cache_dir and data.augment ------------------------------------------------------------


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
    monkeypatch.setattr(data.tempfile, "mkstemp", _raise_permission_error)
    assert len(cifar("cifar10", locked).test_y) == 20  # ... decoded in memory each time
    assert not list(locked.glob("*.npz"))


def _raise_permission_error(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(13, "Permission denied")


def test_augment_is_refused_for_digits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.augment: must be false for digits"):
        DataConfig(name="digits", augment=True)
    DataConfig(name="cifar10", augment=True, cache_dir=str(tmp_path))


def test_augment_crops_and_flips_each_image_reproducibly() -> None:
    x = torch.randn(64, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))
    padded = F.pad(x, (4, 4, 4, 4))
    found = torch.full((64,), -1)
    for k in range(9 * 9 * 2):  # every (row shift, column shift, flip) candidate
        dy, dx, flip = k // 18, k // 2 % 9, k % 2
        crop = padded[:, :, dy : dy + 32, dx : dx + 32]
        crop = crop.flip(3) if flip else crop
        found[(crop == out).flatten(1).all(1)] = k
    assert (found >= 0).all()  # each output is a shifted (and maybe mirrored) input
    assert set((found % 2).tolist()) == {0, 1}  # both flipped and unflipped images
    assert len(set((found // 2).tolist())) > 20  # many different shifts


def test_the_train_loop_augments_training_batches_only_and_reproducibly(tiny10: TinyArchive, tmp_path: Path) -> None:
    placed(tiny10, tmp_path / "cache")
    spec: dict[str, Any] = {
        "data": {"name": "cifar10", "cache_dir": str(tmp_path / "cache"), "augment": True},
        "model": {"name": "mlp", "hidden": 16, "depth": 1},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "fisher": {"samples": 8},
    }
    cfg = TrialConfig.from_mapping(spec)
    plain = TrialConfig.from_mapping({**spec, "data": {**spec["data"], "augment": False}})
    run = [list(train(c, torch.device("cpu"))) for c in (cfg, cfg, plain)]
    assert [r.metrics for r in run[0]] == [r.metrics for r in run[1]]  # seeded
    assert run[0][-1].curves == run[1][-1].curves
    assert run[0][-1].metrics != run[2][-1].metrics  # augmentation changed training
    assert run[0][0].curves["fisher_trace"][0] == run[2][0].curves["fisher_trace"][0]  # same un-augmented probe
    resumed = list(train(cfg, torch.device("cpu"), run[0][0].state))
    assert resumed[0].metrics == run[0][1].metrics and resumed[0].curves == run[0][1].curves
