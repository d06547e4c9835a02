"""What every family's network offers the rest of the workbench.

Training, analysis, export and fine-tuning never look inside a family: they use the stages
(per-stage gradient norms, freezing early stages), the units (per-unit input gradients, lesions),
the head (`fc`, or torchvision's `classifier` for DenseNets) and the pooled feature vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU gain), BatchNorm weight 1 and bias 0, zero Linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.constant_(module.bias, 0)


class Network(nn.Module):
    """Base of every family's network: a `spec`, named stages made of units, a head, pooled features."""

    #: Attribute (and state_dict prefix) of the classifier head.
    head_name = "fc"
    spec: object

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of each stage in forward order; a stage is the unit of per-stage gradient norms."""
        raise NotImplementedError

    @property
    def stages(self) -> list[nn.Module]:
        return [stage for _, stage in self.named_stages()]

    def stage_units(self) -> list[list[nn.Module]]:
        """The units of each stage, in forward order (by default a stage is a Sequential of units)."""
        return [list(stage) for stage in self.stages]

    def units(self) -> list[nn.Module]:
        """Every unit, in forward order: each takes and returns one tensor."""
        return [unit for units in self.stage_units() for unit in units]

    def after_stages(self) -> list[nn.Module]:
        """Modules with parameters between the last stage and the head (a final BatchNorm)."""
        return []

    def weighted_depth(self) -> int:
        """Conv and linear layers on the longest input-to-output path."""
        raise NotImplementedError

    def path_lengths(self) -> list[float]:
        """P(an input-to-output path crosses k units), k = 0..n: Binomial(n, 1/2) when every unit can be skipped."""
        n = len(self.units())
        return [math.comb(n, k) / 2**n for k in range(n + 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the classifier: the pooled feature vector."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.forward_features(x))


def head_of(model: nn.Module) -> nn.Module:
    """The classifier head of a network (`fc`, or `classifier` for DenseNets)."""
    return getattr(model, getattr(model, "head_name", "fc"))


def set_head(model: nn.Module, head: nn.Module) -> None:
    setattr(model, getattr(model, "head_name", "fc"), head)


def head_prefix(model: nn.Module) -> str:
    """The state_dict prefix of the head, with its dot: 'fc.' or 'classifier.'."""
    return getattr(model, "head_name", "fc") + "."
