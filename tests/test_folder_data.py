"""``--dataset folder``: DIR/train/CLASS/* and DIR/test/CLASS/* read with Pillow, against
the arrays the test wrote (PNG is lossless) and Pillow's own reading; every bad folder is
one DatasetError naming the path, one line and exit 2 from the command line."""

import json
import sys

import numpy as np
import pytest
import torch

from signvote.cli import main
from signvote.data import DatasetError, load
from signvote.data.folder import load_folder

Image = pytest.importorskip("PIL.Image", reason="the folder dataset reads images with Pillow")


def write_image(path, array, fmt=None):
    """``array [H, W, 3]`` or ``[H, W]`` (uint8) written by Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def write_folder(root, rng, size=6):
    """train: ant (1 grey PNG), cat (2 RGB PNG), dog (1 JPEG); test: ant, cat. Returns the
    arrays by path."""
    written = {}
    layout = {"train/cat/a.png": (size, size, 3), "train/cat/b.png": (size, size, 3),
              "train/ant/x.png": (size, size), "test/cat/c.png": (size, size, 3),
              "test/ant/y.png": (size, size, 3)}
    for rel, shape in layout.items():
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        write_image(root / rel, array)
        written[rel] = array
    write_image(root / "train/dog/d.jpg", rng.integers(0, 256, (9, 5, 3), dtype=np.uint8))
    return written


def rgb(array):
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def raw_back(data, x):
    """The uint8 pixels ``[N, H, W, 3]`` before standardisation."""
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()


def test_classes_are_the_sorted_subfolders_and_png_pixels_come_back(tmp_path):
    written = write_folder(tmp_path, np.random.default_rng(0))
    data = load("folder", 0, tmp_path, image_size=6)
    assert data.classes == ("ant", "cat", "dog") and data.n_classes == 3
    # files in class order, each class's by name
    assert data.train_y.tolist() == [0, 1, 1, 2] and data.test_y.tolist() == [0, 1]
    assert data.train_x.shape == (4, 3, 6, 6) and data.train_x.dtype == torch.float32
    pixels = raw_back(data, data.train_x)
    for k, rel in enumerate(["train/ant/x.png", "train/cat/a.png", "train/cat/b.png"]):
        assert np.array_equal(pixels[k], rgb(written[rel])), rel  # PNG: exact, grey -> RGB
    test = raw_back(data, data.test_x)
    assert np.array_equal(test[0], written["test/ant/y.png"])
    # the JPEG (9 x 5) resized to 6 x 6 as Pillow's bilinear resize of its RGB image
    with Image.open(tmp_path / "train/dog/d.jpg") as im:
        ref = np.asarray(im.convert("RGB").resize((6, 6), Image.Resampling.BILINEAR))
    assert np.array_equal(pixels[3], ref)


def test_standardised_per_channel_with_the_training_statistics(tmp_path):
    write_folder(tmp_path, np.random.default_rng(1))
    data = load_folder(tmp_path, 6)
    raw = raw_back(data, data.train_x)  # [N, H, W, 3]
    for c in range(3):
        values = raw[..., c].ravel() / 255
        assert data.mean[c] == pytest.approx(values.mean())
        assert data.std[c] == pytest.approx(values.std())  # population std, as CIFAR's
        assert float(data.train_x[:, c].mean()) == pytest.approx(0, abs=1e-5)


def test_image_size_resizes_every_image(tmp_path):
    write_folder(tmp_path, np.random.default_rng(2))
    assert load("folder", 0, tmp_path, image_size=3).train_x.shape == (4, 3, 3, 3)
    assert load("folder", 0, tmp_path).train_x.shape == (4, 3, 32, 32)  # the default


def test_hidden_files_and_loose_files_are_skipped(tmp_path):
    write_folder(tmp_path, np.random.default_rng(3))
    (tmp_path / "train/cat/.DS_Store").write_bytes(b"\x00junk")
    (tmp_path / "train/.cache").mkdir()  # a hidden folder is no class
    write_image(tmp_path / "train/cat/.thumbs/t.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "train/README.txt").write_text("beside the classes")
    data = load_folder(tmp_path, 4)
    assert data.classes == ("ant", "cat", "dog") and data.train_x.shape[0] == 4


def test_images_below_a_class_folder_count(tmp_path):
    write_folder(tmp_path, np.random.default_rng(4))
    write_image(tmp_path / "train/cat/more/e.png", np.zeros((3, 3, 3), np.uint8))
    assert load_folder(tmp_path, 4).train_y.tolist() == [0, 1, 1, 1, 2]


def corrupt(root):
    (root / "train/cat/a.png").write_bytes(b"no image format starts like this")


def damaged(root):
    (root / "train/cat/a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def truncated(root):
    path = root / "train/cat/b.png"
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize(("damage", "message"), [
    (corrupt, r"train/cat/a\.png: not an image Pillow can read \(cannot identify image file"),
    (damaged, r"train/cat/a\.png: not an image Pillow can read \(.+\); every file"),
    (truncated, r"train/cat/b\.png: not an image Pillow can read \("),
    (lambda r: (r / "train/dog/notes.txt").write_text("hello"),
     r"train/dog/notes\.txt: not an image Pillow can read"),
    (lambda r: [p.unlink() for p in (r / "train/dog").iterdir()],
     r"train/dog holds no image; every class folder needs at least one"),
    (lambda r: write_image(r / "test/bird/z.png", np.zeros((2, 2, 3), np.uint8)),
     r"test/bird is a class that .*train lacks; valid classes: ant, cat, dog"),
    (lambda r: __import__("shutil").rmtree(r / "test"),
     r"dataset folder: .*test does not exist; expected DIR/train/CLASS/IMAGE"),
    (lambda r: [__import__("shutil").rmtree(r / "train"), (r / "train").mkdir()],
     r"dataset folder: .*train has no class folder"),
    (lambda r: [__import__("shutil").rmtree(r / "test"), (r / "test").write_text("")],
     r".*test is not a folder"),
])
def test_a_bad_folder_is_one_error_naming_the_path(damage, message, tmp_path, capsys):
    write_folder(tmp_path / "d", np.random.default_rng(5))
    damage(tmp_path / "d")
    with pytest.raises(DatasetError, match=message):
        load_folder(tmp_path / "d", 4)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--out",
              str(out), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("signvote train: error: ")
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    ([], "dataset folder: needs --data-dir DIR, the folder holding DIR/train/CLASS/IMAGE"),
    (["--data-dir", "MISSING"], "--data-dir .*MISSING: does not exist"),
    (["--data-dir", "EMPTY"], "dataset folder: .*EMPTY/train does not exist"),
    (["--data-dir", "EMPTY", "--image-size", "0"], "--image-size must be in \\[1, 1024\\]"),
])
def test_the_command_line_refuses_in_one_line(argv, message, tmp_path, capsys):
    import re

    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a in ("MISSING", "EMPTY") else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "folder", *argv, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_without_pillow_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "d", np.random.default_rng(6))
    monkeypatch.setitem(sys.modules, "PIL", None)  # import fails
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--out",
              str(tmp_path / "run")])
    assert info.value.code == 2
    assert "pip install 'signvote[images]'" in capsys.readouterr().err


def test_a_folder_run_trains_and_records_its_classes(tmp_path):
    rng = np.random.default_rng(7)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("red", "blue"):
            for k in range(count):
                write_image(tmp_path / "d" / split / name / f"{k}.png",
                            rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "d"),
                 "--image-size", "8", "--model", "smallcnn", "--workers", "2",
                 "--batch-size", "3", "--epochs", "1", "--augment", "on", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["blue", "red"] and summary["status"] == "completed"
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 8 and config["augment"] == "on"


def test_a_sweep_checks_each_image_size_on_its_own_data(tmp_path):
    from signvote.experiment.config import ConfigError, TrainConfig
    from signvote.experiment.sweep import check_datasets

    write_folder(tmp_path / "d", np.random.default_rng(8))
    run = dict(dataset="folder", data_dir=str(tmp_path / "d"), workers=2, batch_size=2)
    check_datasets([TrainConfig(**run, model="smallcnn", image_size=8)])
    # smallcnn needs 4 x 4 pixels at least: the 3 x 3 run is refused before any is written
    with pytest.raises(ConfigError, match="--model smallcnn: needs images of at least 4x4"):
        check_datasets([TrainConfig(**run, model="smallcnn", image_size=8),
                        TrainConfig(**run, model="smallcnn", image_size=3)])


def test_load_refuses_an_image_size_for_a_dataset_of_its_own_size():
    with pytest.raises(DatasetError, match=r"dataset digits: image_size 16 is the size the "
                                           r"folder dataset resizes to; digits has a size of "
                                           r"its own; valid: image_size=None, or the dataset "
                                           r"folder"):
        load("digits", 1, None, image_size=16)
