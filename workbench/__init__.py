"""ResNet Workbench: build residual networks from presets, train them, compare them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import ResNet
from workbench.models import summarize as _summarize_model
from workbench.presets import list_presets, load_preset
from workbench.spec import NetSpec, parse_spec

__all__ = ["NetSpec", "WorkbenchError", "build_model", "list_presets", "load_preset", "resolve_spec", "summarize"]


def resolve_spec(net: str | dict | NetSpec, home: Path | None = None) -> NetSpec:
    """A NetSpec from a preset name, a spec mapping, or a NetSpec."""
    if isinstance(net, NetSpec):
        return net
    if isinstance(net, dict):
        return parse_spec(NetSpec, net)
    if isinstance(net, str):
        return load_preset(net, home)
    raise TypeError(f"expected a preset name, a spec dict or a NetSpec, got {type(net).__name__}")


def build_model(net: str | dict | NetSpec, home: Path | None = None) -> ResNet:
    """Build the network for a preset name, a spec mapping or a NetSpec."""
    return ResNet(resolve_spec(net, home))


def summarize(net: str | dict | NetSpec | nn.Module, input_size: int | None = None, batch_size: int = 128) -> dict:
    """Parameters, multiply-adds, depth and more for a preset, spec or built model."""
    model = net if isinstance(net, ResNet) else build_model(net)
    return _summarize_model(model, input_size=input_size, batch_size=batch_size)
