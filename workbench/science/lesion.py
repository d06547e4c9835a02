"""Lesion study (Veit et al. 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow Networks").

Deleting a unit keeps only its shortcut path. Precisely, a deleted unit computes

    out = after_add_ops(shortcut(x))

where `after_add_ops` are the ops the unit applies after its addition (ReLU for the original
post-activation unit, BN and ReLU for `bn_after_add`, nothing for pre-activation units) and
`shortcut` is what the unit adds its branch to:

- identity where the shape is kept (options A and B);
- option A's parameter-free subsample + zero-pad where the shape changes;
- the trained 1x1 projection (with its BN) for options B and C; with full pre-activation the
  projection sees the unit's BN-ReLU-activated input, exactly as in the intact unit.

This is Veit et al.'s "remove the residual module, keep the skip connection". For the original
unit the trailing ReLU is a no-op on the (already non-negative) identity path. For `bn_after_add`
the kept BN was trained on branch + shortcut, so it normalises a different distribution: that
fragility is part of what the study shows.

A plain net has no shortcut to keep: "deleting a layer" replaces the unit by the identity, and
a unit that changes the shape (stride 2, more channels) by option A's subsample + zero-pad, the
same parameter-free path a residual option-A net keeps, so the two nets lose the same thing.

Unit numbers in results are 1-based in forward order, as in the `unit_grad/<k>` metrics.

The study applies to the residual families built from residual units: ResNets (and their plain
twins), wide ResNets and ResNeXts. DenseNets, FractalNets and ResNet in ResNet are refused with
the reason (`check_lesionable`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.data import eval_batches
from workbench.errors import WorkbenchError
from workbench.models import PadShortcut, ResidualUnit, ResNet

logger = logging.getLogger(__name__)

DEFAULT_DRAWS = 3
DEFAULT_MAX_K = 10
LESION_KINDS = ("resnet", "wide_resnet", "resnext")
_NO_LESION_REASONS = {
    "densenet": "a DenseNet has no shortcut around its layers: each dense layer's output is concatenated to its "
                "input and read by every later layer, so a deleted layer leaves no path of its own to keep",
    "fractalnet": "a FractalNet has no residual units: its columns are joined by averaging, not added to a "
                  "shortcut (its own ablation is drop-path: evaluate single columns with eval_column)",
    "rir": "the transient stream of a ResNet in ResNet block has no shortcut, so a deleted block would leave that "
           "stream without any path",
}


def check_lesionable(net: Any) -> None:
    """Raise WorkbenchError with the reason when the lesion study has no meaning for this network (or spec)."""
    spec = getattr(net, "spec", net)
    kind = getattr(spec, "kind", "resnet")
    if kind in LESION_KINDS and (not isinstance(net, nn.Module) or isinstance(net, ResNet)):
        return
    reason = _NO_LESION_REASONS.get(kind, f"{kind} networks are not built from residual units")
    raise WorkbenchError(
        f"the lesion study (Veit et al. 2016) deletes residual units and keeps their shortcuts; {reason}. "
        f"It applies to {', '.join(LESION_KINDS)} networks."
    )


def _unit_stride(unit: ResidualUnit) -> int:
    stride = 1
    for index in range(1, unit.convs + 1):
        stride *= getattr(unit, f"conv{index}").stride[0]
    return stride


def _unit_channels(unit: ResidualUnit) -> tuple[int, int]:
    return unit.conv1.in_channels, getattr(unit, f"conv{unit.convs}").out_channels


def kept_path(unit: ResidualUnit) -> str:
    """What a deleted unit keeps: 'identity', 'pad' (subsample + zero-pad) or 'projection'."""
    if unit.downsample is None:
        in_planes, out_planes = _unit_channels(unit)
        return "identity" if in_planes == out_planes and _unit_stride(unit) == 1 else "pad"
    return "pad" if isinstance(unit.downsample, PadShortcut) else "projection"


class ShortcutOnly(nn.Module):
    """A unit with its residual branch removed: `after_add_ops(shortcut(x))` (see the module docstring)."""

    def __init__(self, unit: ResidualUnit) -> None:
        super().__init__()
        self.unit = unit
        self.kept = kept_path(unit)
        self.pad: PadShortcut | None = None
        if self.kept == "pad" and unit.downsample is None:
            in_planes, out_planes = _unit_channels(unit)
            if out_planes < in_planes:
                raise WorkbenchError(
                    f"cannot delete a plain unit that shrinks channels ({in_planes} -> {out_planes}): "
                    "there is no parameter-free path to keep"
                )
            self.pad = PadShortcut(in_planes, out_planes, _unit_stride(unit))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = self.unit
        if self.pad is not None:
            out = self.pad(x)
        elif unit.downsample is None:
            out = x
        elif isinstance(unit.downsample, PadShortcut) or unit.placement != "full_preact":
            out = unit.downsample(x)
        else:
            _, shortcut_input = unit._branch(x)
            out = unit.downsample(shortcut_input)
        for name in unit.ops_after_add:
            out = F.relu(out) if name == "relu" else getattr(unit, name)(out)
        return out


def _unit_slots(model: ResNet) -> list[tuple[nn.Sequential, int]]:
    return [(stage, position) for stage in model.stages for position in range(len(stage))]


@contextlib.contextmanager
def deleted_units(model: ResNet, indices: Sequence[int]) -> Iterator[ResNet]:
    """Within the block, `model` runs with the units at these 0-based indices deleted; restored on exit."""
    slots = _unit_slots(model)
    units = model.units()
    chosen = sorted(set(indices))
    if any(not 0 <= i < len(units) for i in chosen):
        raise WorkbenchError(f"unit indices must be in 0..{len(units) - 1}; got {list(indices)}")
    replacements = {i: ShortcutOnly(units[i]) for i in chosen}
    try:
        for index, wrapper in replacements.items():
            stage, position = slots[index]
            stage[position] = wrapper
        yield model
    finally:
        for index in replacements:
            stage, position = slots[index]
            stage[position] = units[index]


def unit_inputs(model: ResNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(the input of every unit, the logits) from one forward pass of the intact model."""
    captured: list[torch.Tensor] = []
    handles = [unit.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) for unit in model.units()]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured, logits


def _head(model: ResNet, features: torch.Tensor) -> torch.Tensor:
    """What ResNet.forward_features does after the last unit, then the classifier."""
    if model.final_bn is not None:
        features = model.final_bn(features)
    if model.final_relu:
        features = model.relu(features)
    return model.fc(torch.flatten(model.avgpool(features), 1))


def forward_from_unit(
    model: ResNet, hidden: torch.Tensor, start: int, deleted: frozenset[int] = frozenset(),
    shortcuts: dict[int, ShortcutOnly] | None = None,
) -> torch.Tensor:
    """Logits when `hidden` is the input of unit `start` (0-based) and the units in `deleted` are removed."""
    units = model.units()
    shortcuts = shortcuts or {}
    for index in range(start, len(units)):
        if index in deleted:
            hidden = (shortcuts.get(index) or ShortcutOnly(units[index]))(hidden)
        else:
            hidden = units[index](hidden)
    return _head(model, hidden)


def lesion_errors(
    model: ResNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    deletions: Sequence[frozenset[int]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    batch_size: int = 250,
    on_progress: Callable[[float], None] | None = None,
) -> list[float]:
    """Test error (%) of the model with each set of (0-based) units deleted; an empty set is the intact net.

    Each batch runs the intact net once, keeping every unit's input, and each lesioned net
    continues from the input of its first deleted unit, since everything before it is unchanged.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    shortcuts = {index: ShortcutOnly(unit) for index, unit in enumerate(model.units())
                 if any(index in deleted for deleted in deletions)}
    wrong = torch.zeros(len(deletions), dtype=torch.long, device=device)
    done = 0
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                             enabled=autocast_dtype is not None):
            for batch, target in eval_batches(images, labels, batch_size, mean=mean, std=std, device=device,
                                              channels_last=channels_last):
                inputs, intact_logits = unit_inputs(model, batch)
                for position, deleted in enumerate(deletions):
                    if deleted:
                        start = min(deleted)
                        logits = forward_from_unit(model, inputs[start], start, deleted, shortcuts)
                    else:
                        logits = intact_logits
                    wrong[position] += (logits.float().argmax(1) != target).sum()
                done += len(target)
                if on_progress is not None:
                    on_progress(done / len(labels))
    finally:
        model.train(was_training)
    return [100.0 * count / len(labels) for count in wrong.tolist()]


def unit_labels(model: ResNet) -> list[dict[str, Any]]:
    """Per unit (forward order): its 1-based number, stage, block within the stage and the path kept when deleted."""
    labels = []
    number = 0
    for stage_index, stage in enumerate(model.stages, start=1):
        for block_index, unit in enumerate(stage, start=1):
            number += 1
            labels.append({"unit": number, "stage": stage_index, "block": block_index, "kept": kept_path(unit)})
    return labels


def random_deletions(units: int, max_k: int, draws: int, seed: int) -> list[tuple[int, frozenset[int]]]:
    """(k, set of 0-based units) for k = 1..max_k, `draws` distinct-as-possible random sets each, seeded."""
    rng = random.Random(seed)
    chosen = []
    for k in range(1, max_k + 1):
        possible = math.comb(units, k)
        seen: set[frozenset[int]] = set()
        for _ in range(draws):
            deleted = frozenset(rng.sample(range(units), k))
            for _retry in range(20):
                if deleted not in seen or len(seen) >= possible:
                    break
                deleted = frozenset(rng.sample(range(units), k))
            seen.add(deleted)
            chosen.append((k, deleted))
    return chosen


def lesion_study(
    model: ResNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    draws: int = DEFAULT_DRAWS,
    max_k: int | None = DEFAULT_MAX_K,
    seed: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    batch_size: int = 250,
    on_progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Error of the intact net, with each unit deleted alone, and with k random units deleted (k = 1..max_k)."""
    check_lesionable(model)
    if draws < 1:
        raise WorkbenchError(f"draws must be at least 1; got {draws}")
    units = len(model.units())
    max_k = units if max_k is None else max_k
    if max_k < 1:
        raise WorkbenchError(f"max_k must be at least 1; got {max_k}")
    max_k = min(max_k, units)
    labelled = unit_labels(model)
    random_sets = random_deletions(units, max_k, draws, seed)
    deletions = [frozenset()] + [frozenset({i}) for i in range(units)] + [deleted for _, deleted in random_sets]
    logger.info("lesion study of %s: %d units, %d lesioned nets on %d images", model.spec.name, units,
                len(deletions) - 1, len(labels))
    errors = lesion_errors(model, images, labels, deletions, mean=mean, std=std, device=device,
                           autocast_dtype=autocast_dtype, channels_last=channels_last, batch_size=batch_size,
                           on_progress=on_progress)
    single = [{**labelled[i], "error": errors[1 + i]} for i in range(units)]
    by_k: dict[int, dict[str, Any]] = {}
    for (k, deleted), error in zip(random_sets, errors[1 + units:], strict=True):
        entry = by_k.setdefault(k, {"k": k, "deleted": [], "errors": []})
        entry["deleted"].append(sorted(i + 1 for i in deleted))
        entry["errors"].append(error)
    for entry in by_k.values():
        values = entry["errors"]
        entry["mean"] = sum(values) / len(values)
        entry["std"] = math.sqrt(sum((v - entry["mean"]) ** 2 for v in values) / len(values))
    return {
        "net": model.spec.name,
        "residual": model.layout.shortcut != "none",
        "placement": model.layout.placement,
        "units": units,
        "images": len(labels),
        "baseline_error": errors[0],
        "single": single,
        "random": [by_k[k] for k in sorted(by_k)],
    }


def limit_test_split(
    images: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `limit` test images, a seeded random choice kept in the original order."""
    if limit is None or limit >= len(labels):
        return images, labels
    if limit < 1:
        raise WorkbenchError(f"limit_images must be at least 1; got {limit}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(labels), generator=generator)[:limit].sort().values
    return images[index], labels[index]
