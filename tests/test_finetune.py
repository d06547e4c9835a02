"""Fine-tuning runs: from a torchvision state_dict on real images, and from another run's checkpoint."""

from pathlib import Path

import pytest
import torch
import torchvision

from workbench import build_model
from workbench.data import load_dataset
from workbench.errors import SpecError
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec, parse_spec
from workbench.training import MemorySink, fit, load_checkpoint
from workbench.weights import model_factory

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENETTE = DATA / "imagenette-mini"
TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])

needs_imagenette = pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f"{IMAGENETTE} is absent")


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    spec = DataSpec(name="folder", path=str(IMAGENETTE), resolution=64, per_class_cap=16)
    return load_dataset(spec, home=tmp_path_factory.mktemp("home"))


class CheckpointHistory(MemorySink):
    """Keeps the weights of every 'last' checkpoint the run writes."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_states = []

    def checkpoint_saved(self, path, kind):
        if kind == "last":
            self.saved_states.append(load_checkpoint(path)["model"])


@needs_imagenette
def test_torchvision_resnet18_new_head_only_leaves_every_frozen_parameter_bitwise_unchanged(imagenette, tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    source_path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), source_path)
    net = build_model("resnet18").spec
    run = RunSpec(
        net=net, data=DataSpec(name="folder", path=str(IMAGENETTE), resolution=64), init_from=str(source_path),
        finetune="head", head_hidden=32, train=TrainSpec(epochs=2, batch_size=32, log_every=1, lr=0.05),
    )
    sink = CheckpointHistory()
    result = fit(run, tmp_path / "run", sink, dataset=imagenette, model_factory=model_factory(run))
    assert result.status == "completed" and result.net.num_classes == 10
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    original = source.state_dict()
    backbone = [k for k in original if not k.startswith("fc.")]
    assert backbone and all(torch.equal(trained[k], original[k]) for k in backbone)
    assert trained["fc.0.weight"].shape == (32, 512) and trained["fc.2.weight"].shape == (10, 32)
    metadata = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["metadata"]
    assert (metadata["mean"], metadata["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), \
        "torchvision's ImageNet weights are fed ImageNet-normalized images"
    losses = [r["value"] for r in sink.rows if r["split"] == "train" and r["name"] == "loss"]
    assert len(losses) == result.iteration and all(torch.isfinite(torch.tensor(losses)))
    after_first_epoch = sink.saved_states[0]
    assert not torch.equal(after_first_epoch["fc.2.weight"], trained["fc.2.weight"]), "the head trains"


@needs_imagenette
def test_last_stage_mode_trains_only_layer4_and_the_head(imagenette, tmp_path):
    source_path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=1000).state_dict(), source_path)
    run = RunSpec(
        net=build_model("resnet18").spec, data=DataSpec(name="folder", path=str(IMAGENETTE), resolution=64),
        init_from=str(source_path), finetune="last_stages", train=TrainSpec(iterations=3, batch_size=32),
    )
    fit(run, tmp_path / "run", MemorySink(), dataset=imagenette, model_factory=model_factory(run))
    original = torch.load(source_path, weights_only=True)
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    backbone = [k for k in original if not k.startswith("fc.")]
    changed = {k.split(".")[0] for k in backbone if not torch.equal(original[k], trained[k])}
    assert changed == {"layer4"}, "fc is replaced (1000 -> 10 classes), layer4 trains, the rest stays"


def test_fine_tuning_from_a_run_checkpoint_carries_its_normalization(tmp_path):
    data = load_dataset(DataSpec(synthetic_train=128, synthetic_test=64), home=tmp_path)
    base = RunSpec(net=TINY_NET, train=TrainSpec(iterations=4, batch_size=32, precision="fp32"))
    fit(base, tmp_path / "base", MemorySink(), dataset=data)
    source = tmp_path / "base" / "checkpoints" / "last.pt"
    source_mean = load_checkpoint(source)["metadata"]["mean"]

    shifted = data.__class__(**{**data.__dict__, "info": data.info.__class__(
        **{**data.info.__dict__, "mean": (0.1, 0.1, 0.1)})})
    tuned = base.model_copy(update={"init_from": str(source), "finetune": "all"})
    fit(tuned, tmp_path / "tuned", MemorySink(), dataset=shifted, model_factory=model_factory(tuned))
    assert load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.pt")["metadata"]["mean"] == source_mean


def test_fine_tuning_options_are_checked():
    with pytest.raises(SpecError, match="needs init_from"):
        parse_spec(RunSpec, {"net": TINY_NET.model_dump(), "finetune": "head"})
    with pytest.raises(SpecError, match="only applies to fine-tuning mode 'head'"):
        parse_spec(RunSpec, {"net": TINY_NET.model_dump(), "init_from": "x.pt", "finetune": "all", "head_hidden": 8})
