"""Networks of every family built from their specs, through one factory: `build_network(spec)`."""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

from workbench.models.analysis import summarize
from workbench.models.blocks import BasicBlock, Bottleneck, PadShortcut, ResidualUnit
from workbench.models.densenet import DenseNet
from workbench.models.fractalnet import FractalNet
from workbench.models.network import Network, head_of, head_prefix, set_head
from workbench.models.resnet import ResNet
from workbench.models.resnext import ResNeXt
from workbench.models.rir import ResNetInResNet
from workbench.models.wide_resnet import WideResNet
from workbench.spec import parse_net

BUILDERS: dict[str, type[Network]] = {
    "resnet": ResNet,
    "densenet": DenseNet,
    "wide_resnet": WideResNet,
    "resnext": ResNeXt,
    "fractalnet": FractalNet,
    "rir": ResNetInResNet,
}


def build_network(spec: Any) -> Network:
    """The network a spec of any family describes (a mapping is validated first)."""
    spec = parse_net(spec)
    return BUILDERS[spec.kind](spec)


def state_dict_layout(spec: Any) -> dict[str, tuple[int, ...]]:
    """{state_dict key: shape} of `spec`'s network, built on the meta device (no memory), cached per spec."""
    spec = parse_net(spec)
    return dict(_layout_of(type(spec).__name__, spec.model_dump_json()))


@functools.lru_cache(maxsize=256)
def _layout_of(kind: str, spec_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build_network(json.loads(spec_json))
    return tuple((key, tuple(value.shape)) for key, value in model.state_dict().items())


__all__ = [
    "BUILDERS",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "FractalNet",
    "Network",
    "PadShortcut",
    "ResNeXt",
    "ResNet",
    "ResNetInResNet",
    "ResidualUnit",
    "WideResNet",
    "build_network",
    "head_of",
    "head_prefix",
    "set_head",
    "state_dict_layout",
    "summarize",
]
