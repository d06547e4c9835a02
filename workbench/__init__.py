"""ResNet Workbench: build residual networks from presets, train them, compare them.

Torch is imported on first use, so light users (the store, the CLI's bookkeeping commands)
start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.presets import list_presets, load_preset
from workbench.spec import NETWORK_SPEC_TYPES, NetSpec, parse_net

if TYPE_CHECKING:
    from torch import nn

    from workbench.models import Network

__all__ = [
    "NetSpec",
    "WorkbenchError",
    "build_model",
    "list_presets",
    "load_model",
    "load_preset",
    "resolve_spec",
    "summarize",
]


def resolve_spec(net: str | dict | NetSpec, home: Path | None = None) -> NetSpec:
    """A network spec of any family from a preset name, a spec mapping (without `kind`: a resnet), or a spec."""
    if isinstance(net, NETWORK_SPEC_TYPES):
        return net
    if isinstance(net, dict):
        return parse_net(net)
    if isinstance(net, str):
        return load_preset(net, home)
    raise TypeError(f"expected a preset name, a spec dict or a network spec, got {type(net).__name__}")


def build_model(net: str | dict | NetSpec, home: Path | None = None) -> Network:
    """Build the network for a preset name, a spec mapping or a spec of any family."""
    from workbench.models import build_network

    return build_network(resolve_spec(net, home))


def summarize(net: str | dict | NetSpec | nn.Module, input_size: int | None = None, batch_size: int = 128) -> dict:
    """Parameters, multiply-adds, depth and more for a preset, spec or built model."""
    from workbench.models import Network
    from workbench.models import summarize as summarize_model

    model = net if isinstance(net, Network) else build_model(net)
    return summarize_model(model, input_size=input_size, batch_size=batch_size)


def load_model(path: str | Path) -> Network:
    """Rebuild the exact model of an exported bundle (eval mode; `.metadata` holds class names, mean, std)."""
    from workbench.export import load_model as load_bundle_model

    return load_bundle_model(Path(path))
