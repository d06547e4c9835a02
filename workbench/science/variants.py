"""Comparable variants in one group: the identity-mapping placements (He et al. 2016, Table 2) and
stochastic depth against the same net without it (Huang et al. 2016).

Every run of a group gets the same DataSpec and TrainSpec (data subset, batch order, augmentation,
seed, recipe), so their curves differ only through the network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from workbench.errors import WorkbenchError
from workbench.presets import get_preset
from workbench.science.degradation import submit_run
from workbench.spec import NETWORK_SPEC_TYPES, DataSpec, NetSpec, RunSpec, TrainSpec

logger = logging.getLogger(__name__)

SWEEP = "sweep"  # the store's group kind for runs that differ in one setting

IDENTITY_VARIANTS = (
    "resnet110-original",
    "resnet110-bn-after-add",
    "resnet110-relu-before-add",
    "resnet110-relu-only-preact",
    "resnet110-full-preact",
)


def launch_variants(
    target: Any,
    nets: Sequence[str | NetSpec],
    *,
    data: DataSpec,
    train: TrainSpec,
    group_name: str,
    group_kind: str = SWEEP,
    home=None,
) -> dict[str, int]:
    """Queue one run per net (preset name or network spec of any family) as one group; returns {net name: run id}."""
    resolved: list[tuple[str, str | None, NetSpec]] = []
    for net in nets:
        if isinstance(net, NETWORK_SPEC_TYPES):
            resolved.append((net.name, None, net))
        else:
            preset = get_preset(net, home)
            resolved.append((preset.name, preset.name, preset.spec))
    names = [name for name, _, _ in resolved]
    if len(set(names)) != len(names):
        raise WorkbenchError(f"each variant needs its own name; got {', '.join(names)}")
    run_ids = {}
    for name, preset, spec in resolved:
        run_ids[name] = submit_run(target, RunSpec(net=spec, data=data, train=train), name=f"{name} ({group_name})",
                                   preset=preset, group_name=group_name, group_kind=group_kind)
    logger.info("queued %d variants as group %s", len(run_ids), group_name)
    return run_ids


def launch_identity_variants(target: Any, *, data: DataSpec, train: TrainSpec, group_name: str,
                             home=None) -> dict[str, int]:
    """The five placements of He et al. 2016 Fig. 4 (ResNet-110, shortcut B) as one group."""
    return launch_variants(target, IDENTITY_VARIANTS, data=data, train=train, group_name=group_name, home=home)


def stochastic_depth_pair(net: str | NetSpec, drop_prob: float = 0.5, home=None) -> tuple[NetSpec, NetSpec]:
    """(the net without stochastic depth, the same net with last-unit drop probability `drop_prob`)."""
    spec = net if isinstance(net, NETWORK_SPEC_TYPES) else get_preset(net, home).spec
    if not isinstance(spec, NetSpec):
        raise WorkbenchError(f"{spec.name} is a {spec.kind} net; stochastic depth is a ResNet setting (kind resnet)")
    if spec.shortcut == "none":
        raise WorkbenchError(f"{spec.name} is a plain net; stochastic depth needs residual units with shortcuts")
    if not 0.0 < drop_prob < 1.0:
        raise WorkbenchError(f"drop_prob is the last unit's drop probability in (0, 1); got {drop_prob}")
    base_name = spec.name.removesuffix("-sd")
    data = spec.model_dump()
    without = NetSpec.model_validate({**data, "name": base_name, "stochastic_depth": 0.0})
    with_sd = NetSpec.model_validate({**data, "name": f"{base_name}-sd{drop_prob:g}", "stochastic_depth": drop_prob})
    return without, with_sd


def launch_stochastic_depth_comparison(
    target: Any, net: str | NetSpec = "resnet110", drop_prob: float = 0.5, *, data: DataSpec, train: TrainSpec,
    group_name: str, home=None,
) -> dict[str, int]:
    """Queue a net with and without stochastic depth as one group, everything else identical."""
    without, with_sd = stochastic_depth_pair(net, drop_prob, home)
    return launch_variants(target, [without, with_sd], data=data, train=train, group_name=group_name,
                           home=home)
