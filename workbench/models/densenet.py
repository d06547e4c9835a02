"""Densely connected networks (Huang et al. 2017, "Densely Connected Convolutional Networks").

In the layout and with the module names of torchvision's densenet.py, so ImageNet members load
torchvision's state_dicts strictly both ways:

    features.conv0 (norm0, relu0, pool0 on ImageNet)
    features.denseblock1.denselayer1.{norm1, relu1, conv1, norm2, relu2, conv2}
    features.transition1.{norm, relu, conv, pool}
    ...
    features.norm<blocks + 1>, then ReLU, global average pooling and `classifier`

A dense layer is BN-ReLU-conv3x3 producing k (the growth rate) new channels; with the
bottleneck (DenseNet-B) a BN-ReLU-conv1x1 to bn_size*k channels comes first. Each layer sees the
concatenation of the block input and every earlier layer's output. A transition is
BN-ReLU-conv1x1 (keeping floor(theta * channels), theta = compression) and 2x2 average pooling.
CIFAR nets have three blocks and a 3x3 stem of 16 channels (2k for DenseNet-BC).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.network import Network, init_weights
from workbench.spec import DenseNetSpec


class _DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 to k channels, after a BN-ReLU-conv1x1 to bn_size*k channels when `bottleneck`."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int, bottleneck: bool, drop_rate: float) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.norm1 = nn.BatchNorm2d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        if bottleneck:
            inner = bn_size * growth_rate
            self.conv1 = nn.Conv2d(in_features, inner, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(inner)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_features, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The k new feature maps computed from the concatenated `features` (left intact)."""
        out = self.conv1(self.relu1(self.norm1(features)))
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; the output is the input concatenated with every layer's new features."""

    def __init__(self, num_layers: int, in_features: int, growth_rate: int, bn_size: int, bottleneck: bool,
                 drop_rate: float) -> None:
        super().__init__()
        for index in range(num_layers):
            layer = _DenseLayer(in_features + index * growth_rate, growth_rate, bn_size, bottleneck, drop_rate)
            self.add_module(f"denselayer{index + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.values():
            features = torch.cat([features, layer(features)], 1)
        return features


class _Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) and 2x2 average pooling between dense blocks."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(Network):
    """A CIFAR- or ImageNet-style DenseNet built from a DenseNetSpec, with torchvision's module names."""

    head_name = "classifier"

    def __init__(self, spec: DenseNetSpec) -> None:
        super().__init__()
        self.spec = spec
        features = spec.init_features
        if spec.family == "imagenet":
            stem = [
                ("conv0", nn.Conv2d(spec.in_channels, features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        else:
            # The paper's CIFAR nets: the first dense layer's BN-ReLU follows the bare stem conv.
            stem = [("conv0", nn.Conv2d(spec.in_channels, features, kernel_size=3, stride=1, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stem))
        for index, layers in enumerate(spec.blocks, start=1):
            block = _DenseBlock(layers, features, spec.growth_rate, spec.bn_size, spec.bottleneck, spec.drop_rate)
            self.features.add_module(f"denseblock{index}", block)
            features += layers * spec.growth_rate
            if index != len(spec.blocks):
                out_features = int(math.floor(spec.compression * features))
                self.features.add_module(f"transition{index}", _Transition(features, out_features))
                features = out_features
        self.final_norm_name = f"norm{len(spec.blocks) + 1}"
        self.features.add_module(self.final_norm_name, nn.BatchNorm2d(features))
        self.classifier = nn.Linear(features, spec.num_classes)
        init_weights(self)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        names = [f"denseblock{i}" for i in range(1, len(self.spec.blocks) + 1)]
        return [(name, getattr(self.features, name)) for name in names]

    def stage_units(self) -> list[list[nn.Module]]:
        return [list(block.values()) for block in self.stages]

    def after_stages(self) -> list[nn.Module]:
        return [getattr(self.features, self.final_norm_name)]

    def weighted_depth(self) -> int:
        # Every dense layer feeds all later ones, so every conv lies on the longest path.
        return sum(1 for module in self.modules() if isinstance(module, nn.Conv2d | nn.Linear))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
