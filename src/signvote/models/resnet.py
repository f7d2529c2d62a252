"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition"), each
with a choice of normalisation layer.

A residual block computes ``y = relu(F(x) + S(x))``: ``F`` is the residual branch
(conv - norm - relu - conv - norm for a basic block; 1x1 - 3x3 - 1x1 convs, each with a
norm, for a bottleneck, which widens to ``4 w``), ``S`` the shortcut: the identity when
the shapes agree, else option A (He et al. section 3.3: subsample by the stride and
append zero channels, no parameter) or option B (a 1x1 convolution with the stride, then a
norm). After the last stage: global average pooling over whatever spatial size is left
(so any input of at least one pixel a side is taken) and one fully connected layer.

- ``resnet20``: the CIFAR ResNet of section 4.2 (``6n + 2`` layers, ``n = 3``): a 3x3
  conv of 16, three stages of 3 basic blocks of 16, 32, 64 channels, stride 2 entering
  stages 2 and 3, option-A shortcuts. 269,722 parameters for 10 classes with BatchNorm.
- ``resnet18``: the CIFAR variant of ResNet-18 in wide use (e.g. kuangliu/pytorch-cifar):
  a 3x3 stem conv of 64 with stride 1 and no max-pool, four stages of 2 basic blocks of
  64, 128, 256, 512 channels, option-B shortcuts. 11,173,962 parameters for 10 classes.
- ``resnet18_imagenet``, ``resnet50_imagenet``: Table 1's ImageNet layouts: a 7x7 stride-2
  stem conv of 64 and a 3x3 stride-2 max-pool, then stages [2, 2, 2, 2] of basic blocks
  or [3, 4, 6, 3] of bottlenecks (the stride on the bottleneck's 3x3 conv, as torchvision
  places it), option-B shortcuts. 11,689,512 and 25,557,032 parameters for 1000 classes,
  torchvision's counts; the parameter names are torchvision's too (``conv1``, ``bn1``,
  ``layer1.0.downsample.0``, ``fc``, ...).

Normalisation (``norm``), applied after every convolution:

- ``batch`` (default): ``nn.BatchNorm2d``, He et al.'s.
- ``group``: ``nn.GroupNorm(groups, c)`` (Wu & He 2018, "Group Normalization"), which
  normalises each sample on its own. Wu & He use 32 groups for ImageNet widths (64 to 2048
  channels); ``resnet20``'s first stage has 16 channels, where 32 groups cannot be
  formed. The default here is 2 groups in every layer, the choice of the federated work
  that replaces BatchNorm under non-iid data (Hsieh et al. 2020, "The Non-IID Data
  Quagmire of Decentralized Machine Learning"; Reddi et al. 2021, "Adaptive Federated
  Optimization", ResNet-18 with two groups per layer); ``groups`` must divide every
  normalised width.
- ``none``: no normalisation; every convolution then carries a bias (initialised to 0),
  the per-channel shift that a norm's ``beta`` provides otherwise. With a norm the
  convolutions have no bias, as in the paper.

Initialisation as torchvision: convolutions Kaiming normal (He et al. 2015, ``fan_out``,
ReLU gain), norm weights 1 and biases 0, the final ``Linear`` PyTorch's default; all drawn
from torch's global generator, so a seeded build is reproducible. Every forward treats
each sample on its own except inside BatchNorm (ReLU out of place, no in-place update).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from signvote.registry import to_int

NORMS = ("batch", "group", "none")
"""The valid values of a ResNet's ``norm`` parameter (the spec ``norm=none`` reads as None,
which means ``none`` too)."""

DEFAULT_GROUPS = 2
"""GroupNorm's groups per layer unless ``groups`` says otherwise (see the module's notes)."""

Norm = Callable[[int], nn.Module]
"""A norm layer for ``c`` channels."""


def norm_layer(norm: str | None, groups: int | None, widths: tuple[int, ...],
               owner: str) -> tuple[Norm, bool]:
    """The norm factory of ``norm`` for a model whose normalised widths are ``widths``, and
    whether its convolutions carry a bias (only without a norm). Raises ValueError naming
    ``owner``'s bad parameter and the valid values."""
    norm = "none" if norm is None else norm
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"{owner}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm != "group":
        if groups is not None:
            raise ValueError(f"{owner}: groups={groups!r} is GroupNorm's number of groups and "
                             f"needs norm=group, got norm={norm}")
        if norm == "batch":
            return nn.BatchNorm2d, False
        return (lambda channels: nn.Identity()), True
    count = DEFAULT_GROUPS if groups is None else to_int(groups, "groups", owner, minimum=1)
    if any(width % count for width in widths):
        common = math.gcd(*widths)
        valid = [str(g) for g in range(1, common + 1) if common % g == 0]
        raise ValueError(f"{owner}: groups={count} must divide every normalised width "
                         f"({', '.join(map(str, sorted(set(widths))))}); valid: "
                         f"{', '.join(valid)}")
    return (lambda channels: nn.GroupNorm(count, channels)), False


def conv3x3(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
    """A 3x3 convolution padded by 1 (the side shrinks only by the stride)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def conv1x1(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
    """A 1x1 convolution (a projection shortcut, a bottleneck's narrowing and widening)."""
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)


class PadShortcut(nn.Module):
    """He et al.'s option A: ``S(x) = [x[:, :, ::s, ::s], 0]``, the input subsampled by the
    stride ``s`` with ``extra`` zero channels appended; no parameter."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + S(x))``, two 3x3 convolutions of
    ``width`` channels, the first with the block's stride."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, norm: Norm, bias: bool,
                 downsample: nn.Module) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, width, stride, bias)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, 1, bias)
        self.bn2 = norm(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class Bottleneck(nn.Module):
    """``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + S(x))``: 1x1 to
    ``width``, 3x3 with the block's stride, 1x1 to ``4 width`` channels."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, norm: Norm, bias: bool,
                 downsample: nn.Module) -> None:
        super().__init__()
        self.conv1 = conv1x1(c_in, width, 1, bias)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride, bias)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, width * self.expansion, 1, bias)
        self.bn3 = norm(width * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet(nn.Module):
    """Stem, stages ``layer1``, ``layer2``, ... of residual blocks, global average pool,
    ``fc``. Stage ``i`` has ``layers[i]`` blocks of ``widths[i]`` channels (times the
    block's expansion at its output), stride 2 entering every stage but the first."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...],
                 widths: tuple[int, ...], in_channels: int, n_classes: int, norm: Norm,
                 bias: bool, *, imagenet_stem: bool, pad_shortcut: bool) -> None:
        super().__init__()
        stem = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=bias)
        else:
            self.conv1 = conv3x3(in_channels, stem, 1, bias)
        self.bn1 = norm(stem)
        self.maxpool = (nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem
                        else nn.Identity())
        self.stages: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(len(layers)))
        c_in = stem
        for i, (count, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                c_out = width * block.expansion
                if stride == 1 and c_in == c_out:
                    downsample: nn.Module = nn.Identity()
                elif pad_shortcut:
                    downsample = PadShortcut(stride, c_out - c_in)
                else:
                    downsample = nn.Sequential(conv1x1(c_in, c_out, stride, bias), norm(c_out))
                blocks.append(block(c_in, width, stride, norm, bias, downsample))
                c_in = c_out
            self.add_module(self.stages[i], nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = self.get_submodule(stage)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(owner: str, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...],
            widths: tuple[int, ...], input_shape: tuple[int, ...], n_classes: int,
            norm: str | None, groups: int | None, *, imagenet_stem: bool,
            pad_shortcut: bool) -> ResNet:
    normalised = (widths[0], *widths, *(w * block.expansion for w in widths))
    make_norm, bias = norm_layer(norm, groups, normalised, owner)
    return ResNet(block, layers, widths, input_shape[0], n_classes, make_norm, bias,
                  imagenet_stem=imagenet_stem, pad_shortcut=pad_shortcut)


def resnet20(input_shape: tuple[int, ...], n_classes: int = 10, norm: str | None = "batch",
             groups: int | None = None) -> ResNet:
    """He et al. 2016's CIFAR ResNet-20 (section 4.2): 3x3 conv 16, 3 x 3 basic blocks of
    16/32/64 channels, option-A shortcuts, global pool, fc; 0.27M parameters."""
    return _resnet("resnet20", BasicBlock, (3, 3, 3), (16, 32, 64), input_shape, n_classes,
                   norm, groups, imagenet_stem=False, pad_shortcut=True)


def resnet18(input_shape: tuple[int, ...], n_classes: int = 10, norm: str | None = "batch",
             groups: int | None = None) -> ResNet:
    """ResNet-18 for 32x32 inputs: 3x3 stem conv 64 (stride 1, no max-pool), 4 x 2 basic
    blocks of 64/128/256/512 channels, projection shortcuts; 11.2M parameters."""
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), input_shape,
                   n_classes, norm, groups, imagenet_stem=False, pad_shortcut=False)


def resnet18_imagenet(input_shape: tuple[int, ...], n_classes: int = 1000,
                      norm: str | None = "batch", groups: int | None = None) -> ResNet:
    """He et al. 2016's ImageNet ResNet-18 (Table 1): 7x7/2 stem conv 64, 3x3/2 max-pool,
    4 x 2 basic blocks of 64/128/256/512 channels, projection shortcuts; 11.7M parameters."""
    return _resnet("resnet18-imagenet", BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512),
                   input_shape, n_classes, norm, groups, imagenet_stem=True,
                   pad_shortcut=False)


def resnet50_imagenet(input_shape: tuple[int, ...], n_classes: int = 1000,
                      norm: str | None = "batch", groups: int | None = None) -> ResNet:
    """He et al. 2016's ImageNet ResNet-50 (Table 1): 7x7/2 stem conv 64, 3x3/2 max-pool,
    [3, 4, 6, 3] bottlenecks of 64/128/256/512 (x4 out) channels, projection shortcuts;
    25.6M parameters."""
    return _resnet("resnet50-imagenet", Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512),
                   input_shape, n_classes, norm, groups, imagenet_stem=True,
                   pad_shortcut=False)
