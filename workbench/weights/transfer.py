"""Moving weights into networks: checked loading, classifier heads, freezing for fine-tuning.

`load_checked` compares a state_dict with a model key by key and shape by shape and names
every mismatch. A head with one hidden layer turns `fc` into `Sequential(Linear, ReLU, Linear)`, so its
state_dict keys become `fc.0.*` and `fc.2.*` (DenseNets name their head `classifier`, as torchvision
does: `classifier.0.*`, `classifier.2.*`). The network spec does not describe that head: loaders
read the hidden width from the weights (`infer_head_hidden`) and `build_with_head` rebuilds it;
bundles also record it as `head_hidden` in their metadata.

Frozen parts keep their BatchNorm layers in eval mode through a forward pre-hook, so a
trainer that calls `model.train()` every epoch still leaves their running statistics alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import Network, build_network, head_of, head_prefix, set_head
from workbench.spec import NetworkSpec

log = logging.getLogger(__name__)

FINETUNE_MODES: dict[str, str] = {
    "all": "train every layer, starting from the imported weights",
    "last_stages": "freeze the stem and the early stages; train the last stage(s) and the head",
    "head": "freeze the whole network and train a new head (optionally with one hidden layer)",
}
_FROZEN_BN_HOOK = "_workbench_frozen_bn_hook"
_LISTED_NAMES = 12
#: State_dict prefixes of classifier heads: `fc` (ResNets and most families), `classifier` (DenseNets).
HEAD_PREFIXES = ("fc.", "classifier.")


@dataclass
class Mismatches:
    """How a state_dict differs from a model's: key names and (name, file shape, model shape)."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def names(self) -> list[str]:
        return self.missing + self.unexpected + [name for name, _, _ in self.shapes]

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_listed(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_listed(self.unexpected)}")
        if self.shapes:
            shapes = [f"{name} {file} in the file vs {model} in the model" for name, file, model in self.shapes]
            parts.append(f"{len(shapes)} with another shape: {_listed(shapes)}")
        return "; ".join(parts)


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that puts layer1.2 before layer1.10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_NAMES])
    return shown + (f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else "")


def fill_batch_counters(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add the BatchNorm `num_batches_tracked` counters that older files lack, taken from `model`."""
    filled = dict(state_dict)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = value.clone()
    return filled


def state_dict_mismatches(state_dict: dict[str, torch.Tensor], model: nn.Module) -> Mismatches:
    """Every way `state_dict` fails to fit `model`: missing keys, unexpected keys, shape differences."""
    expected = model.state_dict()
    return Mismatches(
        missing=[k for k in expected if k not in state_dict],
        unexpected=sorted((k for k in state_dict if k not in expected), key=_natural_key),
        shapes=[
            (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
            for k in expected
            if k in state_dict and state_dict[k].shape != expected[k].shape
        ],
    )


def _describe(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    return f"{spec.name} ({spec.outline()}, {spec.num_classes} classes)"


def is_head_key(key: str) -> bool:
    """Whether a state_dict key belongs to a classifier head (`fc.*` or `classifier.*`)."""
    return key.startswith(HEAD_PREFIXES)


def load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state_dict` into `model` strictly after checking every key and shape.

    Missing BatchNorm batch counters are filled in; any other mismatch raises WorkbenchError
    naming each key (missing, unexpected, or shape in the file vs in the model).
    """
    state_dict = fill_batch_counters(state_dict, model)
    mismatches = state_dict_mismatches(state_dict, model)
    if mismatches:
        if all(name.startswith(head_prefix(model)) for name in mismatches.names()):
            advice = "only the head differs: replace the head or set num_classes to the file's"
        else:
            advice = "choose the network spec these weights were trained with"
        raise WorkbenchError(f"weights from {source} do not fit {_describe(model)}: {mismatches.describe()}. {advice}")
    model.load_state_dict(state_dict, strict=True)
    return model


def make_head(in_features: int, num_classes: int, hidden: int | None = None) -> nn.Module:
    """A fresh classifier: `Linear`, or `Linear-ReLU-Linear` with `hidden` units."""
    if hidden is None:
        return nn.Linear(in_features, num_classes)
    if hidden < 1:
        raise WorkbenchError(f"the head's hidden layer needs at least one unit; got {hidden}")
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


def head_in_features(model: Network) -> int:
    """Width of the pooled feature vector the head reads."""
    head = head_of(model)
    first = head[0] if isinstance(head, nn.Sequential) else head
    return first.in_features


def head_hidden(model: Network) -> int | None:
    """Hidden width of the model's head, or None for a single linear layer."""
    head = head_of(model)
    return head[0].out_features if isinstance(head, nn.Sequential) else None


def infer_head_hidden(state_dict: dict) -> int | None:
    """Hidden width of the head stored in a state_dict (keys `fc.0.*` or `classifier.0.*`), or None."""
    for prefix in HEAD_PREFIXES:
        weight = state_dict.get(f"{prefix}0.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def replace_head(model: Network, num_classes: int | None = None, hidden: int | None = None) -> Network:
    """Give `model` a freshly initialised head; `model.spec.num_classes` follows the new head."""
    num_classes = num_classes or model.spec.num_classes
    set_head(model, make_head(head_in_features(model), num_classes, hidden).to(next(model.parameters()).device))
    model.spec = model.spec.model_copy(update={"num_classes": num_classes})
    return model


def build_with_head(spec: NetworkSpec, hidden: int | None = None) -> Network:
    """Build the network for `spec` (any family), with a hidden-layer head when `hidden` is given."""
    model = build_network(spec)
    return replace_head(model, spec.num_classes, hidden) if hidden is not None else model


def _keep_batchnorm_in_eval(module: nn.Module, _inputs: tuple) -> None:
    module.training = False


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not hasattr(sub, _FROZEN_BN_HOOK):
            setattr(sub, _FROZEN_BN_HOOK, sub.register_forward_pre_hook(_keep_batchnorm_in_eval))
            sub.eval()


def _unfreeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    for sub in module.modules():
        handle = sub.__dict__.pop(_FROZEN_BN_HOOK, None)
        if handle is not None:
            handle.remove()


def apply_finetune_mode(
    model: Network,
    mode: str,
    *,
    hidden: int | None = None,
    stages: int = 1,
    num_classes: int | None = None,
) -> Network:
    """Set which parameters train for a fine-tuning mode (see FINETUNE_MODES); returns `model`.

    'head' always installs a new head (`num_classes` outputs, default the spec's; one hidden
    layer of `hidden` units if given). 'last_stages' trains the last `stages` stages and the head.
    Frozen parameters get `requires_grad=False`; frozen BatchNorm layers stay in eval mode.
    """
    if mode not in FINETUNE_MODES:
        raise WorkbenchError(f"unknown fine-tuning mode {mode!r}; choose one of {', '.join(FINETUNE_MODES)}")
    if hidden is not None and mode != "head":
        raise WorkbenchError(f"a hidden head layer belongs to mode 'head', not {mode!r}")
    _unfreeze(model)
    if mode == "all":
        return model
    if mode == "head":
        _freeze(model)
        replace_head(model, num_classes, hidden)
        log.info("fine-tuning: froze the network, new head %s", head_of(model))
        return model
    all_stages = model.stages
    if not 1 <= stages <= len(all_stages):
        raise WorkbenchError(f"stages must be between 1 and {len(all_stages)} for this network; got {stages}")
    trainable = [*all_stages[-stages:], *model.after_stages(), head_of(model)]
    _freeze_all_but(model, trainable)
    return model


def _freeze_all_but(model: nn.Module, trainable: list[nn.Module]) -> None:
    """Freeze every module of `model` outside the `trainable` subtrees (they may sit deep inside a container)."""
    keep = {id(sub) for module in trainable for sub in module.modules()}
    inside_kept = {id(p) for module in trainable for p in module.parameters()}

    def visit(name: str, module: nn.Module) -> None:
        if id(module) in keep:
            return
        if all(id(sub) not in keep for sub in module.modules()):
            _freeze(module)
            log.debug("fine-tuning: froze %s", name or type(module).__name__)
            return
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in inside_kept:
                parameter.requires_grad_(False)
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should update (those with requires_grad)."""
    return [p for p in model.parameters() if p.requires_grad]
