"""CIFAR pickles: files written in the official format (Python 2 pickles, protocol 2,
byte-string keys, numpy 1's global names) are read back exactly; foreign, malicious,
truncated or inconsistent files are one DatasetError naming the file."""

import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from signvote.data import DatasetError
from signvote.data.cifar import LAYOUTS, PIXELS, channel_statistics, read_batch, read_cifar


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for these files: a ``str`` (here ``bytes``) is a
    SHORT_BINSTRING/BINSTRING, not Python 3's ``_codecs.encode`` call."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def official_bytes(batch: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(batch)
    # numpy 2 names its reconstructor numpy._core; the official files (numpy 1) say numpy.core
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def batch_of(images: np.ndarray, labels, key=b"labels") -> dict:
    return {b"batch_label": b"training batch 1 of 5", key: [int(v) for v in labels],
            b"data": images.reshape(len(images), -1),
            b"filenames": [b"img_%d.png" % i for i in range(len(images))]}


def write_cifar10(folder, rng, per_batch=4, classes=10):
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    truth = {}
    for name in (*LAYOUTS["cifar10"].train, LAYOUTS["cifar10"].test):
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, per_batch)
        (root / name).write_bytes(official_bytes(batch_of(images, labels)))
        truth[name] = (images, labels)
    return root, truth


def test_the_writer_is_the_official_format(tmp_path):
    data = official_bytes(batch_of(np.zeros((2, 3, 32, 32), np.uint8), [1, 2]))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ops[0] == ("PROTO", 2)
    assert ("SHORT_BINSTRING", "data") in [(n, a) for n, a in ops if n == "SHORT_BINSTRING"]
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert not any(n == "BINUNICODE" and a == "data" for n, a in ops)


def test_cifar10_reads_back_every_image_and_label_in_order(tmp_path):
    rng = np.random.default_rng(0)
    root, truth = write_cifar10(tmp_path, rng)
    train_x, train_y, test_x, test_y = read_cifar("cifar10", tmp_path)
    train = LAYOUTS["cifar10"].train
    assert np.array_equal(train_x, np.concatenate([truth[n][0] for n in train]))
    assert np.array_equal(train_y, np.concatenate([truth[n][1] for n in train]))
    assert np.array_equal(test_x, truth["test_batch"][0]) and test_y.dtype == np.int64
    assert read_cifar("cifar10", root)[0].shape == (20, 3, 32, 32)  # the folder itself


def test_the_rows_are_red_green_blue_planes_row_by_row(tmp_path):
    flat = np.arange(PIXELS, dtype=np.int64).reshape(1, PIXELS) % 251
    path = tmp_path / "b"
    path.write_bytes(official_bytes(batch_of(flat.astype(np.uint8), [3])))
    images, _ = read_batch(path, "labels", 10)
    for c, h, w in [(0, 0, 0), (0, 0, 31), (1, 0, 0), (2, 31, 31), (1, 5, 7)]:
        assert images[0, c, h, w] == flat[0, c * 1024 + h * 32 + w] % 251


def test_our_reading_equals_a_plain_unpickling(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "b"
    path.write_bytes(official_bytes(batch_of(images, [0, 5, 9])))
    with open(path, "rb") as fh:
        plain = pickle.load(fh, encoding="latin1")  # the reference: trusted here, our file
    ours_x, ours_y = read_batch(path, "labels", 10)
    assert np.array_equal(ours_x.reshape(3, -1), plain["data"])
    assert ours_y.tolist() == plain["labels"]


def test_cifar100_reads_its_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(2)
    for name in ("train", "test"):
        images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
        batch = batch_of(images, [0, 99, 50, 3, 7], key=b"fine_labels")
        batch[b"coarse_labels"] = [0, 19, 10, 1, 2]
        root.joinpath(name).write_bytes(official_bytes(batch))
    _, train_y, _, _ = read_cifar("cifar100", tmp_path)
    assert train_y.tolist() == [0, 99, 50, 3, 7]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil(marker)}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_1: not a CIFAR pickle: it names "
                                           r"(posix|os)\.system"):
        read_batch(path, "labels", 10)
    assert not marker.exists()


@pytest.mark.parametrize(("make", "message"), [
    (lambda good: good[: len(good) // 2], "truncated"),
    (lambda good: b"", "truncated"),
    (lambda good: b"\x89PNG\r\n\x1a\n" + bytes(40), "not a CIFAR pickle"),
    (lambda good: official_bytes([1, 2, 3]), "holds a list"),
    (lambda good: official_bytes({b"data": np.zeros((2, 3072), np.float32),
                                  b"labels": [0, 1]}), "'data' is float32"),
    (lambda good: official_bytes({b"data": np.zeros((2, 100), np.uint8),
                                  b"labels": [0, 1]}), "uint8 \\[N, 3072\\]"),
    (lambda good: official_bytes({b"data": np.zeros((2, 3072), np.uint8),
                                  b"labels": [0]}), "2 images but 1 labels"),
    (lambda good: official_bytes({b"data": np.zeros((2, 3072), np.uint8),
                                  b"labels": [0, 10]}), "label 10 at index 1; valid: 0 to 9"),
    (lambda good: official_bytes({b"data": np.zeros((1, 3072), np.uint8),
                                  b"labels": [-1]}), "label -1 at index 0"),
    (lambda good: official_bytes({b"data": np.zeros((1, 3072), np.uint8),
                                  b"labels": ["a"]}), "not a list of whole numbers"),
    (lambda good: official_bytes({b"data": np.zeros((0, 3072), np.uint8),
                                  b"labels": []}), "holds no images"),
])
def test_a_bad_file_is_one_error_naming_it(make, message, tmp_path):
    good = official_bytes(batch_of(np.zeros((2, 3, 32, 32), np.uint8), [0, 1]))
    path = tmp_path / "test_batch"
    path.write_bytes(make(good))
    with pytest.raises(DatasetError, match=message) as info:
        read_batch(path, "labels", 10)
    assert str(path) in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    root, _ = write_cifar10(tmp_path, np.random.default_rng(3))
    (root / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        read_cifar("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="valid: cifar10, cifar100"):
        read_cifar("cifar1000", tmp_path)


def test_channel_statistics_against_a_loop():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    mean, std = channel_statistics(images)
    for c in range(3):
        values = [images[i, c, h, w] / 255 for i in range(6) for h in range(4) for w in range(4)]
        m = sum(values) / len(values)
        assert mean[c] == pytest.approx(m)
        assert std[c] == pytest.approx((sum((v - m) ** 2 for v in values) / len(values)) ** .5)


# --- cifar10 / cifar100 as datasets ------------------------------------------------------


@pytest.fixture
def no_standard_places(tmp_path, monkeypatch):
    """No real CIFAR of the machine's: the download folder and the system one are empty."""
    from signvote.data import images

    monkeypatch.setenv("SIGNVOTE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(images, "SYSTEM_DATA_DIR", tmp_path / "system")


def write_cifar100(folder, rng, per_split=5):
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    truth = {}
    for name in ("train", "test"):
        images = rng.integers(0, 256, (per_split, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 100, per_split)
        batch = batch_of(images, labels, key=b"fine_labels")
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
        root.joinpath(name).write_bytes(official_bytes(batch))
        truth[name] = (images, labels)
    return root, truth


def standardised_by_a_loop(train, images):
    """The reference: each channel's mean and population std over the training images by
    plain float64 sums, then (x / 255 - mean) / std."""
    out = np.empty(images.shape)
    for c in range(3):
        values = train[:, c].astype(np.float64).ravel() / 255
        mean = values.sum() / values.size
        std = (((values - mean) ** 2).sum() / values.size) ** 0.5
        out[:, c] = (images[:, c] / 255 - mean) / std
    return out


@pytest.mark.parametrize("which", ["parent", "folder"])
def test_cifar10_is_found_in_the_data_dir_and_standardised_per_channel(
        tmp_path, which, no_standard_places):
    from signvote.data import load

    root, truth = write_cifar10(tmp_path / "data", np.random.default_rng(5))
    data = load("cifar10", 0, root.parent if which == "parent" else root)
    train = np.concatenate([truth[n][0] for n in LAYOUTS["cifar10"].train])
    assert data.train_x.shape == (20, 3, 32, 32) and data.train_x.dtype == torch.float32
    assert data.test_x.shape == (4, 3, 32, 32) and data.n_classes == 10
    np.testing.assert_allclose(data.train_x.numpy(), standardised_by_a_loop(train, train),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.test_x.numpy(),
                               standardised_by_a_loop(train, truth["test_batch"][0]),
                               rtol=1e-5, atol=1e-5)
    assert data.train_y.tolist() == np.concatenate(
        [truth[n][1] for n in LAYOUTS["cifar10"].train]).tolist()
    assert data.train_y.dtype == torch.int64 and data.task == "classification"
    # the raw black pixel: what augmentation pads with
    assert np.allclose(np.array(data.mean), train.mean(axis=(0, 2, 3)) / 255)


def test_cifar100_is_found_in_the_download_folder(tmp_path, no_standard_places):
    from signvote.data import load

    _, truth = write_cifar100(tmp_path / "cache", np.random.default_rng(6))
    data = load("cifar100", 0)  # $SIGNVOTE_DATA, as signvote download puts it
    assert data.n_classes == 100 and data.train_x.shape == (5, 3, 32, 32)
    assert data.test_y.tolist() == truth["test"][1].tolist()


def test_cifar_is_found_in_the_system_folder(tmp_path, no_standard_places):
    from signvote.data import load

    write_cifar10(tmp_path / "system" / "cifar10", np.random.default_rng(7))
    assert load("cifar10", 0).train_x.shape[0] == 20


def test_cifar_not_found_says_where_it_looked_and_how_to_get_it(tmp_path, no_standard_places):
    from signvote.data import load

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load("cifar10", 0, tmp_path / "empty")
    text = str(info.value)
    assert "cifar-10-batches-py/ not found; looked in: " in text
    assert str(tmp_path / "empty") in text and str(tmp_path / "cache") in text
    assert "signvote download cifar10" in text and "pip install 'signvote[download]'" in text
    with pytest.raises(DatasetError, match="image_size 16 is the size the folder"):
        load("cifar10", 0, tmp_path / "empty", image_size=16)


def train_argv(data_dir, out):
    return ["train", "--dataset", "cifar10", "--model", "smallcnn", "--data-dir",
            str(data_dir), "--out", str(out), "--workers", "2", "--batch-size", "4",
            "--epochs", "1", "--quiet"]


def evil_bytes(marker):
    return pickle.dumps({"data": Evil(marker)}, protocol=2)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda root, m: (root / "data_batch_3").unlink(),
     r"cifar-10-batches-py lacks data_batch_3; expected the official python version's "
     r"files \(cifar-10-batches-py/\); to get them: signvote download cifar10"),
    (lambda root, m: (root / "data_batch_2").write_bytes(
        (root / "data_batch_2").read_bytes()[:1000]),
     r"data_batch_2: not a CIFAR pickle.*truncated"),
    (lambda root, m: (root / "test_batch").write_bytes(evil_bytes(m)),
     r"test_batch: not a CIFAR pickle: it names (posix|os)\.system"),
    (lambda root, m: (root / "data_batch_5").write_bytes(official_bytes(batch_of(
        np.zeros((2, 3, 32, 32), np.uint8), [3, 10]))),
     r"data_batch_5: label 10 at index 1; valid: 0 to 9"),
])
def test_the_cli_refuses_a_damaged_cifar_in_one_line(damage, message, tmp_path, capsys,
                                                      no_standard_places):
    from signvote.cli import main

    root, _ = write_cifar10(tmp_path / "data", np.random.default_rng(8))
    marker = tmp_path / "ran"
    damage(root, marker)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(train_argv(tmp_path / "data", out))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("signvote train: error: ")
    import re

    assert re.search(message, err), err
    assert not marker.exists() and not out.exists()


def test_a_cifar10_run_trains_and_writes_its_folder(tmp_path, no_standard_places):
    import json

    from signvote.cli import main

    write_cifar10(tmp_path / "data", np.random.default_rng(9), per_batch=8)
    out = tmp_path / "run"
    assert main(train_argv(tmp_path / "data", out)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "cifar10" and config["augment"] == "on"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and summary["steps"] == int(rows[1].split(",")[1]) > 0


def test_download_puts_cifar_where_training_finds_it(tmp_path, monkeypatch,
                                                     no_standard_places):
    """torchvision replaced by a stand-in that writes the folder where torchvision's
    CIFAR10(root, download=True) does: ROOT/cifar-10-batches-py."""
    import sys
    import types

    from signvote.cli import main
    from signvote.data import load

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert download
            calls.append(train)
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root), np.random.default_rng(10))

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=FakeCIFAR10)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert main(["download", "cifar10"]) == 0  # the download folder, $SIGNVOTE_DATA
    assert calls == [True, False]
    assert load("cifar10", 0).train_x.shape == (20, 3, 32, 32)


def test_download_without_torchvision_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from signvote.cli import main

    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(SystemExit) as info:
        main(["download", "cifar100", "--data-dir", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'signvote[download]'" in err
