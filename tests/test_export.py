"""Export formats: each round trip reproduces the model's outputs; failed exports leave nothing behind."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision

from workbench import build_model, resolve_spec
from workbench.errors import WorkbenchError
from workbench.training.checkpoint import save_checkpoint
from workbench.weights import export as export_module
from workbench.weights.export import (
    EXPORT_FORMATS,
    export_bundle,
    export_model,
    export_onnx,
    export_torch_program,
    export_torchvision_state_dict,
)
from workbench.weights.loader import load_model_file
from workbench.weights.transfer import apply_finetune_mode


def load_bundle(path):
    model = load_model_file(path)
    return model, model.spec, model.metadata


def load_model(path):
    return load_model_file(path)


def export_from_checkpoint(checkpoint, fmt, path, metadata=None):
    """As the service exports a run: the checkpoint's metadata without its run spec, plus `metadata`."""
    model = load_model_file(checkpoint)
    stored = {key: value for key, value in model.metadata.items() if key != "run_spec"}
    return export_model(model, model.spec, {**stored, **(metadata or {})}, fmt, path)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
BATCH_SIZES = (1, 5)
METADATA = {
    "preset": "resnet20",
    "dataset": "cifar10",
    "class_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.247, 0.2435, 0.2616],
    "input_size": 32,
    "train": {"epochs": 164, "lr": 0.1, "batch_size": 128},
    "final_metrics": {"test_error": 8.61},
    "best_metrics": {"test_error": 8.42},
}


def trained_like(model: torch.nn.Module, input_size: int, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine values, then switch to eval."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.train()
        for _ in range(2):
            model(torch.randn(8, model.spec.in_channels, input_size, input_size))
    return model.eval()


def inputs_for(spec, batch_size: int, seed: int, size: int | None = None) -> torch.Tensor:
    size = size or spec.input_size
    return torch.randn(batch_size, spec.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def resnet20():
    return trained_like(build_model("resnet20"), 32)


def test_bundle_round_trip_reproduces_outputs_spec_and_metadata(resnet20, tmp_path):
    path = export_bundle(resnet20, resnet20.spec, METADATA, tmp_path / "resnet20.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.zip"], "no temp file is left behind"
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == {"weights.safetensors", "spec.json", "metadata.json", "MODEL_CARD.md"}
        assert json.loads(archive.read("spec.json")) == resnet20.spec.model_dump(mode="json")
    model, spec, metadata = load_bundle(path)
    assert spec == resnet20.spec
    assert metadata == METADATA
    assert not model.training
    assert load_model(path).metadata["class_names"] == METADATA["class_names"]
    with torch.no_grad():
        for batch_size in BATCH_SIZES:
            x = inputs_for(spec, batch_size, seed=batch_size)
            assert max_difference(model(x), resnet20(x)) < TOLERANCE
    for key, value in resnet20.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_model_card_describes_the_model(resnet20, tmp_path):
    path = export_bundle(resnet20, resnet20.spec, METADATA, tmp_path / "resnet20.zip")
    with zipfile.ZipFile(path) as archive:
        card = archive.read("MODEL_CARD.md").decode()
    for expected in [
        "resnet20",
        "269,722",  # parameters
        "40,551,040",  # multiply-adds at 32x32
        "cifar10",
        "airplane, automobile, bird",
        "0.4914, 0.4822, 0.4465",
        "0.247, 0.2435, 0.2616",
        "| epochs | 164 |",
        "| test_error | 8.61 |",
        "| test_error | 8.42 |",
        '"shortcut": "A"',
        "workbench.load_model(",
    ]:
        assert expected in card, expected


def test_bundle_loads_in_a_fresh_process(resnet20, tmp_path):
    bundle = export_bundle(resnet20, resnet20.spec, METADATA, tmp_path / "model.zip")
    inputs = {str(b): inputs_for(resnet20.spec, b, seed=10 + b) for b in BATCH_SIZES}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch, workbench\n"
        "model = workbench.load_model(sys.argv[1])\n"
        "inputs = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    torch.save({k: model(v) for k, v in inputs.items()}, sys.argv[3])\n"
        "print(model.metadata['class_names'][0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(bundle), str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "airplane"
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        for key, x in inputs.items():
            assert max_difference(outputs[key], resnet20(x)) < TOLERANCE


def test_bundle_keeps_a_hidden_layer_head(tmp_path):
    model = trained_like(build_model("resnet20"), 32)
    apply_finetune_mode(model, "head", hidden=24, num_classes=5)
    model.eval()
    path = export_bundle(model, model.spec, {"class_names": list("abcde")}, tmp_path / "head.zip")
    loaded, spec, metadata = load_bundle(path)
    assert metadata["head_hidden"] == 24
    assert spec.num_classes == 5
    assert "fc.0.weight" in loaded.state_dict() and "fc.2.weight" in loaded.state_dict()
    x = inputs_for(spec, 3, seed=1)
    with torch.no_grad():
        assert max_difference(loaded(x), model(x)) < TOLERANCE


def test_onnx_round_trip_with_a_dynamic_batch(resnet20, tmp_path):
    path = export_onnx(resnet20, resnet20.spec, tmp_path / "model.onnx", metadata=METADATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    properties = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(properties["workbench_spec"]) == resnet20.spec.model_dump(mode="json")
    assert json.loads(properties["workbench_metadata"])["class_names"] == METADATA["class_names"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for batch_size in (2, 7):
            x = inputs_for(resnet20.spec, batch_size, seed=20 + batch_size)
            (outputs,) = session.run(None, {"input": x.numpy()})
            assert outputs.shape == (batch_size, 10)
            assert float(np.abs(outputs - resnet20(x).numpy()).max()) < TOLERANCE


def test_onnx_export_that_fails_its_check_leaves_no_file(resnet20, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(WorkbenchError, match="does not reproduce the PyTorch model"):
        export_onnx(resnet20, resnet20.spec, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_torch_program_round_trip_with_a_dynamic_batch(resnet20, tmp_path):
    path = export_torch_program(resnet20, resnet20.spec, tmp_path / "model.pt2", metadata=METADATA)
    extra_files = {"spec.json": "", "metadata.json": ""}
    program = torch.export.load(path, extra_files=extra_files)
    assert json.loads(extra_files["spec.json"]) == resnet20.spec.model_dump(mode="json")
    assert json.loads(extra_files["metadata.json"])["preset"] == "resnet20"
    module = program.module()
    with torch.no_grad():
        for batch_size in BATCH_SIZES:
            x = inputs_for(resnet20.spec, batch_size, seed=30 + batch_size)
            assert max_difference(module(x), resnet20(x)) < TOLERANCE


@pytest.mark.parametrize("preset", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_into_torchvision(preset, tmp_path):
    spec = resolve_spec(preset).model_copy(update={"num_classes": 10})
    model = trained_like(build_model(spec), 64)
    path = export_torchvision_state_dict(model, spec, tmp_path / f"{preset}.pth")
    reference = getattr(torchvision.models, preset)(num_classes=10)
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    reference.eval()
    with torch.no_grad():
        for batch_size in (1, 2):
            x = inputs_for(spec, batch_size, seed=40 + batch_size, size=64)
            assert max_difference(reference(x), model(x)) < TOLERANCE


@pytest.mark.parametrize(
    ("preset", "changes", "named"),
    [
        ("resnet20", {}, ["family is 'cifar'", "shortcut is 'A'", "widths is [16, 32, 64]", "blocks [3, 3, 3]"]),
        ("resnet18", {"placement": "full_preact"}, ["placement is 'full_preact'"]),
        ("resnet34-C", {}, ["shortcut is 'C'"]),
        ("resnet50", {"bottleneck_stride": "1x1"}, ["bottleneck_stride is '1x1'"]),
        ("resnet18", {"stochastic_depth": 0.2}, ["stochastic_depth is 0.2"]),
    ],
)
def test_torchvision_export_names_the_fields_that_differ(preset, changes, named, tmp_path):
    spec = resolve_spec(preset).model_copy(update=changes)
    spec = type(spec).model_validate(spec.model_dump())
    model = build_model(spec)
    with pytest.raises(WorkbenchError, match="torchvision's ResNet layout") as caught:
        export_torchvision_state_dict(model, spec, tmp_path / "model.pth")
    for text in named:
        assert text in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_export_model_dispatches_every_format(tmp_path):
    spec = resolve_spec("resnet18").model_copy(update={"num_classes": 3, "input_size": 64})
    model = trained_like(build_model(spec), 64)
    assert set(EXPORT_FORMATS) == {"bundle", "onnx", "pt2", "torchvision"}
    for name, fmt in EXPORT_FORMATS.items():
        path = export_model(model, spec, {"preset": "resnet18"}, name, tmp_path / f"model{fmt.suffix}")
        assert path.is_file() and path.stat().st_size > 0
        assert fmt.description
    with pytest.raises(WorkbenchError, match="unknown export format"):
        export_model(model, spec, {}, "tflite", tmp_path / "model.tflite")


def test_export_leaves_the_training_model_as_it_was(tmp_path):
    model = build_model("resnet20")
    model.train()
    export_onnx(model, model.spec, tmp_path / "model.onnx")
    assert model.training
    assert all(module.training for module in model.modules())


def test_export_from_a_workbench_checkpoint(resnet20, tmp_path):
    run_spec = {
        "net": resnet20.spec.model_dump(mode="json"),
        "data": {"name": "cifar10"},
        "train": {"epochs": 3, "lr": 0.1},
    }
    checkpoint = save_checkpoint(
        tmp_path / "best.pt", {"model": resnet20.state_dict(), "run_spec": run_spec, "epoch": 3}
    )
    path = export_from_checkpoint(checkpoint, "bundle", tmp_path / "exported.zip", metadata={"preset": "resnet20"})
    model, spec, metadata = load_bundle(path)
    assert spec == resnet20.spec
    assert metadata == {"dataset": "cifar10", "train": {"epochs": 3, "lr": 0.1}, "preset": "resnet20"}
    x = inputs_for(spec, 4, seed=50)
    with torch.no_grad():
        assert max_difference(model(x), resnet20(x)) < TOLERANCE
