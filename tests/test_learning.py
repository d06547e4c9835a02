"""Learning is real: the engine trains ResNet-20 well above chance on the embedded dataset.

Slow (a couple of CPU minutes on 2 cores); CI runs it with the rest of the suite. The CIFAR-10
check (40% after one epoch) is `bench/learning.py`.
"""

import pytest

from workbench import build_model
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.training import MemorySink, fit

pytestmark = pytest.mark.slow


def test_resnet20_learns_the_embedded_dataset_well_above_chance(tmp_path):
    run = RunSpec(net=build_model("resnet20").spec, data=DataSpec(),
                  train=TrainSpec(epochs=2, schedule="cosine", log_every=50))
    result = fit(run, tmp_path / "run", MemorySink(), home=tmp_path)
    assert result.status == "completed"
    assert result.last_error < 70.0, f"test error {result.last_error:.1f}% is too close to chance (90%)"
