"""Architectures side by side: what each network costs (parameters, multiply-adds per image) and what its
paper reports, for error-against-cost charts of an "architectures" group."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from workbench.errors import PresetNotFound
from workbench.models import build_network
from workbench.models.analysis import count_parameters, summarize
from workbench.presets import get_preset
from workbench.spec import parse_net


@functools.lru_cache(maxsize=128)
def _costs(net_json: str, input_size: int | None) -> tuple[int, int]:
    model = build_network(parse_net(json.loads(net_json)))
    if input_size is None:
        return count_parameters(model)[0], 0
    summary = summarize(model, input_size=input_size, batch_size=1)
    return summary["params"], summary["macs"]


def network_costs(net: Mapping[str, Any], input_size: int | None = None) -> dict[str, int]:
    """{"params", "macs"} of a stored network spec (JSON data); multiply-adds per `input_size` image
    (default the spec's own). Cached: a group's chart asks again at every redraw."""
    spec = parse_net(dict(net))
    params, macs = _costs(spec.model_dump_json(), input_size or spec.input_size)
    return {"params": params, "macs": macs}


def paper_points(presets: Iterable[str], home=None) -> list[dict[str, Any]]:
    """One point per CIFAR preset with a reported CIFAR-10 error: {"name", "params", "macs", "error"}
    (ImageNet presets report ImageNet errors and are left out)."""
    points = []
    for name in dict.fromkeys(presets):
        try:
            preset = get_preset(name, home)
        except PresetNotFound:
            continue
        if preset.reference_error is None or getattr(preset.spec, "family", "cifar") != "cifar":
            continue
        points.append({"name": name, **network_costs(preset.spec.model_dump()), "error": preset.reference_error})
    return points
