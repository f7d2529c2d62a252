import gzip
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from signvote.cli import main
from signvote.data import DatasetError, images, load
from signvote.data.idx import IDXError, parse_idx, read_idx, write_idx


@pytest.fixture
def no_standard_places(tmp_path, monkeypatch):
    """Keep the tests away from any real dataset on the machine."""
    monkeypatch.setenv("SIGNVOTE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(images, "SYSTEM_DATA_DIR", tmp_path / "system")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    assert np.array_equal(back, array)
    assert (gzip.decompress(path.read_bytes()) if suffix else path.read_bytes())[2] in (
        0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)


def test_parse_idx_reads_a_hand_made_file():
    # magic 00 00 0B (int16) 02 (two dimensions), shape 2 x 1, values 258 and -2, big-endian
    data = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") \
        + bytes([1, 2, 0xFF, 0xFE])
    assert parse_idx(data).tolist() == [[258], [-2]]


def valid_bytes():
    return bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])


@pytest.mark.parametrize(("data", "message"), [
    (b"\x00\x00\x08", "too short"),
    (b"\x12\x34" + valid_bytes()[2:], "bad magic number 0x12340801"),
    (bytes([0, 0, 0x07, 1]) + valid_bytes()[4:], "bad magic number"),
    (valid_bytes()[:6], "truncated header"),
    (valid_bytes()[:-1], "truncated: the header's shape (4,) needs 4 bytes"),
    (valid_bytes() + b"\x00", "too long"),
    (gzip.compress(valid_bytes())[:-6], "corrupt gzip data"),
])
def test_corrupt_idx_is_rejected_with_its_reason(tmp_path, data, message):
    path = tmp_path / "bad-file"
    path.write_bytes(data)
    with pytest.raises(IDXError, match="bad-file") as info:
        read_idx(path)
    assert message in str(info.value)


def write_dataset(folder, n_train=40, n_test=12, side=6, prefix="", gz=True):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 4, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 4, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / f"{prefix}{stem}{ext}", array)
    return arrays


def test_an_idx_folder_loads_as_a_standardised_dataset(tmp_path):
    arrays = write_dataset(tmp_path / "kmnist", prefix="k49-", gz=False)
    data = load("idx", 0, tmp_path / "kmnist")
    assert data.train_x.shape == (40, 1, 6, 6) and data.test_x.shape == (12, 1, 6, 6)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert abs(float(data.train_x.mean())) < 1e-5
    assert float(data.train_x.std()) == pytest.approx(1.0, abs=1e-4)
    raw = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    expected = (raw - raw.mean()) / raw.std(ddof=1)
    assert np.allclose(data.train_x[:, 0].numpy(), expected, atol=1e-5)
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.n_classes == 1 + arrays["train-labels-idx1-ubyte"].max()  # idx: from train


def test_mnist_is_found_in_torchvisions_folder(tmp_path, no_standard_places):
    write_dataset(tmp_path / "data" / "MNIST" / "raw")
    assert load("mnist", 0, tmp_path / "data").train_x.shape[0] == 40


def test_images_and_labels_must_agree(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, dtype=np.uint8))
    with pytest.raises(IDXError, match=r"40 images but .* has 39 labels"):
        load("idx", 0, tmp_path)


def test_missing_files_say_where_we_looked_and_how_to_get_them(tmp_path, no_standard_places):
    with pytest.raises(DatasetError) as info:
        load("fashion-mnist", 0, tmp_path)
    text = str(info.value)
    assert str(tmp_path) in text and str(tmp_path / "system" / "fashion-mnist") in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "signvote download fashion-mnist" in text
    assert "--data-dir" in text


def test_cli_reports_missing_or_corrupt_data_in_one_line(tmp_path, capsys,
                                                         no_standard_places):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "IDX files not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    write_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out)])
    assert info.value.code == 2
    assert "t10k-images-idx3-ubyte.gz: truncated header" in capsys.readouterr().err
    assert not out.exists()


def test_download_without_torchvision_explains_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    with pytest.raises(SystemExit) as info:
        main(["download", "mnist", "--data-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "pip install 'signvote[download]'" in capsys.readouterr().err


def test_download_puts_files_where_training_finds_them(tmp_path, monkeypatch,
                                                       no_standard_places):
    """torchvision replaced by a stand-in that writes IDX files where torchvision would."""

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            assert download
            write_dataset(Path(root) / "FashionMNIST" / "raw")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=None, FashionMNIST=FakeFashionMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert main(["download", "fashion-mnist", "--data-dir", str(tmp_path / "d")]) == 0
    assert load("fashion-mnist", 0, tmp_path / "d").train_x.shape == (40, 1, 6, 6)
