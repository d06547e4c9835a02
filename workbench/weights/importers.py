"""Importing weights safely: bundles, torchvision state_dicts, CIFAR reference checkpoints, workbench checkpoints.

Nothing here unpickles arbitrary objects: torch files go through `torch.load(weights_only=True)`
and a file that asks for anything beyond tensors and plain values is refused with
UnsafeFileError before any of its code runs. Keys are normalised to the workbench layout
(`module.` and `_orig_mod.` prefixes dropped; the reference CIFAR code's head `linear` becomes
`fc`) and checked against the spec's model, with every mismatch named.
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from torch import nn

from workbench.errors import UnsafeFileError, WorkbenchError
from workbench.models import head_prefix, state_dict_layout
from workbench.spec import NetworkSpec, parse_net
from workbench.training.checkpoint import CHECKPOINT_FORMAT
from workbench.weights.bundle import is_bundle, read_bundle
from workbench.weights.limits import check_file_size, check_zip
from workbench.weights.transfer import is_head_key

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_STEM_SHAPE = (64, 3, 7, 7)
#: Where torchvision's ImageNet nets keep their 7x7 stem: ResNets, wide ResNets, ResNeXts; DenseNets.
IMAGENET_STEM_KEYS = ("conv1.weight", "features.conv0.weight")
IMPORT_FORMATS: dict[str, str] = {
    "bundle": "workbench bundle (.zip with weights.safetensors and spec.json)",
    "workbench-checkpoint": "workbench training checkpoint (best.pt or last.pt of a run)",
    "cifar-reference": "CIFAR checkpoint of the pytorch_resnet_cifar10 reproduction (state_dict + best_prec1)",
    "state-dict": "bare PyTorch state_dict (.pth), for example saved from torchvision.models.resnetXX",
    "safetensors": "bare state_dict in a .safetensors file",
}
BARE_FORMATS = ("state-dict", "safetensors")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_TENSOR_PICKLE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


@dataclass
class ImportedWeights:
    """Weights read from a file, keys in the workbench layout, with what the file says about them."""

    format: str
    state_dict: dict[str, torch.Tensor]
    spec: NetworkSpec | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading files


def pickle_globals(path: Path) -> list[str] | None:
    """Names of the callables and classes a pickle file would import, read without unpickling it.

    None when the file is not a pickle. Uses `pickletools.genops`, which only decodes opcodes.
    """
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, argument, _position in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
    except (ValueError, EOFError, UnicodeDecodeError, struct.error):
        return None
    return names


def safe_torch_load(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain values; a pickle needing code raises UnsafeFileError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        named = sorted(set(pickle_globals(path) or []))
        asked = [name for name in named if not name.startswith(_TENSOR_PICKLE_GLOBALS)] or named
        detail = f" (it asks for {', '.join(asked)})" if asked else f" ({blocked[0]})" if blocked else ""
        raise UnsafeFileError(
            f"{path} was refused: it is a pickle that only loads by running code or building objects named "
            f"in the file{detail}. Arbitrary pickles are never loaded; save the weights as a plain state_dict "
            "(torch.save(model.state_dict(), path)), a safetensors file or a workbench bundle."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise WorkbenchError(f"{path} is not a readable PyTorch weights file: {str(exc).splitlines()[0]}") from None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return []


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return 8 + header_length <= size and head[8:9] == b"{"


def _normalise_keys(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes, rename the reference CIFAR head `linear` to `fc`, refuse non-tensors."""
    normalised: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise WorkbenchError(f"entry {key!r} is a {type(value).__name__}, not a tensor; this is not a state_dict")
        name = key
        while name.startswith(_KEY_PREFIXES):
            name = name.split(".", 1)[1]
        normalised[name] = value
    if not any(k.startswith("fc.") for k in normalised) and any(k.startswith("linear.") for k in normalised):
        normalised = {("fc." + k[len("linear.") :] if k.startswith("linear.") else k): v for k, v in normalised.items()}
    return normalised


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _from_torch_object(obj: Any, path: Path) -> ImportedWeights:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        run_spec = obj.get("run_spec") or {}
        if "model" not in obj or "net" not in run_spec:
            raise WorkbenchError(f"{path} is a workbench checkpoint without model weights or a network spec")
        return ImportedWeights(
            "workbench-checkpoint",
            _normalise_keys(obj["model"]),
            parse_net(run_spec["net"]),
            _checkpoint_metadata(obj),
        )
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        keys = obj["state_dict"].keys()
        is_reference = "best_prec1" in obj or any(k.removeprefix("module.").startswith("linear.") for k in keys)
        metadata: dict[str, Any] = {}
        if is_reference:
            metadata = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": "pytorch_resnet_cifar10"}
            if "best_prec1" in obj:
                metadata["best_metrics"] = {"test_accuracy": float(obj["best_prec1"])}
        return ImportedWeights(
            "cifar-reference" if is_reference else "state-dict", _normalise_keys(obj["state_dict"]), None, metadata
        )
    if _is_state_dict(obj):
        return ImportedWeights("state-dict", _normalise_keys(obj))
    raise WorkbenchError(
        f"{path} holds a {type(obj).__name__} that is neither a state_dict nor a known checkpoint layout; "
        f"importable: {'; '.join(IMPORT_FORMATS.values())}"
    )


def _checkpoint_metadata(state: dict) -> dict[str, Any]:
    run_spec = state.get("run_spec") or {}
    metadata = dict(state.get("metadata") or {})
    if run_spec.get("data"):
        metadata.setdefault("dataset", run_spec["data"].get("name"))
    if run_spec.get("train"):
        metadata.setdefault("train", run_spec["train"])
    metadata["run_spec"] = run_spec
    return metadata


def read_weights(path: Path) -> ImportedWeights:
    """Read any importable file (see IMPORT_FORMATS) into workbench-layout weights, safely.

    A bare state_dict with torchvision's ImageNet stem is given ImageNet's mean and std (marked
    `normalization_assumed`): torchvision's pretrained weights expect them and record none.
    """
    imported = _read_weights(Path(path))
    if imported.format in BARE_FORMATS and "mean" not in imported.metadata:
        stem = next((imported.state_dict[k] for k in IMAGENET_STEM_KEYS if k in imported.state_dict), None)
        if stem is not None and tuple(stem.shape[1:]) == IMAGENET_STEM_SHAPE[1:]:
            imported.metadata.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), normalization_assumed=True)
    return imported


def _read_weights(path: Path) -> ImportedWeights:
    if not path.is_file():
        raise WorkbenchError(f"{path} does not exist")
    check_file_size(path)
    names = _zip_names(path)
    if names:
        if is_bundle(path):
            weights, spec, metadata = read_bundle(path)
            return ImportedWeights("bundle", weights, spec, metadata)
        if any(n.endswith("/models/model.json") or n.endswith("/archive_format") for n in names):
            raise WorkbenchError(
                f"{path} is a torch.export program (.pt2); programs cannot be re-imported as weights. "
                "Import the bundle or checkpoint it was exported from."
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise WorkbenchError(f"{path} is a zip but neither a workbench bundle nor a PyTorch file")
        check_zip(path)
        return _from_torch_object(safe_torch_load(path), path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if _looks_like_safetensors(head, path.stat().st_size):
        try:
            return ImportedWeights("safetensors", _normalise_keys(safetensors_load_file(path)))
        except (SafetensorError, OSError) as exc:
            raise WorkbenchError(f"{path} is a damaged safetensors file: {exc}") from None
    if pickle_globals(path) is not None:
        return _from_torch_object(safe_torch_load(path), path)
    if path.suffix.lower() == ".onnx":
        raise WorkbenchError(f"{path} is an ONNX file; ONNX models cannot be imported. Import a bundle or state_dict.")
    raise WorkbenchError(f"{path} is not an importable file; importable: {'; '.join(IMPORT_FORMATS.values())}")


def detect_format(path: Path) -> str:
    """Which of IMPORT_FORMATS `path` is; WorkbenchError (UnsafeFileError for code-running pickles) otherwise."""
    return read_weights(path).format


# ---------------------------------------------------------------- checking against a model


def adapt_head(state_dict: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop the file's head (`fc.*`, `classifier.*`) when it does not fit `model`'s; returns (weights, dropped keys)."""
    prefix = head_prefix(model)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    head = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    fits = head.keys() == expected.keys() and all(head[k].shape == expected[k].shape for k in head)
    if fits:
        return dict(state_dict), []
    dropped = sorted(head)
    log.info("replacing the head: dropped %s from the imported weights", ", ".join(dropped) or "nothing")
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}, dropped


def backbone_fits(state_dict: dict[str, torch.Tensor], spec: NetworkSpec) -> bool:
    """Whether the weights fit `spec`'s network key by key and shape by shape, the head aside (no model is built).

    This is how a bare state_dict is matched to a network of any family: the keys name the family
    (`layer1.0.conv1` for residual nets, `features.denseblock1` for DenseNets, `block1.column3` for
    FractalNets, `layer1.0.layers.0.transient_to_residual` for RiR) and the shapes fix depth and widths.
    """
    expected = {k: v for k, v in state_dict_layout(spec).items()
                if not is_head_key(k) and not k.endswith("num_batches_tracked")}
    given = {k: tuple(v.shape) for k, v in state_dict.items()
             if not is_head_key(k) and not k.endswith("num_batches_tracked")}
    return given == expected
