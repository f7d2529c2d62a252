import pytest
import torch
from torch import nn

from signvote import models


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def linear(i, o):
    return i * o + o


@pytest.mark.parametrize(("name", "expected"), [
    ("torchnet", conv(1, 32, 3) + conv(32, 64, 3) + linear(64 * 12 * 12, 128) + linear(128, 10)),
    ("mnistnet", conv(1, 64, 5) + conv(64, 64, 5) + 2 * conv(64, 64, 3) + linear(64 * 3 * 3, 128)
     + linear(128, 10)),
    ("smallcnn", conv(1, 16, 3) + conv(16, 32, 3) + linear(32 * 7 * 7, 10)),
])
def test_mnist_models_have_the_papers_layers(name, expected):
    module = models.build(name, (1, 28, 28), 10)
    assert n_params(module) == expected
    assert module(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_torchnet_is_the_pytorch_example_with_two_dropouts():
    module = models.build("torchnet", (1, 28, 28), 10)
    rates = [m.p for m in module.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.25, 0.5]


@pytest.mark.parametrize("name", ["torchnet", "smallcnn"])
def test_cnns_fit_the_8x8_digits(name):
    assert models.build(name, (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_too_small_images_are_rejected_with_the_minimum():
    with pytest.raises(ValueError, match="at least 20x20 pixels, got 8x8"):
        models.build("mnistnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="needs images"):
        models.build("smallcnn", (20,), 2)


def test_the_registry_holds_the_paper_models_and_the_resnets():
    assert {"linregnet", "logregnet", "torchnet", "mnistnet", "smallcnn", "resnet20",
            "resnet18", "resnet18-imagenet", "resnet50-imagenet"} <= set(models.names())
    assert models.names() == models.REGISTRY.names()


def test_the_move_kept_the_paper_models_initialisation():
    # smallcnn as it was written before the registry: same layers, same draws in order.
    torch.manual_seed(5)
    reference = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    ).state_dict()
    torch.manual_seed(5)
    built = models.build("smallcnn", (1, 28, 28), 10).state_dict()
    assert built.keys() == reference.keys()
    assert all(torch.equal(built[k], reference[k]) for k in built)


@pytest.mark.parametrize(("name", "fits", "min_side"), [
    ("linregnet", ("linreg",), None),
    ("logregnet", ("logreg",), None),
    ("torchnet", models.IMAGE_DATASETS, 6),
    ("mnistnet", ("mnist", "fashion-mnist", "idx"), 20),
    ("smallcnn", models.IMAGE_DATASETS, 4),
])
def test_paper_models_declare_what_they_fit(name, fits, min_side):
    assert models.info(name) == models.ModelInfo(fits, independent_samples=True,
                                                 min_side=min_side)
    assert models.MODELS[name] == fits
    assert models.MIN_IMAGE_SIZE.get(name) == min_side


def test_the_views_follow_the_registry():
    assert list(models.MODELS) == models.names()
    assert set(models.MIN_IMAGE_SIZE) == set(models.names()) - {"linregnet", "logregnet"}
    assert "linregnet" not in models.MIN_IMAGE_SIZE


@pytest.mark.parametrize("dataset", sorted(models.DEFAULT_MODEL))
def test_every_default_model_fits_its_dataset(dataset):
    assert models.fits(models.DEFAULT_MODEL[dataset], dataset)


@pytest.mark.parametrize("name", ["linregnet", "logregnet", "torchnet", "mnistnet",
                                  "smallcnn"])
def test_paper_models_compute_every_sample_on_its_own(name):
    # independent_samples, checked: a batch's rows equal the samples' outputs one by one
    # (eval mode: torchnet's dropout off).
    shape = (1, 28, 28) if name not in ("linregnet", "logregnet") else (20,)
    module = models.build(name, shape, 10).eval()
    x = torch.randn(5, *shape)
    torch.testing.assert_close(module(x), torch.cat([module(x[i:i + 1]) for i in range(5)]))


def scaled_net(input_shape, n_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width),
                         nn.Linear(width, n_classes))


@pytest.fixture
def registered():
    models.register("scaled-net", fits=("logreg",), min_side=None)(scaled_net)
    yield "scaled-net"
    models.REGISTRY.unregister("scaled-net")


def test_a_registered_model_is_built_from_a_spec_with_its_parameters(registered):
    module = models.build("scaled-net(width=7)", (20,), 3)
    assert module[1].out_features == 7 and module(torch.zeros(2, 20)).shape == (2, 3)
    assert models.info(registered) == models.ModelInfo(fits=("logreg",))
    assert models.fits(registered, "logreg") and not models.fits(registered, "mnist")
    with pytest.raises(ValueError, match=r"takes no parameter depth; valid: width$"):
        models.build("scaled-net(depth=2)", (20,), 3)


def test_a_factory_that_declares_nothing_gets_the_conservative_info():
    def net(shape, classes):
        return nn.Linear(shape[0], classes)

    assert models.info(net) == models.ModelInfo(fits=None, independent_samples=False,
                                                min_side=None)
    declared = models.declare(independent_samples=True, min_side=3)(net)
    assert declared is net
    assert models.info(net) == models.ModelInfo(independent_samples=True, min_side=3)


def test_a_declaration_belongs_to_its_factory_alone():
    # by identity: another function of the same name and code declares nothing, and an
    # unhashable callable can declare too
    def make():
        def net(shape, classes):
            return nn.Linear(shape[0], classes)
        return net

    first, second = make(), make()
    models.declare(independent_samples=True)(first)
    assert models.info(first).independent_samples
    assert models.info(second) == models.ModelInfo()

    class Unhashable:
        __hash__ = None

        def __call__(self, shape, classes):
            return nn.Linear(shape[0], classes)

    factory = Unhashable()
    models.declare(min_side=2)(factory)
    assert models.info(factory).min_side == 2
