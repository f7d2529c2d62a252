"""The ResNets against hand formulas from the architecture, the published parameter
counts, and the behaviour they declare."""

import math

import pytest
import torch
from torch import nn

from signvote import models
from signvote.models import resnet

NORMS = ("batch", "group", "none")
RESNETS = ("resnet20", "resnet18", "resnet18-imagenet", "resnet50-imagenet")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# --- hand formulas (He et al. 2016; parameters of each layer written out) ----------------


def conv(k, c_in, c_out, norm):
    """A k x k convolution, with a bias only when there is no norm after it."""
    return k * k * c_in * c_out + (c_out if norm == "none" else 0)


def nrm(c, norm):
    """A norm layer's gamma and beta (BatchNorm and GroupNorm alike); none for no norm."""
    return 0 if norm == "none" else 2 * c


def fc(i, o):
    return i * o + o


def basic(c_in, w, norm, projection):
    """conv3x3 c_in->w, norm, conv3x3 w->w, norm (+ 1x1 projection and its norm)."""
    body = conv(3, c_in, w, norm) + nrm(w, norm) + conv(3, w, w, norm) + nrm(w, norm)
    return body + (conv(1, c_in, w, norm) + nrm(w, norm) if projection else 0)


def bottleneck(c_in, w, norm, projection):
    """conv1x1 c_in->w, conv3x3 w->w, conv1x1 w->4w, each with its norm (+ projection)."""
    body = (conv(1, c_in, w, norm) + nrm(w, norm) + conv(3, w, w, norm) + nrm(w, norm)
            + conv(1, w, 4 * w, norm) + nrm(4 * w, norm))
    return body + (conv(1, c_in, 4 * w, norm) + nrm(4 * w, norm) if projection else 0)


def resnet20_count(channels, classes, norm):
    """Stem 3x3 -> 16; stages of 3 basic blocks, 16/32/64; option A: no shortcut weight."""
    total, c_in = conv(3, channels, 16, norm) + nrm(16, norm), 16
    for w in (16, 32, 64):
        for _ in range(3):
            total += basic(c_in, w, norm, projection=False)
            c_in = w
    return total + fc(64, classes)


def resnet18_count(channels, classes, norm, stem):
    """Stem (3x3 or 7x7) -> 64; stages of 2 basic blocks, 64/128/256/512; a projection
    where the width changes."""
    total, c_in = conv(stem, channels, 64, norm) + nrm(64, norm), 64
    for w in (64, 128, 256, 512):
        for _ in range(2):
            total += basic(c_in, w, norm, projection=c_in != w)
            c_in = w
    return total + fc(512, classes)


def resnet50_count(channels, classes, norm):
    """Stem 7x7 -> 64; [3, 4, 6, 3] bottlenecks of 64/128/256/512 (x4 out); a projection
    in every stage's first block (the first one widens 64 -> 256)."""
    total, c_in = conv(7, channels, 64, norm) + nrm(64, norm), 64
    for w, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            total += bottleneck(c_in, w, norm, projection=b == 0)
            c_in = 4 * w
    return total + fc(2048, classes)


COUNTS = {
    "resnet20": resnet20_count,
    "resnet18": lambda c, k, n: resnet18_count(c, k, n, stem=3),
    "resnet18-imagenet": lambda c, k, n: resnet18_count(c, k, n, stem=7),
    "resnet50-imagenet": resnet50_count,
}


def test_hand_formulas_give_the_published_counts():
    # He et al. 2016 (ResNet-20 "0.27M", option A: 269,722 as in akamaster/pytorch_resnet_
    # cifar10), kuangliu/pytorch-cifar's ResNet18, torchvision's resnet18 and resnet50.
    assert resnet20_count(3, 10, "batch") == 269_722
    assert resnet18_count(3, 10, "batch", stem=3) == 11_173_962
    assert resnet18_count(3, 1000, "batch", stem=7) == 11_689_512
    assert resnet50_count(3, 1000, "batch") == 25_557_032


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet18-imagenet"])
@pytest.mark.parametrize(("shape", "classes"), [((3, 32, 32), 10), ((1, 28, 28), 100),
                                                 ((1, 8, 8), 2)])
def test_parameter_counts_match_the_hand_formula(name, norm, shape, classes):
    module = models.build(f"{name}(norm={norm})", shape, classes)
    assert n_params(module) == COUNTS[name](shape[0], classes, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_resnet50_parameter_count_matches_the_hand_formula(norm):
    for shape, classes in (((3, 224, 224), 1000), ((1, 8, 8), 10)):
        module = models.build(f"resnet50-imagenet(norm={norm})", shape, classes)
        assert n_params(module) == resnet50_count(shape[0], classes, norm)


def test_the_spatial_size_does_not_change_the_count():
    assert (n_params(models.build("resnet20", (3, 8, 8), 10))
            == n_params(models.build("resnet20", (3, 64, 48), 10)))


# --- forward shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_resnet20_outputs_one_row_of_scores_per_sample(shape, norm):
    module = models.build(f"resnet20(norm={norm})", shape, 10)
    assert module(torch.randn(3, *shape)).shape == (3, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_resnet18_outputs_one_row_of_scores_per_sample(shape):
    module = models.build("resnet18", shape, 7)
    assert module(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18-imagenet", "resnet50-imagenet"])
def test_imagenet_layouts_run_on_small_inputs(name):
    module = models.build(name, (3, 16, 16), 5)
    assert module(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("name", RESNETS)
def test_one_pixel_images_are_taken(name):
    assert models.info(name).min_side == 1
    module = models.build(name, (3, 1, 1), 4).eval()
    assert module(torch.randn(2, 3, 1, 1)).shape == (2, 4)


@pytest.mark.parametrize("shape", [(20,), (3, 32)])
def test_non_images_are_refused(shape):
    with pytest.raises(ValueError, match="needs images"):
        models.build("resnet20", shape, 10)


# --- layers ------------------------------------------------------------------------------


def norm_layers(module):
    return [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", RESNETS)
def test_every_convolution_is_followed_by_the_chosen_norm(name):
    shape = (3, 8, 8)
    batch = models.build(name, shape, 10)
    group = models.build(f"{name}(norm=group, groups=4)", shape, 10)
    plain = models.build(f"{name}(norm=none)", shape, 10)
    assert len(norm_layers(batch)) == len(convs(batch))
    assert all(isinstance(m, nn.BatchNorm2d) for m in norm_layers(batch))
    assert all(m.bias is None for m in convs(batch))
    assert len(norm_layers(group)) == len(convs(group))
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in norm_layers(group))
    assert all(m.bias is None for m in convs(group))
    assert norm_layers(plain) == []
    assert all(m.bias is not None for m in convs(plain))


def test_group_norm_defaults_to_two_groups():
    module = models.build("resnet20(norm=group)", (3, 8, 8), 10)
    assert {m.num_groups for m in norm_layers(module)} == {resnet.DEFAULT_GROUPS} == {2}


def test_resnet20_has_parameter_free_shortcuts_and_resnet18_projections():
    r20 = models.build("resnet20", (3, 8, 8), 10)
    r18 = models.build("resnet18", (3, 8, 8), 10)
    assert sum(isinstance(m, resnet.PadShortcut) for m in r20.modules()) == 2
    assert [k for k in r18.state_dict() if "downsample.0.weight" in k] == [
        f"layer{i}.0.downsample.0.weight" for i in (2, 3, 4)]


def test_option_a_shortcut_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 3, 5, 7)
    y = resnet.PadShortcut(2, 4)(x)
    expected = torch.zeros(2, 7, 3, 4)
    for i in range(3):
        for j in range(4):
            expected[:, :3, i, j] = x[:, :, 2 * i, 2 * j]
    assert torch.equal(y, expected)


def test_the_imagenet_layouts_have_torchvisions_parameter_names():
    keys = set(models.build("resnet50-imagenet", (3, 8, 8), 10).state_dict())
    assert {"conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
            "layer4.2.bn3.bias", "fc.weight", "fc.bias"} <= keys
    assert "layer4.3.conv1.weight" not in keys


def test_initialisation_is_kaiming_fan_out_and_unit_norms():
    torch.manual_seed(0)
    module = models.build("resnet18", (3, 8, 8), 10)
    weight = module.layer4[1].conv2.weight  # 512 x 512 x 3 x 3: 2.4M draws
    fan_out = 512 * 3 * 3
    assert weight.mean().abs() < 1e-3
    assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.01)
    for m in norm_layers(module):
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    plain = models.build("resnet20(norm=none)", (3, 8, 8), 10)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs(plain))


def test_a_seeded_build_is_reproducible():
    torch.manual_seed(3)
    first = models.build("resnet20(norm=group)", (3, 8, 8), 10).state_dict()
    torch.manual_seed(3)
    second = models.build("resnet20(norm=group)", (3, 8, 8), 10).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("norm", NORMS)
def test_every_sample_is_computed_on_its_own(norm):
    # What independent_samples declares: f(x)[i] depends on x[i] only (BatchNorm, the
    # exception, is compared in eval mode, where it is a per-channel affine map).
    torch.manual_seed(0)
    module = models.build(f"resnet20(norm={norm})", (3, 8, 8), 10)
    if norm == "batch":
        module.eval()
    x = torch.randn(4, 3, 8, 8)
    alone = torch.cat([module(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(module(x), alone, rtol=1e-5, atol=1e-5)


def test_the_forward_leaves_its_input_alone():
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    models.build("resnet20", (3, 8, 8), 10)(x)
    assert torch.equal(x, before)


# --- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("resnet20(norm=layer)", r"resnet20: norm must be one of batch, group, none, got 'layer'"),
    ("resnet20(norm=3)", r"norm must be one of batch, group, none, got 3"),
    ("resnet20(norm=group, groups=3)",
     r"resnet20: groups=3 must divide every normalised width \(16, 32, 64\); "
     r"valid: 1, 2, 4, 8, 16$"),
    ("resnet18(norm=group, groups=48)", r"valid: 1, 2, 4, 8, 16, 32, 64$"),
    ("resnet20(norm=group, groups=0)", r"groups must be a whole number >= 1, got 0"),
    ("resnet20(norm=group, groups=1.5)", r"groups must be a whole number >= 1, got 1.5"),
    ("resnet20(groups=2)", r"groups=2 is GroupNorm's number of groups and needs norm=group"),
    ("resnet20(depth=32)", r"model 'resnet20' takes no parameter depth; valid: norm, groups"),
    ("resnet20(n_classes=3)", r"n_classes is set by the data"),
    ("resnet21", r"unknown model 'resnet21', did you mean resnet20\?; valid: .*resnet18"),
    ("ResNet20", r"did you mean resnet20\?"),
    ("resnet20+smallcnn", r"one model, not 2 joined by '\+'"),
    ("resnet20(norm=group", r"cannot read"),
])
def test_bad_specs_name_the_value_and_the_valid_ones(spec, message):
    with pytest.raises(ValueError, match=message):
        models.build(spec, (3, 32, 32), 10)


def test_norm_none_reads_as_no_norm():
    # registry.parse_value reads "none" as None; the ResNets take it as norm=none.
    assert models.parse("resnet20(norm=none)") == ("resnet20", {"norm": None})
    assert norm_layers(models.build("resnet20(norm=none)", (3, 8, 8), 10)) == []


@pytest.mark.parametrize("name", RESNETS)
def test_resnets_declare_independent_samples_and_fit_the_image_datasets(name):
    declared = models.info(f"{name}(norm=group)")
    assert declared == models.ModelInfo(fits=models.IMAGE_DATASETS, independent_samples=True,
                                        min_side=1)
    for dataset in ("cifar10", "cifar100", "folder", "digits", "mnist"):
        assert models.fits(name, dataset)
    assert not models.fits(name, "linreg")
