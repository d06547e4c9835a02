"""Turn what a user asked for into queued runs: one run, a plain + residual twin, or a depth ladder.

A twin is the same network with and without shortcuts, trained on identical data in identical
order (same data spec, same seed). A ladder is several depths, each with its twin, in one group.
The form helpers parse the text fields of the UI into specs with readable errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench.data import check_source
from workbench.errors import SpecError
from workbench.presets import Preset
from workbench.science.variants import SWEEP, stochastic_depth_pair
from workbench.spec import PLACEMENTS, DataSpec, NetSpec, RunSpec, TrainSpec, parse_spec

logger = logging.getLogger(__name__)

DEFAULT_LADDER_DEPTHS = (20, 32, 44, 56)
DEFAULT_DROP_PROB = 0.5


@dataclass(frozen=True)
class PlannedRun:
    """One run to queue: its display name, full spec, preset (when it matches one) and group."""

    name: str
    spec: RunSpec
    preset: str | None
    group_name: str | None = None
    group_kind: str | None = None


# -- parsing form fields ------------------------------------------------------------------------


def parse_int_list(text: str, what: str) -> list[int]:
    """"3, 3, 3" (or "3 3 3", "[3,3,3]") as [3, 3, 3]; SpecError naming `what` otherwise."""
    cleaned = str(text).strip().strip("[]()")
    parts = [part for part in cleaned.replace(",", " ").split() if part]
    if not parts:
        raise SpecError(f"{what}: give whole numbers separated by commas, for example 3, 3, 3")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise SpecError(f"{what}: {text!r} is not a list of whole numbers; write for example 3, 3, 3") from None


def parse_classes(text: str | None) -> int | list[str] | None:
    """Class selection from a text field: empty for all, a number for the first k, or names separated by commas."""
    cleaned = (text or "").strip()
    if not cleaned:
        return None
    if cleaned.isdigit():
        return int(cleaned)
    names = [name.strip() for name in cleaned.split(",") if name.strip()]
    return names or None


def _whole(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    number = float(value)
    if number != int(number):
        raise SpecError(f"{what} must be a whole number; got {value}")
    return int(number)


def net_spec_from_fields(
    *,
    name: str,
    family: str,
    unit: str,
    size_by: str,
    depth: Any,
    blocks: str,
    widths: str,
    bottleneck_stride: str,
    placement: str,
    shortcut: str,
    zero_init_residual: bool,
    stochastic_depth: Any,
    num_classes: Any,
    input_size: Any,
    in_channels: Any,
) -> NetSpec:
    """The NetSpec a Build form describes; `size_by` ("depth" or "blocks") says which of the two counts."""
    data: dict[str, Any] = {
        "name": (name or "").strip() or "custom",
        "family": family,
        "unit": unit,
        "widths": parse_int_list(widths, "widths"),
        "bottleneck_stride": bottleneck_stride,
        "placement": placement,
        "shortcut": shortcut,
        "zero_init_residual": bool(zero_init_residual),
        "stochastic_depth": float(stochastic_depth or 0.0),
        "num_classes": _whole(num_classes, "classes"),
        "input_size": _whole(input_size, "input size"),
        "in_channels": _whole(in_channels, "input channels"),
    }
    if size_by == "depth":
        data["depth"] = _whole(depth, "depth")
        if data["depth"] is None:
            raise SpecError("depth: give the number of weighted layers, for example 20 or 56")
    else:
        data["blocks"] = parse_int_list(blocks, "blocks per stage")
    return parse_spec(NetSpec, {key: value for key, value in data.items() if value is not None})


def data_spec_from_fields(
    *,
    name: str,
    path: str | None = None,
    download: bool = False,
    classes: str | None = None,
    per_class_cap: Any = None,
    resolution: Any = None,
    validation_size: Any = 0,
    synthetic_train: Any = None,
    synthetic_test: Any = None,
    seed: Any = 0,
) -> DataSpec:
    """The DataSpec of a Launch form; fields that do not apply to the chosen dataset are ignored."""
    data: dict[str, Any] = {
        "name": name,
        "classes": parse_classes(classes),
        "per_class_cap": _whole(per_class_cap, "per-class cap") or None,
        "validation_size": _whole(validation_size, "validation size") or 0,
        "seed": _whole(seed, "seed") or 0,
    }
    if name == "synthetic":
        data["synthetic_train"] = _whole(synthetic_train, "synthetic training images")
        data["synthetic_test"] = _whole(synthetic_test, "synthetic test images")
    else:
        data["path"] = (path or "").strip() or None
    if name in ("cifar10", "cifar100"):
        data["download"] = bool(download)
    if name == "folder":
        data["resolution"] = _whole(resolution, "resolution") or None
    return parse_spec(DataSpec, {key: value for key, value in data.items() if value is not None})


def train_spec_from_fields(
    *,
    budget_unit: str,
    budget: Any,
    batch_size: Any,
    lr: Any,
    schedule: str,
    warmup_iterations: Any = 0,
    seed: Any = 0,
    precision: str = "auto",
    device: str = "auto",
    log_every: Any = None,
    eval_every: Any = None,
) -> TrainSpec:
    """The TrainSpec of a Launch form; the budget is in "epochs" or "iterations"."""
    if budget is None or budget == "":
        raise SpecError(f"budget: give the number of {budget_unit}")
    data: dict[str, Any] = {
        "batch_size": _whole(batch_size, "batch size"),
        "lr": float(lr) if lr not in (None, "") else None,
        "schedule": schedule,
        "warmup_iterations": _whole(warmup_iterations, "warm-up iterations") or 0,
        "seed": _whole(seed, "seed") or 0,
        "precision": precision,
        "device": device,
        "log_every": _whole(log_every, "log every") or None,
        "eval_every": _whole(eval_every, "evaluate every") or None,
    }
    if budget_unit == "iterations":
        data["iterations"] = _whole(budget, "iterations")
    else:
        data["epochs"] = float(budget)
    return parse_spec(TrainSpec, {key: value for key, value in data.items() if value is not None})


FORM_FIELDS = (
    "dataset", "path", "download", "classes", "per_class_cap", "resolution", "validation_size", "synthetic_train",
    "synthetic_test", "budget_unit", "budget", "batch_size", "lr", "schedule", "warmup", "seed", "precision",
    "device", "log_every", "eval_every",
)


def specs_from_form(
    *,
    dataset: str,
    path: str | None,
    download: bool,
    classes: str | None,
    per_class_cap: Any,
    resolution: Any,
    validation_size: Any,
    synthetic_train: Any,
    synthetic_test: Any,
    budget_unit: str,
    budget: Any,
    batch_size: Any,
    lr: Any,
    schedule: str,
    warmup: Any,
    seed: Any,
    precision: str,
    device: str,
    log_every: Any,
    eval_every: Any,
) -> tuple[DataSpec, TrainSpec]:
    """The DataSpec and TrainSpec of a launch form (fields as in FORM_FIELDS); one seed drives both."""
    data = data_spec_from_fields(
        name=dataset, path=path, download=download, classes=classes, per_class_cap=per_class_cap,
        resolution=resolution, validation_size=validation_size, synthetic_train=synthetic_train,
        synthetic_test=synthetic_test, seed=seed,
    )
    train = train_spec_from_fields(
        budget_unit=budget_unit, budget=budget, batch_size=batch_size, lr=lr, schedule=schedule,
        warmup_iterations=warmup, seed=seed, precision=precision, device=device, log_every=log_every,
        eval_every=eval_every,
    )
    return data, train


def check_data_source(data: DataSpec, home: Path, data_roots: Sequence[Path]) -> None:
    """Fail early, with the loader's own message, when a dataset path is outside the data roots or missing."""
    check_source(data, home, list(data_roots))


def checked_specs_from_form(
    form: Mapping[str, Any], home: Path, data_roots: Sequence[Path]
) -> tuple[DataSpec, TrainSpec]:
    """`specs_from_form` on the FORM_FIELDS of `form` (other keys are ignored), then the data source checked."""
    data, train = specs_from_form(**{name: form[name] for name in FORM_FIELDS})
    check_data_source(data, home, data_roots)
    return data, train


# -- twins and ladders ---------------------------------------------------------------------------


def same_network(first: NetSpec, second: NetSpec) -> bool:
    """Whether two specs build the same network (names aside)."""
    return first.model_dump(exclude={"name"}) == second.model_dump(exclude={"name"})


def matching_preset(net: NetSpec, presets: Iterable[Preset]) -> Preset | None:
    """The preset that builds exactly this network, if any."""
    return next((preset for preset in presets if same_network(preset.spec, net)), None)


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
    stem = net.name.rstrip("0123456789-") or net.name
    return _renamed(net, f"{stem}{depth}", presets, depth=depth)


def unique_group_name(base: str, existing: Iterable[str]) -> str:
    """`base`, or `base (2)`, `base (3)`... whichever is not taken yet."""
    taken = set(existing)
    if base not in taken:
        return base
    number = 2
    while f"{base} ({number})" in taken:
        number += 1
    return f"{base} ({number})"


def _preset_name(net: NetSpec, presets: Sequence[Preset]) -> str | None:
    preset = matching_preset(net, presets)
    return preset.name if preset else None


def plan_single(net: NetSpec, data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = ()) -> list[PlannedRun]:
    """One run of `net`."""
    return [PlannedRun(net.name, RunSpec(net=net, data=data, train=train), _preset_name(net, presets))]


def _planned_group(
    nets: Iterable[NetSpec], data: DataSpec, train: TrainSpec, presets: Sequence[Preset], group: str, kind: str
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
    return _twin_runs(net, data, train, presets, group, "twin")


def plan_ladder(
    net: NetSpec, depths: Sequence[int], data: DataSpec, train: TrainSpec, presets: Sequence[Preset] = (), *,
    group: str,
) -> list[PlannedRun]:
    """A plain + residual twin at each depth, all in one "ladder" group (shallowest first)."""
    if len(set(depths)) < 2:
        raise SpecError("a depth ladder needs at least two different depths, for example 20, 32, 44, 56")
    plan: list[PlannedRun] = []
    for depth in sorted(set(depths)):
        try:
            deeper = at_depth(net, depth, presets)
        except SpecError as exc:
            raise SpecError(f"ladder depth {depth}: {exc}") from None
        plan += _twin_runs(deeper, data, train, presets, group, "ladder")
    return plan


def placement_variants(net: NetSpec, presets: Sequence[Preset] = ()) -> list[NetSpec]:
    """`net` with each unit placement of He et al. 2016 (Fig. 4 (a)-(e)), everything else unchanged."""
    if is_plain(net):
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


def default_group_name(kind: str, net: NetSpec, data: DataSpec, now: datetime | None = None) -> str:
    """A readable group name such as "twin resnet20 on synthetic, 2024-05-01 14:03"."""
    moment = (now or datetime.now()).strftime("%Y-%m-%d %H:%M")
    return f"{kind} {net.name} on {data.name}, {moment}"


def submit_plan(executor: Any, plan: Sequence[PlannedRun]) -> list[int]:
    """Queue every planned run with `executor`; returns their ids in plan order."""
    ids = [
        executor.submit(run.spec, name=run.name, preset=run.preset, group_name=run.group_name,
                        group_kind=run.group_kind)
        for run in plan
    ]
    logger.info("queued runs %s (%s)", ids, plan[0].group_name if plan else "no group")
    return ids
