"""The GPU path, run by `bench/gpu_check.sh` on a machine with CUDA; skipped elsewhere with the reason."""

from __future__ import annotations

import pytest
import torch

from tests.sinks import StopAt
from workbench.data import TrainBatches, load_dataset
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import MemorySink, fit, load_checkpoint
from workbench.weights.export import export_model
from workbench.weights.loader import load_model_file

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run bench/gpu_check.sh on one)"),
]

TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[8, 16, 32])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset(DataSpec(synthetic_train=512, synthetic_test=256), home=tmp_path_factory.mktemp("home"))


def cuda_run(**train) -> RunSpec:
    recipe = {"epochs": 2, "batch_size": 64, "log_every": 2, "device": "cuda", **train}
    return RunSpec(net=TINY_NET, train=TrainSpec(**recipe))


def test_the_dataset_stays_resident_on_the_gpu(data):
    batches = TrainBatches(data.train_images, data.train_labels, 64, augment="cifar", mean=data.info.mean,
                           std=data.info.std, device="cuda", seed=0)
    images, labels = next(iter(batches))
    assert images.device.type == "cuda" and labels.device.type == "cuda" and images.dtype == torch.float32


def test_auto_precision_trains_in_bf16_channels_last(data, tmp_path):
    result = fit(cuda_run(), tmp_path, MemorySink(), dataset=data)
    assert result.status == "completed" and result.device.startswith("cuda") and result.precision == "bf16"
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert state["conv1.weight"].dtype == torch.float32, "the weights stay fp32 under autocast"


def test_a_cuda_run_stops_and_resumes_to_the_same_curve(data, tmp_path):
    straight = MemorySink()
    fit(cuda_run(precision="fp32"), tmp_path / "straight", straight, dataset=data)
    stopped = StopAt(8)
    assert fit(cuda_run(precision="fp32"), tmp_path / "resumed", stopped, dataset=data).iteration == 8
    stopped.stop_at = 10**9
    assert fit(cuda_run(precision="fp32"), tmp_path / "resumed", stopped, dataset=data).status == "completed"

    def losses(rows):
        return [(r["iteration"], r["value"]) for r in rows if r["name"] == "loss" and r["split"] == "train"]

    # cuDNN may pick different kernels after a restart, so the curves agree closely rather than bit for bit.
    assert [i for i, _ in losses(stopped.rows)] == [i for i, _ in losses(straight.rows)]
    assert [v for _, v in losses(stopped.rows)] == pytest.approx([v for _, v in losses(straight.rows)], rel=1e-3)


@pytest.mark.parametrize("fmt", ["bundle", "onnx"])
def test_a_cuda_trained_run_exports_and_loads_on_the_cpu(data, tmp_path, fmt):
    fit(cuda_run(), tmp_path / "run", MemorySink(), dataset=data)
    model = load_model_file(tmp_path / "run" / "checkpoints" / "best.pt", TINY_NET).eval()
    path = export_model(model, TINY_NET, None, fmt, tmp_path / f"model.{fmt}")
    images = torch.randn(4, 3, 32, 32)
    expected = model.cpu()(images)
    if fmt == "bundle":
        got = load_model_file(path).eval()(images)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4)
