"""Importing weights safely (bundles, torchvision, reference CIFAR and workbench checkpoints) and fine-tuning modes."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from workbench import build_model, resolve_spec
from workbench.errors import UnsafeFileError, WorkbenchError
from workbench.training.checkpoint import save_checkpoint
from workbench.weights.export import export_bundle, export_torch_program
from workbench.weights.importers import adapt_head, detect_format
from workbench.weights.loader import import_weights
from workbench.weights.loader import load_model_file as load_pretrained
from workbench.weights.transfer import FINETUNE_MODES, apply_finetune_mode, trainable_parameters


def model_from_checkpoint(path):
    model = load_pretrained(path)
    return model, model.spec, model.metadata

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRETRAINED = SHARED_DATA / "pretrained"
CIFAR_ARCHIVE = SHARED_DATA / "cifar-10-python.tar.gz"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_CHECKPOINTS = {
    "resnet20": ("resnet20-12fca82f.th", 91.78, 81.0),
    "resnet56": ("resnet56-4bfd9763.th", 93.62, 83.2),
}


def requires_pretrained(name: str) -> Path:
    path = PRETRAINED / REFERENCE_CHECKPOINTS[name][0]
    if not path.is_file():
        pytest.skip(f"{path} is absent (real checkpoints live in ../shared/data/pretrained)")
    return path


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch: numpy arrays and builtins only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch asks for {module}.{name}")
        return super().find_class(module, name)


def cifar10_test_set(archive: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images (uint8 N,3,32,32) and labels from the python-version archive, read without arbitrary pickles."""
    with tarfile.open(archive, "r:gz") as tar:
        raw = tar.extractfile("cifar-10-batches-py/test_batch").read()
    batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.tensor(batch[b"labels"])


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std) -> float:
    """Top-1 accuracy (%) of `model` on uint8 images normalised with mean/std."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    model = model.to(memory_format=torch.channels_last)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = ((images[start : start + 1000].float() / 255 - mean) / std).contiguous(
                memory_format=torch.channels_last
            )
            correct += int((model(x).argmax(1) == labels[start : start + 1000]).sum())
    return 100.0 * correct / len(images)


@pytest.fixture(scope="module")
def cifar10_test():
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR_ARCHIVE} is absent (real data lives in ../shared/data)")
    return cifar10_test_set(CIFAR_ARCHIVE)


# ---------------------------------------------------------------- formats


def test_torchvision_resnet18_state_dict_imports_into_the_preset(tmp_path):
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    assert detect_format(path) == "state-dict"
    weights = import_weights(path, resolve_spec("resnet18"))
    for key, value in reference.state_dict().items():
        assert torch.equal(weights[key], value), key
    model = load_pretrained(path, resolve_spec("resnet18"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert float((model(x) - reference(x)).abs().max()) < 1e-4
    assert model.source["format"] == "state-dict"


def test_a_new_head_replaces_one_for_another_number_of_classes(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    spec = resolve_spec("resnet18").model_copy(update={"num_classes": 10})
    with pytest.raises(WorkbenchError, match="only the head differs") as caught:
        load_pretrained(path, spec)
    assert "fc.weight (1000, 512) in the file vs (10, 512) in the model" in str(caught.value)
    model = load_pretrained(path, spec, new_head=True)
    assert model.fc.out_features == 10
    assert model.source["head_replaced"] and model.source["dropped_keys"] == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_adapt_head_keeps_a_fitting_head_and_drops_another():
    model = build_model("resnet20")
    weights = build_model("resnet20").state_dict()
    kept, dropped = adapt_head(weights, model)
    assert dropped == [] and kept.keys() == weights.keys()
    other = build_model(resolve_spec("resnet20").model_copy(update={"num_classes": 100})).state_dict()
    kept, dropped = adapt_head(other, model)
    assert dropped == ["fc.bias", "fc.weight"]
    assert not any(k.startswith("fc.") for k in kept)


@pytest.mark.parametrize("name", list(REFERENCE_CHECKPOINTS))
def test_reference_cifar_checkpoints_import_strictly(name):
    path = requires_pretrained(name)
    assert detect_format(path) == "cifar-reference"
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = import_weights(path, resolve_spec(name))
    assert torch.equal(weights["fc.weight"], raw["module.linear.weight"])
    assert torch.equal(weights["layer3.0.conv1.weight"], raw["module.layer3.0.conv1.weight"])
    model = load_pretrained(path, resolve_spec(name))
    assert model.metadata["mean"] == list(IMAGENET_MEAN)
    assert model.metadata["std"] == list(IMAGENET_STD)
    assert model.metadata["best_metrics"]["test_accuracy"] == pytest.approx(REFERENCE_CHECKPOINTS[name][1], abs=0.01)


def test_reference_checkpoint_into_the_wrong_depth_lists_the_keys():
    path = requires_pretrained("resnet56")
    with pytest.raises(WorkbenchError) as caught:
        import_weights(path, resolve_spec("resnet20"))
    message = str(caught.value)
    assert "180 unexpected: layer1.3.bn1.bias, layer1.3.bn1.running_mean" in message
    assert "choose the network spec" in message


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCE_CHECKPOINTS))
def test_reference_cifar_checkpoints_score_as_documented(name, cifar10_test):
    path = requires_pretrained(name)
    images, labels = cifar10_test
    model = load_pretrained(path, resolve_spec(name))
    score = accuracy(model, images, labels, model.metadata["mean"], model.metadata["std"])
    assert abs(score - REFERENCE_CHECKPOINTS[name][2]) < 0.5, f"{name} scored {score:.2f}%"


def test_workbench_checkpoint_imports_with_its_own_spec(tmp_path):
    source = build_model("resnet20")
    run_spec = {"net": source.spec.model_dump(mode="json"), "data": {"name": "cifar10"}, "train": {"epochs": 1}}
    path = save_checkpoint(tmp_path / "last.pt", {"model": source.state_dict(), "run_spec": run_spec})
    assert detect_format(path) == "workbench-checkpoint"
    model = load_pretrained(path)
    assert model.spec == source.spec
    assert model.metadata["dataset"] == "cifar10"
    rebuilt, spec, _ = model_from_checkpoint(path)
    assert spec == source.spec
    for key, value in source.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_bundle_and_safetensors_import(tmp_path):
    source = build_model("resnet20")
    bundle = export_bundle(source, source.spec, {"mean": [0.5] * 3, "std": [0.5] * 3}, tmp_path / "model.zip")
    assert detect_format(bundle) == "bundle"
    model = load_pretrained(bundle)
    assert model.metadata["mean"] == [0.5] * 3
    bare = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v for k, v in source.state_dict().items()}, bare)
    assert detect_format(bare) == "safetensors"
    weights = import_weights(bare, source.spec)
    assert torch.equal(weights["conv1.weight"], source.conv1.weight)


def test_mismatches_are_listed_by_name(tmp_path):
    source = build_model(resolve_spec("resnet20").model_copy(update={"num_classes": 100}))
    bundle = export_bundle(source, source.spec, {}, tmp_path / "model.zip")
    with pytest.raises(WorkbenchError) as caught:
        import_weights(bundle, resolve_spec("resnet32"))
    message = str(caught.value)
    assert "missing: layer1.3.conv1.weight" in message
    assert "fc.weight (100, 64) in the file vs (10, 64) in the model" in message
    assert "fc.bias (100,) in the file vs (10,) in the model" in message
    with pytest.raises(WorkbenchError, match=r"72 unexpected: layer1\.3\.bn1\.bias, .*layer1\.3\.conv1\.weight"):
        import_weights(
            export_bundle(build_model("resnet32"), resolve_spec("resnet32"), {}, tmp_path / "b.zip"), source.spec
        )


def test_programs_onnx_and_junk_are_refused_with_a_reason(tmp_path):
    model = build_model("resnet20")
    program = export_torch_program(model, model.spec, tmp_path / "model.pt2")
    with pytest.raises(WorkbenchError, match="torch.export program"):
        detect_format(program)
    junk = tmp_path / "notes.pth"
    junk.write_text("these are not weights")
    with pytest.raises(WorkbenchError, match="not an importable file"):
        detect_format(junk)
    with pytest.raises(WorkbenchError, match="does not exist"):
        detect_format(tmp_path / "missing.pth")


class _CreatesMarker:
    """Unpickling this would create a marker file: the payload a crafted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-protocol-2", "pickle-protocol-0"])
def test_a_malicious_pickle_is_refused_without_running(writer, tmp_path):
    marker = tmp_path / "marker"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1)}, "best_prec1": _CreatesMarker(marker)}
    path = tmp_path / "evil.th"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=int(writer[-1]))
    for load in (detect_format, lambda p: import_weights(p, resolve_spec("resnet20")), load_pretrained):
        with pytest.raises(UnsafeFileError, match="was refused") as caught:
            load(path)
        assert "system" in str(caught.value)
        assert "weights_only=False" not in str(caught.value)
    assert not marker.exists()


# ---------------------------------------------------------------- fine-tuning modes


def _sgd_steps(model: torch.nn.Module, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model.train()
        x = torch.randn(8, 3, 32, 32, generator=generator)
        y = torch.randint(0, model.spec.num_classes, (8,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("hidden", [None, 16])
def test_head_mode_freezes_everything_but_a_new_head(hidden):
    model = build_model("resnet20")
    before = _snapshot(model)
    apply_finetune_mode(model, "head", hidden=hidden, num_classes=4)
    assert model.spec.num_classes == 4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("fc.") for name in trainable)
    assert len(trainable_parameters(model)) == len(trainable)
    head_before = {k: v.clone() for k, v in model.fc.state_dict().items()}
    _sgd_steps(model)
    after = model.state_dict()
    for key, value in before.items():
        if not key.startswith("fc."):
            assert torch.equal(after[key], value), f"{key} changed"  # weights, BN running stats and counters
    assert any(not torch.equal(model.fc.state_dict()[k], v) for k, v in head_before.items())


def test_last_stages_mode_trains_the_last_stages_and_the_head():
    model = build_model("resnet20")
    apply_finetune_mode(model, "last_stages")
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "fc"}
    before = _snapshot(model)
    _sgd_steps(model)
    after = model.state_dict()
    assert all(
        torch.equal(after[k], v) for k, v in before.items() if k.startswith(("conv1", "bn1", "layer1", "layer2"))
    )
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    apply_finetune_mode(model, "last_stages", stages=2)
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"layer2", "layer3", "fc"}


def test_all_mode_unfreezes_a_frozen_model():
    model = build_model("resnet20")
    apply_finetune_mode(model, "head")
    apply_finetune_mode(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    before = _snapshot(model)
    _sgd_steps(model, steps=1)
    assert not torch.equal(model.state_dict()["bn1.running_mean"], before["bn1.running_mean"])


def test_bad_fine_tuning_requests_are_explained():
    model = build_model("resnet20")
    assert set(FINETUNE_MODES) == {"all", "last_stages", "head"}
    with pytest.raises(WorkbenchError, match="unknown fine-tuning mode"):
        apply_finetune_mode(model, "lora")
    with pytest.raises(WorkbenchError, match="belongs to mode 'head'"):
        apply_finetune_mode(model, "all", hidden=32)
    with pytest.raises(WorkbenchError, match="stages must be between 1 and 3"):
        apply_finetune_mode(model, "last_stages", stages=4)
