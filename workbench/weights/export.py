"""Exported models: files that load elsewhere with a few lines.

Formats (see EXPORT_FORMATS):

- bundle (.zip): `weights.safetensors`, `spec.json` (the exact network spec), `metadata.json`
  (class names, normalization, training settings, metrics; `head_hidden` when the head has a
  hidden layer) and `MODEL_CARD.md`. `load_model` / `load_bundle` rebuild the exact model.
- onnx (.onnx): dynamic batch dimension, checked with onnxruntime against PyTorch before the
  file appears.
- pt2 (.pt2): a torch.export program with a dynamic batch dimension, for `torch.export.load`.
- torchvision (.pth): a state_dict for the matching `torchvision.models` builder (resnetXX,
  wide_resnetXX_2, resnextXX_CxDd, densenetXXX), for nets in its layout.

Every writer works on a CPU, fp32, eval-mode copy of the model and writes atomically (temp file
in the target folder, then rename), so a failed export never leaves a partial file.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import summarize as summarize_model
from workbench.spec import (
    DENSENET_IMAGENET,
    IMAGENET_DEPTHS,
    DenseNetSpec,
    NetSpec,
    NetworkSpec,
    ResNeXtSpec,
    WideResNetSpec,
)
from workbench.weights.bundle import BUNDLE_FORMAT, CARD_MEMBER, METADATA_MEMBER, SPEC_MEMBER, WEIGHTS_MEMBER
from workbench.weights.transfer import head_hidden

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-4
ONNX_OPSET = 17
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
VERIFY_BATCH_SIZES = (1, 3)


# ---------------------------------------------------------------- shared plumbing


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain network behind DataParallel/DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def export_copy(model: nn.Module) -> nn.Module:
    """A CPU, fp32, contiguous, eval-mode copy of `model`; the original is left as it was."""
    clone = copy.deepcopy(_unwrap(model)).cpu().float()
    clone = clone.to(memory_format=torch.contiguous_format)
    return clone.eval()


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as CPU, contiguous, detached tensors (what safetensors needs)."""
    return {key: value.detach().cpu().contiguous() for key, value in _unwrap(model).state_dict().items()}


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """A temp path beside `path`; renamed onto `path` if the block succeeds, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    tmp.chmod(0o644)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _example_input(spec: NetworkSpec, batch_size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, spec.in_channels, spec.input_size, spec.input_size, generator=generator)


def _check_close(label: str, reference: torch.Tensor, candidate: torch.Tensor, batch_size: int) -> float:
    """Max abs difference of two outputs; WorkbenchError above EXPORT_TOLERANCE (times the output scale if above 1)."""
    difference = float((reference - candidate).abs().max())
    limit = EXPORT_TOLERANCE * max(1.0, float(reference.abs().max()))
    if not difference <= limit:
        raise WorkbenchError(
            f"{label} does not reproduce the PyTorch model: max abs difference {difference:.3g} at batch size "
            f"{batch_size} (allowed {limit:.3g}); the file was not written"
        )
    return difference


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON data")


def _to_json(data: Any) -> str:
    try:
        return json.dumps(data, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise WorkbenchError(f"export metadata must be JSON data: {exc}") from None


# ---------------------------------------------------------------- bundle


def _fmt(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _table(rows: dict[str, Any]) -> list[str]:
    if not rows:
        return ["not recorded", ""]
    return ["| setting | value |", "| --- | --- |", *(f"| {key} | {_fmt(value)} |" for key, value in rows.items()), ""]


def model_card(spec: NetworkSpec, metadata: dict, summary: dict) -> str:
    """The bundle's MODEL_CARD.md: what the model is, what it was trained on, how to load it."""
    title = metadata.get("preset") or spec.name
    class_names = metadata.get("class_names")
    head = "fc" if not isinstance(spec, DenseNetSpec) else "classifier"
    lines = [
        f"# {title}",
        "",
        f"{spec.description()} exported by ResNet Workbench.",
        "",
        "## Network",
        "",
        f"- preset: {_fmt(metadata.get('preset'))}",
        f"- parameters: {summary['params']:,}",
        f"- multiply-adds per image: {summary['macs']:,} at {spec.input_size}x{spec.input_size}",
        f"- classes: {spec.num_classes}",
    ]
    if metadata.get("head_hidden"):
        lines.append(f"- head: Linear-ReLU-Linear with {metadata['head_hidden']} hidden units "
                     f"(keys {head}.0, {head}.2)")
    lines += [
        "",
        "Spec (`spec.json`):",
        "",
        "```json",
        json.dumps(spec.model_dump(mode="json"), indent=2),
        "```",
        "",
        "## Data",
        "",
        f"- dataset: {_fmt(metadata.get('dataset'))}",
        f"- class names: {_fmt(class_names)}",
        f"- input size: {_fmt(metadata.get('input_size', spec.input_size))} pixels, {spec.in_channels} channels",
        f"- normalization mean: {_fmt(metadata.get('mean'))}",
        f"- normalization std: {_fmt(metadata.get('std'))}",
        "",
        "Inputs are float tensors (N, C, H, W) with pixel values in [0, 1], normalized per channel: "
        "(x - mean) / std. Outputs are logits, one per class.",
        "",
        "## Training",
        "",
        *_table(metadata.get("train") or {}),
        "## Metrics",
        "",
        "Final:",
        "",
        *_table(metadata.get("final_metrics") or {}),
        "Best:",
        "",
        *_table(metadata.get("best_metrics") or {}),
        "## Load",
        "",
        "```python",
        "import torch",
        "import workbench",
        "",
        'model = workbench.load_model("model.zip")  # eval mode; model.metadata holds class names, mean, std',
        'mean = torch.tensor(model.metadata["mean"]).view(1, -1, 1, 1)',
        'std = torch.tensor(model.metadata["std"]).view(1, -1, 1, 1)',
        f"images = torch.rand(8, {spec.in_channels}, {spec.input_size}, {spec.input_size})  # pixels in [0, 1]",
        "with torch.no_grad():",
        "    predicted = model((images - mean) / std).argmax(1)",
        'print([model.metadata["class_names"][i] for i in predicted])',
        "```",
        "",
        "Without the workbench: `weights.safetensors` holds the state_dict (load with "
        "`safetensors.torch.load_file`) for the network described by `spec.json`.",
        "",
    ]
    return "\n".join(lines)


def export_bundle(model: nn.Module, spec: NetworkSpec, metadata: dict | None, path: Path) -> Path:
    """Write a bundle zip (weights, spec, metadata, model card) to `path` atomically."""
    path = Path(path)
    network = export_copy(model)
    hidden = head_hidden(network)
    metadata = dict(metadata or {})
    metadata.pop("head_hidden", None)
    if hidden is not None:
        metadata["head_hidden"] = hidden
    summary = summarize_model(network)
    weights = safetensors_save(weights_of(network), metadata={"format": BUNDLE_FORMAT})
    with _atomic_target(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.comment = BUNDLE_FORMAT.encode()
        archive.writestr(WEIGHTS_MEMBER, weights)
        archive.writestr(SPEC_MEMBER, json.dumps(spec.model_dump(mode="json"), indent=2))
        archive.writestr(METADATA_MEMBER, _to_json(metadata))
        archive.writestr(CARD_MEMBER, model_card(spec, metadata, summary))
    log.info("exported bundle %s (%d parameters)", path, summary["params"])
    return path


# ---------------------------------------------------------------- ONNX


def _onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, spec: NetworkSpec, path: Path, metadata: dict | None = None) -> Path:
    """Write an ONNX file with a dynamic batch dimension, after checking it with onnxruntime.

    The check runs the file and the PyTorch model on random inputs at two batch sizes; if they
    differ by more than EXPORT_TOLERANCE (relative to the output scale when logits exceed 1),
    WorkbenchError is raised and nothing is written. Uses the TorchScript-based exporter, which
    needs no packages beyond torch and onnx. `metadata` goes into the file's metadata_props.
    """
    import onnx

    path = Path(path)
    network = export_copy(model)
    with _atomic_target(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (_example_input(spec, 2),),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        properties = {"workbench_spec": json.dumps(spec.model_dump(mode="json"))}
        if metadata:
            properties["workbench_metadata"] = _to_json(metadata)
        for key, value in properties.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        session = _onnx_session(tmp)
        for batch_size in VERIFY_BATCH_SIZES:
            inputs = _example_input(spec, batch_size, seed=batch_size)
            with torch.no_grad():
                reference = network(inputs)
            (outputs,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: inputs.numpy()})
            difference = _check_close("the ONNX file", reference, torch.from_numpy(np.asarray(outputs)), batch_size)
            log.debug("ONNX check at batch %d: max abs difference %.3g", batch_size, difference)
    log.info("exported ONNX %s (checked with onnxruntime at batch sizes %s)", path, VERIFY_BATCH_SIZES)
    return path


# ---------------------------------------------------------------- torch.export


def export_torch_program(model: nn.Module, spec: NetworkSpec, path: Path, metadata: dict | None = None) -> Path:
    """Write a torch.export program (.pt2) with a dynamic batch dimension, for `torch.export.load`.

    The spec (and `metadata`, if given) travel as extra files `spec.json` / `metadata.json`.
    """
    path = Path(path)
    network = export_copy(model)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(network, (_example_input(spec, 2),), dynamic_shapes=({0: batch},))
        for batch_size in VERIFY_BATCH_SIZES:
            inputs = _example_input(spec, batch_size, seed=batch_size)
            _check_close("the exported program", network(inputs), program.module()(inputs), batch_size)
    extra_files = {SPEC_MEMBER: json.dumps(spec.model_dump(mode="json"))}
    if metadata:
        extra_files[METADATA_MEMBER] = _to_json(metadata)
    with _atomic_target(path) as tmp:
        torch.export.save(program, tmp, extra_files=extra_files)
    log.info("exported torch.export program %s", path)
    return path


# ---------------------------------------------------------------- torchvision


#: torchvision builders of the other families: (depth, cardinality, bottleneck width) and (depth, widen factor).
TORCHVISION_RESNEXTS: dict[tuple[int, int, int], str] = {
    (50, 32, 4): "resnext50_32x4d",
    (101, 32, 8): "resnext101_32x8d",
    (101, 64, 4): "resnext101_64x4d",
}
TORCHVISION_WIDE_RESNETS: dict[tuple[int, int], str] = {(50, 2): "wide_resnet50_2", (101, 2): "wide_resnet101_2"}
TORCHVISION_LABELS = {"resnet": "ResNet", "densenet": "DenseNet", "wide_resnet": "wide ResNet", "resnext": "ResNeXt"}


def _resnet_differences(spec: NetSpec) -> list[str]:
    differences = []
    expected = {
        "family": "imagenet",
        "placement": "post",
        "shortcut": "B",
        "bottleneck_stride": "3x3",
        "widths": [64, 128, 256, 512],
        "in_channels": 3,
        "stochastic_depth": 0.0,
    }
    for field, wanted in expected.items():
        actual = getattr(spec, field)
        if field == "bottleneck_stride" and spec.unit != "bottleneck":
            continue
        if actual != wanted:
            differences.append(f"{field} is {actual!r} (torchvision: {wanted!r})")
    if (spec.unit, spec.blocks) not in IMAGENET_DEPTHS.values():
        known = "; ".join(f"resnet{d}: {u} {b}" for d, (u, b) in IMAGENET_DEPTHS.items())
        differences.append(f"unit {spec.unit!r} with blocks {spec.blocks} is not a torchvision depth ({known})")
    return differences


def _family_differences(spec: NetworkSpec) -> list[str]:
    """How a non-ResNet spec differs from its torchvision counterpart; empty when one matches."""
    if isinstance(spec, NetSpec):
        return _resnet_differences(spec)
    differences = []
    if getattr(spec, "family", "cifar") != "imagenet":
        differences.append(f"family is {spec.family!r} (torchvision: 'imagenet')")
    if spec.in_channels != 3:
        differences.append(f"in_channels is {spec.in_channels} (torchvision: 3)")
    if isinstance(spec, DenseNetSpec):
        wanted = {depth: (growth, blocks, 2 * growth) for depth, (growth, blocks) in DENSENET_IMAGENET.items()}
        actual = (spec.growth_rate, spec.blocks, spec.init_features)
        if actual not in wanted.values():
            known = "; ".join(f"densenet{d}: k={g}, blocks {b}" for d, (g, b, _) in wanted.items())
            differences.append(f"growth rate {spec.growth_rate} with blocks {spec.blocks} is not a torchvision "
                               f"DenseNet ({known})")
        for field, value in (("bottleneck", True), ("compression", 0.5), ("bn_size", 4)):
            if getattr(spec, field) != value:
                differences.append(f"{field} is {getattr(spec, field)!r} (torchvision: {value!r})")
    elif isinstance(spec, ResNeXtSpec):
        if (spec.depth, spec.cardinality, spec.bottleneck_width) not in TORCHVISION_RESNEXTS or \
                spec.widths != [64, 128, 256, 512]:
            known = ", ".join(TORCHVISION_RESNEXTS.values())
            differences.append(f"ResNeXt-{spec.depth} {spec.cardinality}x{spec.bottleneck_width}d is not a torchvision "
                               f"ResNeXt ({known})")
    elif isinstance(spec, WideResNetSpec):
        if (spec.depth, spec.widen_factor) not in TORCHVISION_WIDE_RESNETS:
            known = ", ".join(TORCHVISION_WIDE_RESNETS.values())
            differences.append(f"WRN-{spec.depth}-{spec.widen_factor} is not a torchvision wide ResNet ({known})")
    else:
        differences.append(f"torchvision has no {spec.kind} networks")
    return differences


def torchvision_layout_differences(spec: NetworkSpec, model: nn.Module | None = None) -> list[str]:
    """How `spec` (and the model's head) differ from torchvision's layout; empty when it matches."""
    differences = _family_differences(spec)
    if model is not None and head_hidden(_unwrap(model)) is not None:
        head = getattr(_unwrap(model), "head_name", "fc")
        differences.append(f"the head has a hidden layer (torchvision: a single Linear {head})")
    return differences


def torchvision_name(spec: NetworkSpec) -> str:
    """The `torchvision.models` builder name of `spec` (which must fit its layout), such as 'densenet121'."""
    if isinstance(spec, DenseNetSpec):
        return next(f"densenet{d}" for d, (g, b) in DENSENET_IMAGENET.items()
                    if (g, b) == (spec.growth_rate, spec.blocks))
    if isinstance(spec, ResNeXtSpec):
        return TORCHVISION_RESNEXTS[(spec.depth, spec.cardinality, spec.bottleneck_width)]
    if isinstance(spec, WideResNetSpec):
        return TORCHVISION_WIDE_RESNETS[(spec.depth, spec.widen_factor)]
    return f"resnet{spec.depth}"


def torchvision_builder(spec: NetworkSpec) -> Callable[..., nn.Module]:
    """The `torchvision.models` constructor matching `spec` (which must fit its layout)."""
    import torchvision

    return getattr(torchvision.models, torchvision_name(spec))


def export_torchvision_state_dict(
    model: nn.Module, spec: NetworkSpec, path: Path, metadata: dict | None = None
) -> Path:
    """Write a `.pth` state_dict that loads into the matching `torchvision.models` builder strictly.

    Raises WorkbenchError naming each field that differs from torchvision's layout. `metadata` is
    not stored (torchvision's loaders expect the bare state_dict).
    """
    path = Path(path)
    differences = torchvision_layout_differences(spec, model)
    if differences:
        label = TORCHVISION_LABELS.get(spec.kind)
        layout = f"torchvision's {label} layout" if label else "any torchvision layout"
        raise WorkbenchError(
            f"this network does not match {layout}, so a torchvision state_dict cannot "
            "hold it: " + "; ".join(differences) + ". Export a bundle, ONNX or pt2 instead."
        )
    name = torchvision_name(spec)
    state_dict = weights_of(export_copy(model))
    target = torchvision_builder(spec)(num_classes=spec.num_classes)
    try:
        target.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WorkbenchError(f"the weights do not load into torchvision's {name}: {exc}") from None
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    with _atomic_target(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    log.info("exported torchvision %s state_dict %s", name, path)
    return path


# ---------------------------------------------------------------- dispatch


class ExportFormat(NamedTuple):
    """One export format: the writer (called with model, spec, metadata, path), file suffix, description."""

    function: Callable[..., Path]
    suffix: str
    description: str


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "bundle": ExportFormat(
        export_bundle, ".zip", "weights (safetensors) + spec + model card; load with workbench.load_model"
    ),
    "onnx": ExportFormat(export_onnx, ".onnx", "ONNX with a dynamic batch dimension, checked with onnxruntime"),
    "pt2": ExportFormat(export_torch_program, ".pt2", "torch.export program; load with torch.export.load"),
    "torchvision": ExportFormat(
        export_torchvision_state_dict, ".pth", "state_dict for torchvision.models (matching layouts only)"
    ),
}


def export_model(model: nn.Module, spec: NetworkSpec, metadata: dict | None, fmt: str, path: Path) -> Path:
    """Export `model` in format `fmt` (a key of EXPORT_FORMATS) to `path`."""
    if fmt not in EXPORT_FORMATS:
        raise WorkbenchError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[fmt].function(model, spec, metadata=metadata, path=Path(path))
