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
    "layout_model",
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
    """Parameters, multiply-adds, depth and more for a preset, spec or built model (a spec is laid out on the
    meta device, so nothing is allocated)."""
    from workbench.models import Network
    from workbench.models import summarize as summarize_model

    model = net if isinstance(net, Network) else layout_model(net)
    return summarize_model(model, input_size=input_size, batch_size=batch_size)


def layout_model(net: str | dict | NetSpec, home: Path | None = None) -> Network:
    """The network on PyTorch's meta device: every shape and count, without allocating a single weight."""
    import torch

    with torch.device("meta"):
        return build_model(net, home)


def load_model(
    source: int | str | Path, net: str | dict | NetSpec | None = None, *, checkpoint: str = "best",
    home: str | Path | None = None,
) -> nn.Module:
    """Rebuild a model in eval mode from a run id or a file; `.metadata` holds class names, mean, std and more.

    A file is a bundle, a workbench checkpoint (any head), a torchvision-layout state_dict or a
    pytorch_resnet_cifar10 checkpoint; its network is the file's own spec, `net`, or the first preset
    that takes the weights. A run id (an int, or "run:12") loads that run's `checkpoint` ("best" or
    "last") from the home folder's store.
    """
    from workbench.weights.loader import load_model_file

    text = str(source)
    if isinstance(source, int) or text.removeprefix("run:").isdigit() and not Path(text).exists():
        from workbench.paths import RunFolder, home_dir

        run_id = int(text.removeprefix("run:"))
        path = RunFolder.of(home_dir(home), run_id).checkpoint(checkpoint)
        if not path.is_file():
            raise WorkbenchError(f"run {run_id} has no {checkpoint} checkpoint in {home_dir(home)}")
        return load_model_file(path, None if net is None else resolve_spec(net, home))
    return load_model_file(Path(source), None if net is None else resolve_spec(net, home))
