"""The one model loader: any importable file to a built network, and the starting model of a fine-tune.

`load_model_file` reads a bundle, a workbench checkpoint (any head, hidden layer included), a
torchvision-layout state_dict or a pytorch_resnet_cifar10 checkpoint; the network is the file's
own spec, the one given, or the first preset whose keys and shapes take the weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import head_prefix
from workbench.presets import Preset, get_preset
from workbench.spec import NETWORK_SPEC_TYPES, NetSpec, NetworkSpec, RunSpec
from workbench.training import ModelFactory, StartingModel, fresh_model
from workbench.weights.importers import IMPORT_FORMATS, ImportedWeights, adapt_head, backbone_fits, read_weights
from workbench.weights.transfer import (
    Mismatches,
    apply_finetune_mode,
    build_with_head,
    fill_batch_counters,
    infer_head_hidden,
    is_head_key,
    load_checked,
    replace_head,
    state_dict_mismatches,
)

logger = logging.getLogger(__name__)

_STAGE_KEY = re.compile(r"layer(\d+)\.(\d+)\.")


# ---------------------------------------------------------------- which network takes these weights


def stage_blocks(state_dict: dict[str, torch.Tensor]) -> list[int]:
    """Units per stage as the keys `layer<stage>.<unit>.` of a state_dict show them."""
    counts: dict[int, int] = {}
    for key in state_dict:
        match = _STAGE_KEY.match(key)
        if match:
            stage, unit = int(match[1]), int(match[2])
            counts[stage] = max(counts.get(stage, 0), unit + 1)
    return [counts[stage] for stage in sorted(counts)]


def _same_outline(spec: NetworkSpec, state_dict: dict[str, torch.Tensor], blocks: list[int]) -> bool:
    """A cheap first test (stem, units per stage, unit kind) before building the network."""
    if not isinstance(spec, NetSpec):
        return backbone_fits(state_dict, spec)
    stem = state_dict.get("conv1.weight")
    kernel = 7 if spec.family == "imagenet" else 3
    bottleneck = any(".conv3." in key for key in state_dict)
    return (
        stem is not None
        and tuple(stem.shape) == (spec.widths[0], spec.in_channels, kernel, kernel)
        and blocks == spec.blocks
        and bottleneck == (spec.unit == "bottleneck")
    )


def network_mismatches(state_dict: dict[str, torch.Tensor], spec: NetworkSpec) -> tuple[Mismatches, Mismatches]:
    """How the weights differ from `spec`'s network: (backbone mismatches, head `fc.*`/`classifier.*` mismatches)."""
    model = build_with_head(spec, infer_head_hidden(state_dict))
    found = state_dict_mismatches(fill_batch_counters(state_dict, model), model)

    def part(head: bool) -> Mismatches:
        return Mismatches(
            missing=[name for name in found.missing if is_head_key(name) == head],
            unexpected=[name for name in found.unexpected if is_head_key(name) == head],
            shapes=[entry for entry in found.shapes if is_head_key(entry[0]) == head],
        )

    return part(head=False), part(head=True)


def fitting_presets(state_dict: dict[str, torch.Tensor], presets: Sequence[Preset]) -> list[str]:
    """Names of the presets whose network takes these weights (the head aside), in preset order."""
    blocks = stage_blocks(state_dict)
    fits = []
    for preset in presets:
        if _same_outline(preset.spec, state_dict, blocks) and not network_mismatches(state_dict, preset.spec)[0]:
            fits.append(preset.name)
    return fits


def _network_of(imported: ImportedWeights, path: Path, net: NetworkSpec | str | None,
                presets: Sequence[Preset]) -> NetworkSpec:
    if isinstance(net, NETWORK_SPEC_TYPES):
        return net
    if isinstance(net, str):
        return get_preset(net).spec
    if imported.spec is not None:
        return imported.spec
    by_name = {preset.name: preset for preset in presets}
    fits = fitting_presets(imported.state_dict, presets)
    if fits:
        logger.info("%s does not name its network; %s takes its weights", path, fits[0])
        return by_name[fits[0]].spec
    raise WorkbenchError(
        f"{path} ({IMPORT_FORMATS[imported.format]}) does not say which network it holds and no preset takes "
        "its weights; give the network (a preset name or a spec)"
    )


# ---------------------------------------------------------------- loading


def load_model_file(
    path: str | Path, net: NetworkSpec | str | None = None, *, presets: Sequence[Preset] | None = None,
    new_head: bool = False,
) -> nn.Module:
    """The network stored in `path`, weights loaded and checked key by key, in eval mode.

    `net` (a network spec of any family or a preset name) overrides the file's own spec; without either, the first of
    `presets` (default: the built-in ones) that takes the weights is used. With `new_head`, a head
    that does not fit is replaced by a fresh one. `model.metadata` is what the file says (class names,
    normalization; `run_spec` for a workbench checkpoint); `model.source` where it came from
    (`format`, `path`, `head_replaced`, `dropped_keys`).
    """
    path = Path(path)
    imported = read_weights(path)
    if presets is None:
        from workbench.presets import list_presets

        presets = list_presets()
    spec = _network_of(imported, path, net, presets)
    model = build_with_head(spec, infer_head_hidden(imported.state_dict))
    state_dict, dropped = adapt_head(imported.state_dict, model) if new_head else (imported.state_dict, [])
    metadata = dict(imported.metadata)
    if dropped:
        replace_head(model, spec.num_classes)
        head = head_prefix(model)
        state_dict = {**state_dict, **{k: v for k, v in model.state_dict().items() if k.startswith(head)}}
        metadata.pop("class_names", None)
        metadata.pop("head_hidden", None)
    load_checked(model, state_dict, source=str(path))
    model.eval()
    model.source = {"format": imported.format, "path": str(path), "head_replaced": bool(dropped),
                    "dropped_keys": dropped}
    model.metadata = metadata
    return model


def import_weights(path: str | Path, spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """The weights in `path` as a state_dict for `spec`'s model, every key and shape checked."""
    return load_model_file(path, spec).state_dict()


def run_spec_of(model: nn.Module) -> RunSpec:
    """The run spec saved with a model loaded from a workbench checkpoint."""
    data = getattr(model, "metadata", {}).get("run_spec")
    if data is None:
        raise WorkbenchError("this model was not loaded from a workbench checkpoint, so it has no run spec")
    return RunSpec.model_validate(data)


# ---------------------------------------------------------------- the starting model of a run


def model_factory(run: RunSpec) -> ModelFactory:
    """How `fit` builds the starting network of `run`: fresh, or from its `init_from` file."""
    return FinetuneStart(run) if run.init_from is not None else fresh_model


class FinetuneStart:
    """The model factory of a fine-tune (see `workbench.training.ModelFactory`): the source's weights,
    the head adapted or replaced, and the parts that do not train frozen."""

    def __init__(self, run: RunSpec) -> None:
        if run.init_from is None:
            raise WorkbenchError("a fine-tune needs init_from: the model to start from")
        self.run = run

    def __call__(self, net: NetworkSpec, *, resuming: bool) -> StartingModel:
        run = self.run
        imported = read_weights(Path(run.init_from))
        mode = run.finetune or "all"
        new_head = mode == "head"
        model = build_with_head(net, None if new_head else infer_head_hidden(imported.state_dict))
        # When resuming, the run's own checkpoint supplies the weights: only the structure is rebuilt.
        if not resuming:
            state_dict, dropped = adapt_head(imported.state_dict, model)
            if dropped or new_head:
                head = head_prefix(model)
                state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
                state_dict.update({k: v for k, v in model.state_dict().items() if k.startswith(head)})
            load_checked(model, state_dict, source=run.init_from)
        model = apply_finetune_mode(model, mode, hidden=run.head_hidden, stages=run.finetune_stages,
                                    num_classes=net.num_classes)
        mean, std = imported.metadata.get("mean"), imported.metadata.get("std")
        return StartingModel(model, tuple(mean) if mean else None, tuple(std) if std else None)
