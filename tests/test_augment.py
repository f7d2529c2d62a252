"""Per-worker augmentation: the vectorised crop and flip against a loop over images, its
distribution, each worker's own stream, black padding as torchvision's, and runs with it
in the simulator (bit-identical run to run). In the distributed engine (equal to the
simulator, also after a resume with every worker's generator where it was): test_dist.py's
bit-for-bit and killed-worker tests, whose ResNet-20 cases augment."""

import json

import numpy as np
import pytest
import torch

from signvote.data import Dataset
from signvote.data.augment import PAD, Augmenter, augment, black, crop_flip, draw
from signvote.data.images import standardise_channels
from signvote.engine.run import augment_generators, augmenter
from signvote.engine.sim import train
from signvote.experiment.config import ConfigError, TrainConfig, resolve, trajectory_key


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def loop_reference(images, seeds, pad, fill, flip=True):
    """Image by image: each worker draws its offsets, then its flips, from its own
    generator as documented; pad one image, crop it, flip it."""
    _, b, C, H, W = images.shape
    out = torch.empty_like(images)
    fill = torch.as_tensor(fill, dtype=images.dtype).expand(C)
    for i, g in enumerate(generators(seeds)):
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
        flips = torch.randint(0, 2, (b,), generator=g) if flip else torch.zeros(b)
        for j in range(b):
            padded = torch.empty(C, H + 2 * pad, W + 2 * pad, dtype=images.dtype)
            for c in range(C):
                padded[c] = fill[c]
            padded[:, pad:pad + H, pad:pad + W] = images[i, j]
            r, s = offsets[j].tolist()
            crop = padded[:, r:r + H, s:s + W]
            out[i, j] = crop.flip(-1) if flips[j] else crop
    return out


@pytest.mark.parametrize(("pad", "flip"), [(4, True), (2, False), (0, True), (1, True)])
def test_augment_equals_a_loop_over_images(pad, flip):
    images = torch.randn(3, 5, 3, 6, 7)  # not square: rows and columns cannot be swapped
    fill = torch.tensor([-1.5, 2.0, 7.0])
    seeds = [11, 12, 13]
    before = images.clone()
    ours = augment(images, generators(seeds), pad=pad, flip=flip, fill=fill)
    assert torch.equal(ours, loop_reference(images, seeds, pad, fill, flip))
    assert torch.equal(images, before)  # the input is left as it was


def test_crop_flip_of_known_offsets():
    image = torch.arange(12.0).reshape(1, 1, 1, 3, 4)
    out = crop_flip(image, torch.tensor([[[0, 2]]]), torch.tensor([[True]]), pad=1,
                    fill=-1.0)
    # padded rows: [-1 x6], [-1 0 1 2 3 -1], [-1 4 5 6 7 -1], ...; rows 0-2, columns 2-5,
    # then mirrored
    assert out[0, 0, 0].tolist() == [[-1, -1, -1, -1], [-1, 3, 2, 1], [-1, 7, 6, 5]]


def test_offsets_are_uniform_on_0_to_8_and_half_the_images_are_flipped():
    b = 18_000
    offsets, flips = draw(generators([5]), b)
    counts = torch.bincount(offsets.flatten(), minlength=9)
    assert offsets.min() == 0 and offsets.max() == 2 * PAD and counts.numel() == 9
    expected = 2 * b / 9  # each of 9 values, a binomial count: sd ~ 59
    assert (counts - expected).abs().max() < 6 * (2 * b * (1 / 9) * (8 / 9)) ** 0.5
    assert abs(flips.float().mean() - 0.5) < 6 * (0.25 / b) ** 0.5
    # row and column offsets independent: the 81 pairs about equally often
    pairs = torch.bincount(offsets[0, :, 0] * 9 + offsets[0, :, 1], minlength=81)
    assert (pairs - b / 81).abs().max() < 6 * (b / 81) ** 0.5
    assert not draw(generators([5]), 10, flip=False)[1].any()


def test_a_workers_draws_do_not_depend_on_the_others():
    images = torch.randn(8, 4, 3, 5, 5)
    seed = 77
    all_eight = augment(images, augment_generators(seed, range(8)))
    first_five = augment(images[:5], augment_generators(seed, range(5)))
    alone = augment(images[3:4], augment_generators(seed, [3]))
    assert torch.equal(all_eight[3], alone[0]) and torch.equal(first_five[3], alone[0])
    assert torch.equal(all_eight[:5], first_five)
    assert not torch.equal(all_eight[3], all_eight[4])  # streams of their own


def test_padding_is_a_black_raw_pixel_as_torchvisions_pad_before_normalize():
    """Pad the uint8 images with 0, crop, flip, then standardise (torchvision's
    RandomCrop(padding=4), RandomHorizontalFlip, ToTensor, Normalize) equals augmenting
    the standardised images with black padding."""
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 256, (2, 3, 3, 6, 6), dtype=np.uint8)
    train, _, mean, std = standardise_channels(raw.reshape(6, 3, 6, 6), raw[0])
    data = Dataset("x", train, torch.zeros(6, dtype=torch.long), train,
                   torch.zeros(6, dtype=torch.long), "classification", 1, mean=mean, std=std)
    ours = augment(train.reshape(2, 3, 3, 6, 6), generators([1, 2]), fill=black(data))
    raw_aug = loop_reference(torch.from_numpy(raw).float(), [1, 2], PAD, 0.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1)
    assert torch.equal(ours, raw_aug.div(255.0).sub(m).div(s))
    assert black(Dataset("v", train, train, train, train, "regression", 1)) == 0.0


def test_bad_arguments_are_one_error():
    with pytest.raises(ValueError, match="2 generators for the 3 workers"):
        augment(torch.zeros(3, 1, 1, 2, 2), generators([1, 2]))
    with pytest.raises(ValueError, match="images \\[n, b, C, H, W\\]"):
        augment(torch.zeros(3, 2, 2), generators([1]))
    with pytest.raises(ValueError, match="fill of 2 values for images of 3 channels"):
        augment(torch.zeros(1, 1, 3, 2, 2), generators([1]), fill=torch.zeros(2))


# --- the config ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {}, dict(dataset="mnist", model="smallcnn"), dict(dataset="digits", partition="shards"),
    dict(dataset="linreg", rule="sgd"), dict(dataset="idx", workers=3, byzantine=1),
])
def test_the_new_fields_leave_every_existing_runs_identity_alone(values):
    key = trajectory_key(TrainConfig(**values))
    assert "augment" not in key and "image_size" not in key
    # their defaults, given or left out, are the same run
    assert trajectory_key(TrainConfig(**values, augment="off")) == key
    assert trajectory_key(resolve(TrainConfig(**values))) == key


def test_augment_is_on_for_cifar_and_off_elsewhere_by_default():
    assert resolve(TrainConfig(dataset="cifar10", model="smallcnn")).augment == "on"
    assert resolve(TrainConfig(dataset="cifar100", model="smallcnn")).augment == "on"
    assert resolve(TrainConfig(dataset="digits")).augment == "off"
    assert trajectory_key(TrainConfig(dataset="cifar10", augment="on")) == trajectory_key(
        TrainConfig(dataset="cifar10"))
    assert trajectory_key(TrainConfig(dataset="cifar10", augment="off"))["augment"] == "off"
    assert trajectory_key(TrainConfig(dataset="digits", augment="on"))["augment"] == "on"


@pytest.mark.parametrize(("values", "message"), [
    (dict(dataset="logreg", augment="on"), "--augment on crops and flips images; --dataset "
                                           "logreg has feature vectors; valid: --dataset "
                                           "mnist, .*folder, or --augment off"),
    (dict(augment="maybe"), "--augment: unknown value 'maybe'; valid: on, off"),
    (dict(dataset="mnist", image_size=16), "--image-size 16 is the side the folder "
                                           "dataset's images are resized to; --dataset mnist"),
    (dict(dataset="folder", image_size=0), "--image-size must be in \\[1, 1024\\], got 0"),
    (dict(dataset="folder", image_size=5000), "--image-size must be in \\[1, 1024\\]"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        resolve(TrainConfig(**values))


def test_augmenter_follows_the_config():
    data = Dataset("digits", torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                   torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                   "classification", 10, mean=(0.25,), std=(0.5,))
    off = resolve(TrainConfig(dataset="digits"))
    assert augmenter(off, data, range(3)) is None
    on = resolve(TrainConfig(dataset="digits", augment="on", seed=9))
    aug = augmenter(on, data, [2, 5])
    assert isinstance(aug, Augmenter) and torch.equal(aug.fill, torch.tensor([-0.5]))
    reference = augment_generators(9, [2, 5])
    assert [g.initial_seed() for g in aug.generators] == [g.initial_seed() for g in reference]
    assert aug.generators[1].initial_seed() == 9 + 5 + 5000


# --- runs ---------------------------------------------------------------------------------

RUN = dict(dataset="digits", model="smallcnn", workers=3, epochs=1, lr=1e-3)


def test_a_simulator_run_with_augmentation_is_bit_identical_run_to_run(tmp_path):
    first = train(TrainConfig(**RUN, augment="on", out=str(tmp_path / "a")), progress=False)
    again = train(TrainConfig(**RUN, augment="on", out=str(tmp_path / "b")), progress=False)
    plain = train(TrainConfig(**RUN, out=str(tmp_path / "c")), progress=False)
    assert torch.equal(first.params, again.params)
    rows = [(tmp_path / f / "metrics.csv").read_text().splitlines() for f in "ab"]
    strip = [[r.rsplit(",", 1)[0] for r in f] for f in rows]  # all but the wall time
    assert strip[0] == strip[1]
    assert not torch.equal(first.params, plain.params)  # the augmentation did something
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["augment"] == "on" and config["image_size"] is None


def test_the_cli_refuses_augmenting_feature_vectors(tmp_path, capsys):
    from signvote.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "linreg", "--augment", "on", "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("signvote train: error: --augment on crops and flips images")
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
