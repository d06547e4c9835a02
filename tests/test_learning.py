"""Learning is real: the engine trains ResNet-20 to well above chance on real and embedded data.

Slow (a few CPU minutes on 2 cores); CI runs them with the rest of the suite.
"""

from pathlib import Path

import pytest

from workbench import build_model
from workbench.data import load_dataset
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.training import NullSink, fit

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar-10-python.tar.gz"

pytestmark = pytest.mark.slow


def test_resnet20_learns_the_embedded_dataset_well_above_chance(tmp_path):
    run = RunSpec(net=build_model("resnet20").spec, data=DataSpec(),
                  train=TrainSpec(epochs=2, schedule="cosine", log_every=50))
    result = fit(run, tmp_path / "run", NullSink(), home=tmp_path)
    assert result.status == "completed"
    assert result.last_error < 70.0, f"test error {result.last_error:.1f}% is too close to chance (90%)"


@pytest.mark.skipif(not CIFAR.exists(), reason=f"{CIFAR} is absent")
def test_resnet20_reaches_40_percent_on_cifar10_after_one_epoch(tmp_path):
    data = load_dataset(DataSpec(name="cifar10", path=str(CIFAR)), home=tmp_path)
    run = RunSpec(net=build_model("resnet20").spec, data=DataSpec(name="cifar10", path=str(CIFAR)),
                  train=TrainSpec(epochs=1, log_every=50))
    result = fit(run, tmp_path / "run", NullSink(), dataset=data)
    accuracy = 100.0 - result.last_error
    assert accuracy >= 40.0, f"one epoch of ResNet-20 reached only {accuracy:.1f}% test accuracy"
