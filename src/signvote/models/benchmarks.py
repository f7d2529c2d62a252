"""The models of two published robust-aggregation benchmarks (registered by
:mod:`signvote.models`), each layer for layer as the benchmark's code builds it.

* ``karimireddy-cnn``: the MNIST net of Karimireddy, He & Jaggi, "Byzantine-Robust Learning
  on Heterogeneous Datasets via Bucketing", ICLR 2022 (their code,
  epfml/byzantine-robust-noniid-optimizer, ``codes/tasks/mnist.py``, class ``Net``). It is
  the PyTorch MNIST example's net (signvote's ``torchnet``) with two changes in that code:
  no ReLU after the second convolution, and channel dropout (``Dropout2d``) after the
  pooling where the example drops single numbers. Same 1,199,882 parameters on 28x28.
* ``byzfl-cnn``: ByzFL's ``cnn_mnist`` (LPD-EPFL/byzfl, ``byzfl/fed_framework/models.py``),
  the model of its benchmark's default configuration.

Both codes end in ``log_softmax`` and train with the negative log-likelihood; these
factories return the logits, and signvote's classification loss (cross-entropy on logits,
:func:`~signvote.engine.gradients.default_loss`) is the same function of them.
"""

from __future__ import annotations

from torch import nn


def karimireddy_cnn(input_shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    """Karimireddy et al.'s MNIST net: conv 3x3 32 - ReLU - conv 3x3 64 - max-pool 2 -
    channel dropout 0.25 - fc 128 - ReLU - dropout 0.5 - fc; no padding, and no ReLU
    between the second convolution and the pooling (as in their ``Net.forward``).

    Parameters on ``[c, h, w]`` images: ``(9c + 1) 32 + (288 + 1) 64 + (64 h' w' + 1) 128 +
    129 C`` with ``h' = (h - 4) // 2``, ``w' = (w - 4) // 2``: 1,199,882 on 28x28, 10
    classes."""
    channels, height, width = input_shape
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.MaxPool2d(2),
        nn.Dropout2d(0.25), nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, n_classes),
    )


def byzfl_cnn(input_shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    """ByzFL's ``cnn_mnist``: conv 5x5 20 - ReLU - max-pool 2 - conv 5x5 50 - ReLU -
    max-pool 2 - fc 500 - ReLU - fc; no padding, no dropout.

    Parameters on ``[c, h, w]`` images: ``(25c + 1) 20 + (500 + 1) 50 + (50 h' w' + 1) 500 +
    501 C`` with ``h' = ((h - 4) // 2 - 4) // 2`` (and ``w'`` alike): 431,080 on 28x28, 10
    classes (``h' = w' = 4``, ByzFL's ``800`` inputs to the first fc)."""
    channels, height, width = input_shape
    side_h = ((height - 4) // 2 - 4) // 2
    side_w = ((width - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * side_h * side_w, 500), nn.ReLU(),
        nn.Linear(500, n_classes),
    )
