"""Issue 15: the dataset readers refuse what is out of range, empty or unreadable with one
DatasetError naming the file (and the index, the value), never a traceback or a silently
different dataset. Every test writes its own small files in the real IDX format."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signvote.cli import main
from signvote.data import DatasetError, images, load, partition, synthetic
from signvote.data.idx import IDXError, encode_idx, parse_idx, write_idx

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def no_standard_places(tmp_path, monkeypatch):
    """Keep the tests away from any real dataset on the machine."""
    monkeypatch.setenv("SIGNVOTE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(images, "SYSTEM_DATA_DIR", tmp_path / "system")


def write_set(folder: Path, n_train=20, n_test=6, classes=10, **arrays) -> dict:
    """Four IDX files in ``folder``: random 4x4 uint8 images, labels cycling through
    ``classes``; ``arrays`` (by file stem) replace any of them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % classes).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % classes).astype(np.uint8),
    }
    files.update({stem.replace("_", "-"): a for stem, a in arrays.items()})
    for stem, array in files.items():
        write_idx(folder / stem, array)
    return files


def with_label(n: int, index: int, value, dtype=np.uint8, classes=10) -> np.ndarray:
    labels = (np.arange(n) % classes).astype(dtype)
    labels[index] = value
    return labels


# -- labels out of range -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_a_training_label_outside_the_declared_classes_is_refused(tmp_path, name):
    write_set(tmp_path, **{TRAIN_LABELS: with_label(20, 7, 200)})
    with pytest.raises(DatasetError) as info:
        load(name, 0, tmp_path)
    text = str(info.value)
    assert str(tmp_path / TRAIN_LABELS) in text
    assert "label 200 at index 7" in text and "0 to 9" in text


def test_a_test_label_outside_the_declared_classes_is_refused(tmp_path):
    write_set(tmp_path, **{TEST_LABELS: with_label(6, 5, 10)})
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 10 at index 5.*"
                                           r"0 to 9"):
        load("mnist", 0, tmp_path)


def test_mnist_keeps_ten_classes_when_its_labels_use_fewer(tmp_path):
    write_set(tmp_path, classes=3)  # labels 0, 1, 2 only
    assert load("mnist", 0, tmp_path).n_classes == 10


def test_a_generic_idx_set_counts_classes_from_the_training_labels(tmp_path):
    write_set(tmp_path, classes=4)
    data = load("idx", 0, tmp_path)
    assert data.n_classes == 4 and data.test_y.max() == 3


def test_a_generic_idx_test_label_outside_the_training_classes_is_refused(tmp_path):
    write_set(tmp_path, classes=4, **{TEST_LABELS: with_label(6, 2, 4, classes=4)})
    with pytest.raises(DatasetError) as info:
        load("idx", 0, tmp_path)
    text = str(info.value)
    assert f"{tmp_path / TEST_LABELS}: label 4 at index 2" in text
    assert "4 classes found in the training labels" in text and "0 to 3" in text


def test_a_generic_idx_label_making_more_classes_than_samples_is_refused(tmp_path):
    """A label of 2^31 - 1 would build a model with two billion outputs."""
    write_set(tmp_path, **{TRAIN_LABELS: with_label(20, 3, 2**31 - 1, np.int32)})
    with pytest.raises(DatasetError, match=r"label 2147483647 at index 3.*20 training "
                                           r"samples"):
        load("idx", 0, tmp_path)


@pytest.mark.parametrize("name", ["mnist", "idx"])
@pytest.mark.parametrize("stem", [TRAIN_LABELS, TEST_LABELS])
def test_negative_labels_are_refused_with_file_index_and_value(tmp_path, name, stem):
    n = 20 if stem == TRAIN_LABELS else 6
    write_set(tmp_path, **{stem: with_label(n, n - 1, -3, np.int8)})
    with pytest.raises(DatasetError, match=f"{stem}: label -3 at index {n - 1}"):
        load(name, 0, tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_labels_that_are_not_whole_numbers_are_refused(tmp_path, dtype):
    write_set(tmp_path, **{TRAIN_LABELS: (np.arange(20) % 10).astype(dtype)})
    with pytest.raises(DatasetError, match=f"{TRAIN_LABELS}: labels of type {dtype}"):
        load("mnist", 0, tmp_path)


def test_labels_of_more_than_one_dimension_are_refused(tmp_path):
    write_set(tmp_path, **{TEST_LABELS: np.zeros((6, 1), np.uint8)})
    with pytest.raises(DatasetError, match=rf"{TEST_LABELS}: labels of shape \(6, 1\)"):
        load("mnist", 0, tmp_path)


@pytest.mark.slow  # imports scikit-learn
def test_digits_labels_are_checked_against_its_ten_classes():
    data = load("digits", 0)
    assert data.n_classes == 10
    assert int(data.train_y.min()) >= 0 and int(data.train_y.max()) <= 9


def test_cli_refuses_an_out_of_range_mnist_label_in_one_line(tmp_path, capsys):
    write_set(tmp_path / "data", **{TRAIN_LABELS: with_label(20, 7, 200)})
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
              "--out", str(out), "--epochs", "1", "--workers", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "label 200 at index 7" in err
    assert not out.exists()


# -- zero samples, counts, headers ---------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_an_idx_split_of_zero_samples_is_refused_naming_the_file(tmp_path, split):
    stems = (TRAIN_IMAGES, TRAIN_LABELS) if split == "train" else (TEST_IMAGES, TEST_LABELS)
    write_set(tmp_path, **{stems[0]: np.zeros((0, 4, 4), np.uint8),
                           stems[1]: np.zeros(0, np.uint8)})
    with pytest.raises(DatasetError, match=f"{stems[0]}: no images"):
        load("mnist", 0, tmp_path)


@pytest.mark.parametrize("stem", [TRAIN_LABELS, TEST_LABELS])
def test_a_labels_file_of_zero_labels_is_refused_naming_the_file(tmp_path, stem):
    write_set(tmp_path, **{stem: np.zeros(0, np.uint8)})
    with pytest.raises(DatasetError, match=stem):
        load("idx", 0, tmp_path)


@pytest.mark.parametrize("shape", [(20, 0, 4), (20, 4, 0)])
def test_images_without_pixels_are_refused(tmp_path, shape):
    write_set(tmp_path, **{TRAIN_IMAGES: np.zeros(shape, np.uint8),
                           TEST_IMAGES: np.zeros((6, *shape[1:]), np.uint8)})
    with pytest.raises(DatasetError, match=f"{TRAIN_IMAGES}: images of shape"):
        load("mnist", 0, tmp_path)


def test_images_that_are_not_finite_are_refused(tmp_path):
    pictures = np.zeros((6, 4, 4), np.float32)
    pictures[4, 1, 2] = np.nan
    write_set(tmp_path, **{TEST_IMAGES: pictures})
    with pytest.raises(DatasetError, match=f"{TEST_IMAGES}: value nan in image 4"):
        load("mnist", 0, tmp_path)


def test_a_single_pixel_training_set_is_not_standardised_into_nan(tmp_path):
    write_set(tmp_path, n_train=1, **{TRAIN_IMAGES: np.full((1, 1, 1), 7, np.uint8),
                                      TEST_IMAGES: np.full((6, 1, 1), 9, np.uint8)})
    data = load("mnist", 0, tmp_path)
    assert torch.isfinite(data.train_x).all() and torch.isfinite(data.test_x).all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_and_labels_of_different_counts_are_refused(tmp_path, split):
    stem = TRAIN_LABELS if split == "train" else TEST_LABELS
    n = 20 if split == "train" else 6
    write_set(tmp_path, **{stem: np.zeros(n + 1, np.uint8)})
    with pytest.raises(DatasetError, match=rf"{n} images but .*{stem} has {n + 1} labels"):
        load("mnist", 0, tmp_path)


def header(type_code: int, *shape: int) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(s.to_bytes(4, "big")
                                                           for s in shape)


@pytest.mark.parametrize(("data", "reason"), [
    (header(0x08, 3, 2, 2) + bytes(11), "truncated"),
    (header(0x08, 3, 2, 2) + bytes(13), "too long"),
    (header(0x0C, 3) + bytes(11), "truncated"),
    (b"\x00\x01" + header(0x08, 3)[2:] + bytes(3), "bad magic number"),
    (b"\x08\x03" + header(0x08, 3)[2:] + bytes(3), "bad magic number"),
    (header(0x08) + bytes(3), "bad magic number"),  # no dimension
])
def test_bad_headers_are_refused_with_their_reason(tmp_path, data, reason):
    write_set(tmp_path)
    (tmp_path / TRAIN_LABELS).write_bytes(data)
    with pytest.raises(IDXError, match=f"{TRAIN_LABELS}: {reason}"):
        load("mnist", 0, tmp_path)


def test_every_type_code_the_format_does_not_define_is_refused():
    for code in sorted(set(range(256)) - {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}):
        with pytest.raises(IDXError, match=f"bad magic number 0x0000{code:02x}01"):
            parse_idx(header(code, 2) + bytes(16), "f")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_any_bytes_parse_to_the_headers_array_or_an_idx_error(data):
    try:
        array = parse_idx(data, "f")
    except IDXError as exc:
        assert str(exc).startswith("f: ")
    else:  # what parsed is exactly what the header says, and all of the file
        again = encode_idx(array)
        assert len(again) == len(data) and again[:4 + 4 * array.ndim] == data[:4 + 4 * array.ndim]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_gzipped_idx_file_cut_anywhere_is_refused(data):
    whole = gzip.compress(encode_idx(np.arange(60, dtype=np.uint8).reshape(3, 4, 5)))
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(IDXError, match=r"^f: "):
        parse_idx(whole[:cut], "f")


# -- paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "idx"])
def test_a_data_dir_that_does_not_exist_is_refused_by_name(tmp_path, name):
    write_set(tmp_path / "cache")  # found in the download folder, but not what was asked
    missing = tmp_path / "typo"
    with pytest.raises(DatasetError, match=f"--data-dir {missing}: does not exist"):
        load(name, 0, missing)


@pytest.mark.parametrize("name", ["mnist", "idx"])
def test_a_data_dir_that_is_a_file_is_refused_by_name(tmp_path, name):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DatasetError, match=f"--data-dir {path}: is a file, not a folder"):
        load(name, 0, path)


def test_an_idx_file_that_is_a_directory_is_named(tmp_path):
    write_set(tmp_path)
    (tmp_path / TEST_IMAGES).unlink()
    (tmp_path / TEST_IMAGES).mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / TEST_IMAGES}: is a directory"):
        load("idx", 0, tmp_path)


def test_an_unreadable_idx_file_is_named(tmp_path, monkeypatch):
    write_set(tmp_path)
    target = tmp_path / TRAIN_LABELS
    read = Path.read_bytes

    def refuse(self):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return read(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DatasetError, match=f"{target}: cannot be read \\(Permission denied"):
        load("mnist", 0, tmp_path)


def test_an_unreadable_data_dir_is_named(tmp_path, monkeypatch):
    write_set(tmp_path / "data")
    folder = tmp_path / "data"
    iterdir = Path.iterdir

    def refuse(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(DatasetError, match=f"{folder}: cannot be read \\(Permission denied"):
        load("idx", 0, folder)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_file_without_read_permission_is_named(tmp_path):
    write_set(tmp_path)
    (tmp_path / TEST_LABELS).chmod(0)
    with pytest.raises(DatasetError, match="cannot be read"):
        load("mnist", 0, tmp_path)


# -- synthetic and digits splits -----------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_a_synthetic_split_that_ends_up_empty_is_refused(fraction):
    for make in (synthetic.linear_regression, synthetic.logistic_regression):
        with pytest.raises(DatasetError, match="no sample"):
            make(0, n_samples=100, train_fraction=fraction)


@pytest.mark.slow  # imports scikit-learn
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_a_digits_split_that_ends_up_empty_is_refused(fraction):
    with pytest.raises(DatasetError, match=r"digits.*no sample"):
        images.digits(0, train_fraction=fraction)


# -- partitions: messages name the real cause and the option -------------------------------

def cut(name, n_samples, workers, **params):
    labels = torch.arange(n_samples) % 10
    return partition.get(name, labels, workers, torch.Generator().manual_seed(0), **params)


def test_too_many_shards_blames_the_shard_count_not_the_workers():
    with pytest.raises(ValueError) as info:
        cut("shards", 8000, 10, shards_per_worker=100000)
    text = str(info.value)
    assert "1000000 shards" in text and "--workers 10 x --partition-shards 100000" in text
    assert "8000 training samples" in text
    assert "valid: --partition-shards 1 to 800" in text
    assert "workers cannot share" not in text


@pytest.mark.parametrize("name", partition.PARTITIONS)
def test_more_workers_than_samples_names_workers_and_its_range(name):
    with pytest.raises(ValueError, match=r"--workers 30 exceeds the 20 training samples; "
                                         r"valid: --workers 1 to 20"):
        cut(name, 20, 30)


def test_a_dirichlet_that_leaves_a_worker_empty_names_alpha_and_workers():
    with pytest.raises(ValueError) as info:
        cut("dirichlet", 20, 15, alpha=1e-4)  # 10 classes, each nearly all to one worker
    text = str(info.value)
    assert "--partition-alpha 0.0001" in text and "--workers 15" in text
    assert "larger --partition-alpha" in text


@pytest.mark.parametrize(("name", "params", "flag"), [
    ("dirichlet", {"alpha": 0.0}, "--partition-alpha 0.0: "),
    ("gamma", {"gamma": 1.5}, "--partition-gamma 1.5: "),
    ("shards", {"shards_per_worker": 0}, "--partition-shards 0: "),
])
def test_bad_partition_parameters_name_their_option(name, params, flag):
    with pytest.raises(ValueError, match=flag):
        cut(name, 100, 4, **params)


@pytest.mark.parametrize(("n_samples", "workers", "gamma"), [
    (10, 8, 0.5), (10, 10, 0.5), (1437, 1000, 0.5), (8000, 5000, 0.5), (8000, 7999, 0.3),
    (7, 7, 0.0), (7, 7, 1.0), (1003, 10, 0.37),
])
def test_gamma_gives_every_worker_a_sample_whenever_workers_fit(n_samples, workers, gamma):
    """It cut the iid and the sorted part each with the first workers getting the extra
    sample, so 8 workers of 10 samples at gamma 0.5 left workers 5-7 with none (and the run
    crashed dividing by their zero sample count)."""
    part = cut("gamma", n_samples, workers, gamma=gamma)
    sizes = [p.numel() for p in part]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert torch.equal(torch.cat(part).sort().values, torch.arange(n_samples))


def test_gamma_is_unchanged_when_the_workers_divide_both_parts():
    """The paper's layout (8,000 samples, 10 workers, gamma 0.5) is the same as before."""
    labels = torch.arange(8000) % 10
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(8000, generator=gen)
    iid_part = order[:4000].tensor_split(10)
    rest = order[4000:]
    sorted_part = rest[torch.sort(labels[rest], stable=True).indices].tensor_split(10)
    expected = [torch.cat([a, b]) for a, b in zip(iid_part, sorted_part, strict=True)]
    part = partition.gamma_similarity(labels, 10, torch.Generator().manual_seed(3), 0.5)
    for got, want in zip(part, expected, strict=True):
        assert torch.equal(got.sort().values, want.sort().values)
