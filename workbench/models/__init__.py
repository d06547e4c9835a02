"""Residual and plain networks built from NetSpecs."""

from workbench.models.analysis import summarize
from workbench.models.blocks import BasicBlock, Bottleneck, PadShortcut, ResidualUnit
from workbench.models.resnet import ResNet

__all__ = ["BasicBlock", "Bottleneck", "PadShortcut", "ResNet", "ResidualUnit", "summarize"]
