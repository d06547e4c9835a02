"""Residual units and shortcuts.

A unit is a residual branch of convolutions plus an optional shortcut. Where BN and ReLU sit
relative to the addition (He et al. 2016, Fig. 4) is a recipe of op names, so one class per
unit kind covers every placement while keeping torchvision's attribute names (`conv1`,
`bn1`, ..., `downsample`) and therefore its state_dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: subsample with the stride and zero-pad new channels equally on both sides."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


def _unit_recipe(placement: str, convs: int, dropout: bool = False) -> tuple[list[str], list[str]]:
    """Op names before and after the addition for a unit with `convs` convolutions.

    With `dropout`, a dropout op goes right before the last convolution (Zagoruyko & Komodakis 2016).
    """
    before: list[str] = []
    after: list[str] = []
    for i in range(1, convs + 1):
        last = i == convs
        if placement == "post":
            before += [f"conv{i}", f"bn{i}"] + ([] if last else ["relu"])
        elif placement == "bn_after_add":
            before += [f"conv{i}"] + ([] if last else [f"bn{i}", "relu"])
        elif placement == "relu_before_add":
            before += [f"conv{i}", f"bn{i}", "relu"]
        elif placement == "relu_only_preact":
            before += ["relu", f"conv{i}", f"bn{i}"]
        elif placement == "full_preact":
            before += [f"bn{i}", "relu", f"conv{i}"]
        else:
            raise ValueError(f"unknown placement {placement!r}")
    if dropout:
        before.insert(before.index(f"conv{convs}"), "dropout")
    if placement == "post":
        after = ["relu"]
    elif placement == "bn_after_add":
        after = [f"bn{convs}", "relu"]
    return before, after


class ResidualUnit(nn.Module):
    """Shared forward for basic and bottleneck units; subclasses create the layers."""

    expansion = 1
    convs = 2

    def _setup(
        self,
        placement: str,
        downsample: nn.Module | None,
        residual: bool,
        drop_prob: float,
        dropout: float = 0.0,
    ) -> None:
        self.downsample = downsample
        self.placement = placement
        self.residual = residual
        self.drop_prob = drop_prob
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.ops_before_add, self.ops_after_add = _unit_recipe(placement, self.convs, dropout=dropout > 0)

    def _bn_channels(self, conv_in: list[int], conv_out: list[int]) -> list[int]:
        return conv_in if self.placement == "full_preact" else conv_out

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose zero-init silences the residual branch."""
        return getattr(self, f"bn{self.convs}")

    def _projection_input(self, x: torch.Tensor) -> torch.Tensor:
        """What a dropped unit's shortcut sees: a full pre-activation projection takes BN-ReLU(x), as when kept."""
        if self.placement == "full_preact" and not isinstance(self.downsample, PadShortcut):
            return F.relu(self.bn1(x))
        return x

    def _branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the residual branch; also return the input the shortcut projection sees."""
        out = x
        shortcut_input = x
        activated = False
        for index, name in enumerate(self.ops_before_add):
            if name == "relu":
                # Never in place on the unit's own input: the shortcut still needs it.
                out = F.relu(out, inplace=index > 0)
                if self.placement == "full_preact" and not activated:
                    activated = True
                    if self.downsample is not None and not isinstance(self.downsample, PadShortcut):
                        shortcut_input = out
            else:
                out = getattr(self, name)(out)
        return out, shortcut_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            out, _ = self._branch(x)
        else:
            dropped = self.training and self.drop_prob > 0 and float(torch.rand(())) < self.drop_prob
            if dropped:
                out = self.downsample(self._projection_input(x)) if self.downsample is not None else x
            else:
                branch, shortcut_input = self._branch(x)
                if not self.training and self.drop_prob > 0:
                    branch = branch * (1.0 - self.drop_prob)
                identity = self.downsample(shortcut_input) if self.downsample is not None else x
                out = branch + identity
        for name in self.ops_after_add:
            # A dropped unit passes its input through unchanged; that tensor must stay intact for backward.
            out = F.relu(out, inplace=out is not x) if name == "relu" else getattr(self, name)(out)
        return out

    def extra_repr(self) -> str:
        text = f"placement={self.placement}, residual={self.residual}"
        return text + (f", drop_prob={self.drop_prob:.4f}" if self.drop_prob else "")


class BasicBlock(ResidualUnit):
    """Two 3x3 convolutions; `dropout` between them makes it a wide ResNet unit."""

    expansion = 1
    convs = 2

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        placement: str = "post",
        residual: bool = True,
        drop_prob: float = 0.0,
        stride_on: str = "3x3",
        groups: int = 1,
        base_width: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("basic units have no groups or bottleneck width; use bottleneck units")
        self._setup(placement, downsample, residual, drop_prob, dropout)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.conv2 = conv3x3(planes, planes)
        bn1, bn2 = self._bn_channels([inplanes, planes], [planes, planes])
        self.bn1 = nn.BatchNorm2d(bn1)
        self.bn2 = nn.BatchNorm2d(bn2)


class Bottleneck(ResidualUnit):
    """1x1 reduce, 3x3, 1x1 expand (x4). `stride_on` puts the stride on the 3x3 (v1.5) or the first 1x1 (paper).

    As in torchvision, the inner width is `planes * base_width / 64 * groups` and the 3x3 conv has
    `groups` groups: ResNeXt's cardinality and bottleneck width, or a wide ResNet's doubled width.
    """

    expansion = 4
    convs = 3

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        placement: str = "post",
        residual: bool = True,
        drop_prob: float = 0.0,
        stride_on: str = "3x3",
        groups: int = 1,
        base_width: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._setup(placement, downsample, residual, drop_prob, dropout)
        out_planes = planes * self.expansion
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (1, stride) if stride_on == "3x3" else (stride, 1)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.conv3 = conv1x1(width, out_planes)
        bn1, bn2, bn3 = self._bn_channels([inplanes, width, width], [width, width, out_planes])
        self.bn1 = nn.BatchNorm2d(bn1)
        self.bn2 = nn.BatchNorm2d(bn2)
        self.bn3 = nn.BatchNorm2d(bn3)


UNIT_CLASSES: dict[str, type[ResidualUnit]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
