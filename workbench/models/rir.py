"""ResNet in ResNet (Targ, Almeida & Lyman 2016, "Resnet in Resnet: Generalizing Residual Architectures").

The generalized residual block keeps two streams of equal width: a residual stream r with an
identity shortcut and a transient stream t without one, exchanging information through four
3x3 convolutions (Eq. 1):

    r' = BN-ReLU(conv(r, W_r->r) + conv(t, W_t->r) + shortcut(r))
    t' = BN-ReLU(conv(r, W_r->t) + conv(t, W_t->t))

A RiR block replaces each convolution of a ResNet unit by a generalized residual block (two of
them) and adds an outer identity shortcut around them on the residual stream. The paper's wide
CIFAR model ("18-layer + wide RiR"): a 3x3 conv-BN-ReLU stem per stream, eight RiR blocks in
three stages (2, 3, 3) of total widths 96, 192, 384 (half per stream), global average pooling
of both streams and `fc`: 1 + 8 x 2 + 1 = 18 layers. Where the shape changes, shortcuts
subsample and zero-pad channels (parameter-free, the identity "with appropriate padding").

Between RiR blocks the two streams travel as one tensor, residual channels first, so every unit
takes and returns a single tensor like the units of the other families.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from workbench.models.blocks import PadShortcut, conv3x3
from workbench.models.network import Network, init_weights
from workbench.spec import RiRSpec


def _stream_stem(in_channels: int, planes: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv", conv3x3(in_channels, planes)),
        ("bn", nn.BatchNorm2d(planes)),
        ("relu", nn.ReLU(inplace=True)),
    ]))


def _identity_shortcut(in_planes: int, planes: int, stride: int) -> PadShortcut | None:
    return PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else None


class GeneralizedResidualBlock(nn.Module):
    """Eq. 1 of the paper: residual and transient streams of `planes` channels each."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.residual_to_residual = conv3x3(in_planes, planes, stride)
        self.transient_to_residual = conv3x3(in_planes, planes, stride)
        self.residual_to_transient = conv3x3(in_planes, planes, stride)
        self.transient_to_transient = conv3x3(in_planes, planes, stride)
        self.bn_residual = nn.BatchNorm2d(planes)
        self.bn_transient = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _identity_shortcut(in_planes, planes, stride)

    def forward(self, residual: torch.Tensor, transient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        identity = self.shortcut(residual) if self.shortcut is not None else residual
        new_residual = self.residual_to_residual(residual) + self.transient_to_residual(transient) + identity
        new_transient = self.residual_to_transient(residual) + self.transient_to_transient(transient)
        return self.relu(self.bn_residual(new_residual)), self.relu(self.bn_transient(new_transient))


class RiRBlock(nn.Module):
    """Generalized residual blocks in a row, with an outer identity shortcut on the residual stream.

    Input and output are the two streams concatenated (residual channels first).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, layers: int = 2) -> None:
        super().__init__()
        self.in_planes = in_planes
        self.planes = planes
        self.layers = nn.Sequential(*[
            GeneralizedResidualBlock(in_planes if index == 0 else planes, planes, stride if index == 0 else 1)
            for index in range(layers)
        ])
        self.shortcut = _identity_shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual, transient = x[:, : self.in_planes], x[:, self.in_planes :]
        identity = self.shortcut(residual) if self.shortcut is not None else residual
        for layer in self.layers:
            residual, transient = layer(residual, transient)
        return torch.cat([residual + identity, transient], 1)


class ResNetInResNet(Network):
    """A CIFAR ResNet in ResNet built from a RiRSpec."""

    def __init__(self, spec: RiRSpec) -> None:
        super().__init__()
        self.spec = spec
        planes = spec.widths[0] // 2
        self.residual_stem = _stream_stem(spec.in_channels, planes)
        self.transient_stem = _stream_stem(spec.in_channels, planes)
        for index, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True), start=1):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 1 and block == 0 else 1
                stage.append(RiRBlock(planes, width // 2, stride, spec.layers_per_block))
                planes = width // 2
            self.add_module(f"layer{index}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * planes, spec.num_classes)
        init_weights(self)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, len(self.spec.widths) + 1)]

    def weighted_depth(self) -> int:
        return 2 + self.spec.layers_per_block * len(self.units())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.residual_stem(x), self.transient_stem(x)], 1)
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)
