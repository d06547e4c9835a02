"""The network builder: a NetSpec in, an nn.Module out, in the layout of torchvision's resnet.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.models.blocks import UNIT_CLASSES, PadShortcut, ResidualUnit, conv1x1
from workbench.models.network import Network
from workbench.spec import NetSpec


class ResNet(Network):
    """CIFAR- or ImageNet-style residual (or plain) network built from a NetSpec.

    ImageNet-family nets with post-activation units use torchvision's module names
    (`conv1`, `bn1`, `layer1..4`, `downsample`, `fc`), so their state_dicts are interchangeable.

    Families that share this layout (wide ResNets, ResNeXt) pass their own spec with the residual
    `layout` it describes, a `stem_width` when the stem is narrower than the first stage, and
    `unit_options` for the units (`groups`, `base_width`, `dropout`).
    """

    def __init__(
        self,
        spec: Any,
        *,
        layout: NetSpec | None = None,
        stem_width: int | None = None,
        unit_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.layout = spec = layout if layout is not None else spec
        self.unit_options = dict(unit_options or {})
        self.unit_class = UNIT_CLASSES[spec.unit]
        self._units_total = spec.units
        self._units_built = 0
        preact = spec.placement == "full_preact"
        stem_width = stem_width or spec.widths[0]
        if spec.family == "imagenet":
            self.conv1 = nn.Conv2d(spec.in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(spec.in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        # He 2016's CIFAR pre-activation nets leave the stem bare: the first unit's BN-ReLU follows it.
        self.bn1 = None if preact and spec.family == "cifar" else nn.BatchNorm2d(stem_width)
        self.stem_relu = spec.placement != "relu_only_preact" and self.bn1 is not None
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if spec.family == "imagenet" else None
        self.inplanes = stem_width
        for index, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True)):
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", self._make_layer(width, blocks, stride))
        self.final_bn = nn.BatchNorm2d(self.inplanes) if preact else None
        self.final_relu = spec.placement in ("full_preact", "relu_only_preact")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, spec.num_classes)
        self._init_weights()

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"layer{i + 1}", getattr(self, f"layer{i + 1}")) for i in range(len(self.layout.widths))]

    def units(self) -> list[ResidualUnit]:
        """Every unit, in forward order."""
        return [unit for stage in self.stages for unit in stage]

    def after_stages(self) -> list[nn.Module]:
        return [self.final_bn] if self.final_bn is not None else []

    def weighted_depth(self) -> int:
        return sum(1 for name, module in self.named_modules()
                   if isinstance(module, nn.Conv2d | nn.Linear) and ".downsample" not in name)

    def path_lengths(self) -> list[float]:
        if self.layout.shortcut == "none":
            return [0.0] * len(self.units()) + [1.0]
        return super().path_lengths()

    def _shortcut(self, planes: int, stride: int) -> nn.Module | None:
        """The one place that decides which shortcut a unit gets."""
        spec = self.layout
        out_planes = planes * self.unit_class.expansion
        shape_changes = stride != 1 or self.inplanes != out_planes
        if spec.shortcut == "none" or (spec.shortcut in ("A", "B") and not shape_changes):
            return None
        if spec.shortcut == "A":
            return PadShortcut(self.inplanes, out_planes, stride)
        projection = conv1x1(self.inplanes, out_planes, stride)
        if spec.placement == "full_preact":
            return nn.Sequential(projection)
        return nn.Sequential(projection, nn.BatchNorm2d(out_planes))

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        spec = self.layout
        layers = []
        for block_index in range(blocks):
            unit_stride = stride if block_index == 0 else 1
            self._units_built += 1
            drop_prob = spec.stochastic_depth * self._units_built / self._units_total
            layers.append(
                self.unit_class(
                    self.inplanes,
                    planes,
                    unit_stride,
                    self._shortcut(planes, unit_stride),
                    placement=spec.placement,
                    residual=spec.shortcut != "none",
                    drop_prob=drop_prob,
                    stride_on=spec.bottleneck_stride,
                    **self.unit_options,
                )
            )
            self.inplanes = planes * self.unit_class.expansion
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if self.layout.zero_init_residual:
            for unit in self.units():
                nn.init.constant_(unit.last_bn().weight, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the classifier: the pooled feature vector."""
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        if self.stem_relu:
            x = self.relu(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in self.stages:
            x = stage(x)
        if self.final_bn is not None:
            x = self.final_bn(x)
        if self.final_relu:
            x = self.relu(x)
        return torch.flatten(self.avgpool(x), 1)
