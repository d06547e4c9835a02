"""Turn what a user asked for into runs to queue: one run, a plain + residual twin, a depth ladder, the
unit placements, a stochastic-depth or drop-path pair, preset variants, architectures side by side, a grid or
random sweep, or a fine-tune. The one place groups are planned.

A twin is the same network with and without shortcuts, trained on identical data in identical
order (same data spec, same seed). A ladder is several depths, each with its twin, in one group.
An architectures group is several networks of any family (DenseNet, wide ResNet, ...) on the same data.
Every run of a group gets the same DataSpec and TrainSpec, so curves differ only through the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from storage.status import ARCHITECTURES, LADDER, SEEDS, SWEEP, TWIN
from workbench.errors import PresetNotFound, SpecError, WorkbenchError
from workbench.presets import Preset, get_preset
from workbench.spec import (
    KINDS,
    NETWORK_SPEC_TYPES,
    PLACEMENTS,
    DataSpec,
    FractalNetSpec,
    NetSpec,
    NetworkSpec,
    RunSpec,
    TrainSpec,
    parse_spec,
)
from workbench.sweep_spec import (
    SweepSpec,
    grid_points,
    name_at_depth,
    random_points,
    trial_name,
    trial_preset,
    trial_spec,
)

DEFAULT_LADDER_DEPTHS = (20, 32, 44, 56)
DEFAULT_DROP_PROB = 0.5
DEFAULT_ARCHITECTURES = ("resnet56", "densenet-bc-100", "wrn-16-4")
IDENTITY_VARIANTS = (
    "resnet110-original",
    "resnet110-bn-after-add",
    "resnet110-relu-before-add",
    "resnet110-relu-only-preact",
    "resnet110-full-preact",
)


@dataclass(frozen=True)
class PlannedRun:
    """One run to queue: its display name, full spec, preset (when it matches one) and group."""

    name: str
    spec: RunSpec
    preset: str | None
    group_name: str | None = None
    group_kind: str | None = None
    parent_run_id: int | None = None


# -- twins and ladders ---------------------------------------------------------------------------


def same_network(first: NetworkSpec, second: NetworkSpec) -> bool:
    """Whether two specs build the same network (names aside)."""
    return type(first) is type(second) and first.model_dump(exclude={"name"}) == second.model_dump(exclude={"name"})


def matching_preset(net: NetworkSpec, presets: Iterable[Preset]) -> Preset | None:
    """The preset that builds exactly this network, if any."""
    return next((preset for preset in presets if same_network(preset.spec, net)), None)


def edited_name(net: NetworkSpec, base: Preset, presets: Iterable[Preset]) -> str:
    """What to call `net` after editing preset `base`: the preset it now matches ("resnet32"), else `base`'s name
    with the new depth where it names one and "-custom" ("resnet38-custom", "resnet20-custom")."""
    preset = matching_preset(net, presets)
    if preset:
        return preset.name
    name, old_depth, depth = base.name, getattr(base.spec, "depth", None), getattr(net, "depth", None)
    if old_depth and depth:
        name = re.sub(rf"(?<!\d){old_depth}(?!\d)", str(depth), name, count=1)
    return f"{name}-custom"


def _renamed(net: NetSpec, name: str, presets: Sequence[Preset], **changes: Any) -> NetSpec:
    data = {**net.model_dump(exclude={"name", "blocks"}), **changes, "name": name}
    if "depth" not in changes:
        data["blocks"] = net.blocks
        data.pop("depth")
    spec = parse_spec(NetSpec, data)
    preset = matching_preset(spec, presets)
    return spec.model_copy(update={"name": preset.name}) if preset else spec


def is_plain(net: NetSpec) -> bool:
    return net.shortcut == "none"


def resnet_only(net: NetworkSpec, what: str) -> NetSpec:
    """`net` when it is a ResNet (kind resnet); SpecError naming `what` needs one otherwise."""
    if not isinstance(net, NetSpec):
        raise SpecError(f"{what} is a ResNet setting, and {net.name} is a {KINDS[net.kind]}; pick a ResNet preset "
                        "in the Build tab, or compare families with an architectures launch")
    return net


def plain_counterpart(net: NetSpec, presets: Sequence[Preset] = ()) -> NetSpec:
    """The same network without shortcuts (no stochastic depth, no zero-init: both need shortcuts)."""
    if is_plain(net):
        return net
    name = f"plain{net.name.removeprefix('resnet')}" if net.name.startswith("resnet") else f"plain-{net.name}"
    return _renamed(net, name, presets, shortcut="none", stochastic_depth=0.0, zero_init_residual=False)


def residual_counterpart(net: NetSpec, presets: Sequence[Preset] = ()) -> NetSpec:
    """The same network with shortcuts: option A for CIFAR-style nets where it can pad, else option B."""
    if not is_plain(net):
        return net
    expansion = 4 if net.unit == "bottleneck" else 1
    channels = [net.widths[0], *(w * expansion for w in net.widths)]
    can_pad = all(b >= a for a, b in zip(channels, channels[1:], strict=False))
    shortcut = "A" if net.family == "cifar" and can_pad else "B"
    if net.name.startswith("plain-"):
        name = net.name.removeprefix("plain-")
    elif net.name.startswith("plain"):
        name = f"resnet{net.name.removeprefix('plain')}"
    else:
        name = f"res-{net.name}"
    return _renamed(net, name, presets, shortcut=shortcut)


def at_depth(net: NetSpec, depth: int, presets: Sequence[Preset] = ()) -> NetSpec:
    """The network with `depth` weighted layers (equal units per stage); SpecError when that depth cannot exist."""
    return _renamed(net, name_at_depth(net.name, depth), presets, depth=depth)


def unique_group_name(base: str, existing: Iterable[str]) -> str:
    """`base`, or `base (2)`, `base (3)`... whichever is not taken yet."""
    taken = set(existing)
    if base not in taken:
        return base
    number = 2
    while f"{base} ({number})" in taken:
        number += 1
    return f"{base} ({number})"


def _preset_name(net: NetworkSpec, presets: Sequence[Preset]) -> str | None:
    preset = matching_preset(net, presets)
    return preset.name if preset else None


def plan_single(
    net: NetworkSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = ()
) -> list[PlannedRun]:
    """One run of `net`."""
    return [PlannedRun(net.name, RunSpec(net=net, data=data, train=train), _preset_name(net, presets))]


def _planned_group(
    nets: Iterable[NetworkSpec], data: DataSpec, train: TrainSpec, presets: Sequence[Preset], group: str, kind: str
) -> list[PlannedRun]:
    """One run per net, all with the same data and recipe, in one group of `kind`."""
    return [PlannedRun(net.name, RunSpec(net=net, data=data, train=train), _preset_name(net, presets), group, kind)
            for net in nets]


def _twin_runs(
    net: NetSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset], group: str, kind: str
) -> list[PlannedRun]:
    twins = (plain_counterpart(net, presets), residual_counterpart(net, presets))
    return _planned_group(twins, data, train, presets, group, kind)


def plan_twin(
    net: NetSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *, group: str,
) -> list[PlannedRun]:
    """Plain and residual versions of `net` with identical data, data order and seed, as one "twin" group."""
    return _twin_runs(resnet_only(net, "a plain + residual twin"), data, train, presets, group, TWIN)


def plan_ladder(
    net: NetSpec, depths: Sequence[int], data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *,
    group: str,
) -> list[PlannedRun]:
    """A plain + residual twin at each depth, all in one "ladder" group (shallowest first)."""
    if len(set(depths)) < 2:
        raise SpecError("a depth ladder needs at least two different depths, for example 20, 32, 44, 56")
    resnet_only(net, "a depth ladder of plain + residual twins")
    plan: list[PlannedRun] = []
    for depth in sorted(set(depths)):
        try:
            deeper = at_depth(net, depth, presets)
        except SpecError as exc:
            raise SpecError(f"ladder depth {depth}: {exc}") from None
        plan += _twin_runs(deeper, data, train, presets, group, LADDER)
    return plan


def placement_variants(net: NetSpec, presets: Sequence[Preset] = ()) -> list[NetSpec]:
    """`net` with each unit placement of He et al. 2016 (Fig. 4 (a)-(e)), everything else unchanged."""
    if is_plain(resnet_only(net, "the unit placement")):
        raise SpecError("unit placements differ in where BN and ReLU meet the shortcut, and a plain net has none; "
                        "pick shortcut A, B or C in the Build tab")
    stem = net.name
    for placement in PLACEMENTS:
        stem = stem.removesuffix(f"-{placement.replace('_', '-')}")
    return [_renamed(net, f"{stem}-{placement.replace('_', '-')}", presets, placement=placement)
            for placement in PLACEMENTS]


def plan_placements(
    net: NetSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *, group: str,
) -> list[PlannedRun]:
    """The five unit placements of `net` with identical data, data order and seed, as one "sweep" group."""
    return _planned_group(placement_variants(net, presets), data, train, presets, group, SWEEP)


def plan_stochastic_depth(
    net: NetSpec, drop_prob: Any, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *, group: str,
) -> list[PlannedRun]:
    """`net` without and with stochastic depth (last unit dropped with `drop_prob`), as one "sweep" group."""
    try:
        probability = float(drop_prob)
    except (TypeError, ValueError):
        raise SpecError(f"the last unit's drop probability is a number between 0 and 1; got {drop_prob!r}") from None
    return _planned_group(stochastic_depth_pair(net, probability), data, train, presets, group, SWEEP)


def with_seeds(plan: Sequence[PlannedRun], seeds: int, *, group: str | None = None) -> list[PlannedRun]:
    """Every planned run repeated with `seeds` consecutive training seeds (initialization and data order), starting
    at its own; the repeats of one run differ only by seed (a seed group). Runs already in a group stay in it;
    the others form one "seeds" group named `group`. One seed returns the plan unchanged."""
    if not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise SpecError(f"seeds is how many times to repeat each run, from 1 to 100; got {seeds!r}")
    if seeds == 1:
        return list(plan)
    if group is None and any(run.group_name is None for run in plan):
        raise WorkbenchError("runs repeated over seeds form a group: give the group a name")
    repeated = []
    for run in plan:
        for seed in range(run.spec.train.seed, run.spec.train.seed + seeds):
            spec = run.spec.model_copy(update={"train": run.spec.train.model_copy(update={"seed": seed})})
            repeated.append(replace(run, name=f"{run.name} seed {seed}", spec=spec, group_name=run.group_name or group,
                                    group_kind=run.group_kind or SEEDS))
    return repeated


def seed_group_key(spec: Mapping[str, Any]) -> str:
    """What a stored run spec (JSON) is apart from its seeds: runs with the same key form a seed group."""
    data = {key: value for key, value in spec["data"].items() if key != "seed"}
    train = {key: value for key, value in spec["train"].items() if key != "seed"}
    return json.dumps({**spec, "data": data, "train": train}, sort_keys=True)


def default_group_name(kind: str, net_name: str, data: DataSpec, now: datetime | None = None) -> str:
    """A readable group name such as "twin resnet20 on synthetic, 2024-05-01 14:03"."""
    moment = (now or datetime.now()).strftime("%Y-%m-%d %H:%M")
    return f"{kind} {net_name} on {data.name}, {moment}"


def stochastic_depth_pair(
    net: str | NetworkSpec, drop_prob: float = 0.5, home=None
) -> tuple[NetSpec, NetSpec]:
    """(the net without stochastic depth, the same net with last-unit drop probability `drop_prob`)."""
    spec = resnet_only(net if isinstance(net, NETWORK_SPEC_TYPES) else get_preset(net, home).spec,
                       "stochastic depth (Huang et al. 2016)")
    if spec.shortcut == "none":
        raise WorkbenchError(f"{spec.name} is a plain net; stochastic depth needs residual units with shortcuts")
    if not 0.0 < drop_prob < 1.0:
        raise WorkbenchError(f"drop_prob is the last unit's drop probability in (0, 1); got {drop_prob}")
    base_name = spec.name.removesuffix("-sd")
    data = spec.model_dump()
    without = NetSpec.model_validate({**data, "name": base_name, "stochastic_depth": 0.0})
    with_sd = NetSpec.model_validate({**data, "name": f"{base_name}-sd{drop_prob:g}", "stochastic_depth": drop_prob})
    return without, with_sd


def twin_nets(depth: int, home=None) -> tuple[NetSpec, NetSpec]:
    """(plain, residual) CIFAR nets of one depth: the presets where they exist, else built alike."""
    pair = []
    for prefix, shortcut in (("plain", "none"), ("resnet", "A")):
        name = f"{prefix}{depth}"
        try:
            pair.append(get_preset(name, home).spec)
        except PresetNotFound:
            pair.append(NetSpec(name=name, family="cifar", unit="basic", depth=depth, shortcut=shortcut))
    return pair[0], pair[1]


def plan_preset_ladder(
    depths: Sequence[int], data: DataSpec, train: TrainSpec, *, group: str, home=None,
) -> list[PlannedRun]:
    """The paper's CIFAR ladder (plain and option-A ResNet presets at each depth) as one "ladder" group."""
    if len(set(depths)) < 2:
        raise WorkbenchError("a degradation ladder needs at least two different depths (for example 20 and 56)")
    nets = [net for depth in sorted(set(depths)) for net in twin_nets(depth, home)]
    return [PlannedRun(f"{net.name} ({group})", RunSpec(net=net, data=data, train=train), net.name, group, LADDER)
            for net in nets]


def plan_variants(
    nets: Sequence[str | NetworkSpec], data: DataSpec, train: TrainSpec, *, group: str, kind: str = SWEEP, home=None,
) -> list[PlannedRun]:
    """One run per net (preset name or network spec of any family) with identical data and recipe, as one group."""
    resolved = [(net.name, None, net) if isinstance(net, NETWORK_SPEC_TYPES) else (net, net, get_preset(net, home).spec)
                for net in nets]
    names = [name for name, _, _ in resolved]
    if len(set(names)) != len(names):
        raise WorkbenchError(f"each variant needs its own name; got {', '.join(names)}")
    return [PlannedRun(f"{name} ({group})", RunSpec(net=spec, data=data, train=train), preset, group, kind)
            for name, preset, spec in resolved]


def plan_architectures(
    nets: Sequence[str | NetworkSpec], data: DataSpec, train: TrainSpec, *, group: str, home=None,
) -> list[PlannedRun]:
    """Networks of any family (preset names or specs) with identical data, data order and seed, as one
    "architectures" group: Compare plots their error against parameters and multiply-adds."""
    if len(nets) < 2:
        raise SpecError("comparing architectures needs at least two networks, for example resnet56, densenet-bc-100 "
                        "and wrn-16-4")
    return plan_variants(nets, data, train, group=group, kind=ARCHITECTURES, home=home)


def drop_path_pair(net: str | NetworkSpec, home=None) -> tuple[FractalNetSpec, FractalNetSpec]:
    """(the FractalNet without drop-path, the same net with local and global drop-path) (Larsson et al. 2016)."""
    spec = net if isinstance(net, NETWORK_SPEC_TYPES) else get_preset(net, home).spec
    if not isinstance(spec, FractalNetSpec):
        raise SpecError(f"drop-path drops the columns of FractalNet joins, and {spec.name} is a {spec.kind} network; "
                        "pick a FractalNet (for example fractalnet-20)")
    base_name = spec.name.removesuffix("-droppath")
    data = spec.model_dump()
    return (FractalNetSpec.model_validate({**data, "name": base_name, "drop_path": False}),
            FractalNetSpec.model_validate({**data, "name": f"{base_name}-droppath", "drop_path": True}))


def plan_drop_path(
    net: NetworkSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *, group: str,
) -> list[PlannedRun]:
    """A FractalNet without and with drop-path, identical otherwise (dropout too), as one "sweep" group."""
    return _planned_group(drop_path_pair(net), data, train, presets, group, SWEEP)


def plan_sweep(sweep: SweepSpec, *, group: str) -> list[PlannedRun]:
    """Every trial of a grid (each combination) or random sweep (seeded draws), as one "sweep" group. A TPE sweep
    plans nothing ahead: its trials are asked for one by one as results come in (`workbench.jobs.sweeps`)."""
    if sweep.method == "tpe":
        return []
    points = grid_points(sweep) if sweep.method == "grid" else random_points(sweep)
    return [PlannedRun(trial_name(number, params), trial_spec(sweep.base, params), trial_preset(sweep, params),
                       group, SWEEP) for number, params in enumerate(points, start=1)]
