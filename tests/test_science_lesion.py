"""Lesion study: what deleting a unit computes, restoration, the cached fast path, the stored driver, the job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from storage import open_store
from workbench.data import eval_batches
from workbench.errors import WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.jobs.analyses import LESION
from workbench.models import ResNet
from workbench.science.lesion import (
    ShortcutOnly,
    deleted_units,
    forward_from_unit,
    kept_path,
    lesion_errors,
    lesion_study,
    random_deletions,
    unit_inputs,
)
from workbench.service import Workbench
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import fit
from workbench.weights.loader import FinetuneStart

TINY = {"name": "tiny", "blocks": [2, 2, 2], "widths": [4, 8, 16]}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_model(**overrides) -> ResNet:
    torch.manual_seed(0)
    model = ResNet(NetSpec(**{**TINY, **overrides}))
    # Non-trivial BN statistics, so eval-mode outputs depend on every layer.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def manual_forward(model: ResNet, x: torch.Tensor, deleted: int) -> torch.Tensor:
    """Post-activation net with identity/pad shortcuts, unit `deleted` replaced by relu(shortcut(x)), written out."""
    h = F.relu(model.bn1(model.conv1(x)))
    for index, unit in enumerate(model.units()):
        shortcut = unit.downsample(h) if unit.downsample is not None else h
        if index == deleted:
            h = F.relu(shortcut)
        else:
            branch = unit.bn2(unit.conv2(F.relu(unit.bn1(unit.conv1(h)))))
            h = F.relu(branch + shortcut)
    return model.fc(torch.flatten(model.avgpool(h), 1))


@pytest.mark.parametrize("deleted", [0, 2, 3, 5])
def test_deleting_a_unit_matches_the_forward_written_out(deleted):
    model = tiny_model()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), deleted_units(model, [deleted]):
        lesioned = model(x)
    with torch.no_grad():
        expected = manual_forward(model, x, deleted)
        intact = model(x)
    assert torch.allclose(lesioned, expected, atol=1e-5)
    assert not torch.allclose(lesioned, intact, atol=1e-3)


@pytest.mark.parametrize("deleted", [1, 3, 4])
def test_a_net_differs_only_through_the_deleted_unit(deleted):
    model = tiny_model()
    x = torch.randn(8, 3, 32, 32)
    unit = model.units()[deleted]
    with torch.no_grad():
        unit.bn2.weight.zero_()
        unit.bn2.bias.zero_()
        silenced = model(x)
        with deleted_units(model, [deleted]):
            lesioned = model(x)
    assert torch.allclose(lesioned, silenced, atol=1e-6)


def test_the_model_is_restored_after_a_lesion_even_on_error():
    model = tiny_model()
    units = model.units()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with deleted_units(model, [0, 4]):
            assert isinstance(model.layer1[0], ShortcutOnly)
        with pytest.raises(RuntimeError), deleted_units(model, [1]):
            raise RuntimeError("boom")
        after = model(x)
    assert model.units() == units
    assert torch.equal(before, after)
    with pytest.raises(WorkbenchError), deleted_units(model, [99]):
        pass


def test_kept_paths_for_residual_and_plain_units():
    expected = ["identity", "identity", "pad", "identity", "pad", "identity"]
    assert [kept_path(u) for u in tiny_model().units()] == expected
    assert [kept_path(u) for u in tiny_model(shortcut="B").units()][2] == "projection"
    assert {kept_path(u) for u in tiny_model(shortcut="C").units()} == {"projection"}
    assert [kept_path(u) for u in tiny_model(shortcut="none").units()] == [
        "identity", "identity", "pad", "identity", "pad", "identity"]


def test_a_deleted_plain_unit_is_the_identity_or_subsample_and_pad():
    model = tiny_model(shortcut="none")
    x = torch.rand(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(ShortcutOnly(model.units()[3])(x), x)
        padded = ShortcutOnly(model.units()[4])(x)
    assert padded.shape == (2, 16, 8, 8)
    assert torch.equal(padded[:, 4:12], x[:, :, ::2, ::2])
    assert padded[:, :4].abs().sum() == 0


@pytest.mark.parametrize("overrides", [
    {}, {"shortcut": "B", "placement": "full_preact"}, {"shortcut": "C", "placement": "bn_after_add"},
    {"shortcut": "none"}, {"stochastic_depth": 0.5}, {"unit": "bottleneck", "blocks": [1, 1, 1]},
])
def test_the_cached_fast_path_equals_swapping_modules(overrides):
    model = tiny_model(**overrides)
    x = torch.randn(6, 3, 32, 32)
    units = len(model.units())
    with torch.no_grad():
        inputs, logits = unit_inputs(model, x)
        assert torch.allclose(forward_from_unit(model, inputs[0], 0), logits, atol=1e-5)
        for deleted in (frozenset({0}), frozenset({1, units - 1}), frozenset(range(1, units))):
            with deleted_units(model, deleted):
                expected = model(x)
            start = min(deleted)
            assert torch.allclose(forward_from_unit(model, inputs[start], start, deleted), expected, atol=1e-5)


def test_lesion_errors_match_evaluating_each_lesioned_net():
    model = tiny_model(shortcut="B", placement="full_preact")
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    deletions = [frozenset(), frozenset({2}), frozenset({0, 5})]
    errors = lesion_errors(model, images, labels, deletions, mean=MEAN, std=STD, batch_size=16)
    for deleted, error in zip(deletions, errors, strict=True):
        wrong = 0
        with torch.no_grad(), deleted_units(model, deleted):
            for batch, target in eval_batches(images, labels, 16, mean=MEAN, std=STD, device="cpu"):
                wrong += int((model(batch).argmax(1) != target).sum())
        assert error == pytest.approx(100.0 * wrong / 40)


def test_random_deletions_are_seeded_and_cover_every_k():
    first = random_deletions(6, 4, 3, seed=1)
    assert first == random_deletions(6, 4, 3, seed=1)
    assert first != random_deletions(6, 4, 3, seed=2)
    assert [k for k, _ in first] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert all(len(deleted) == k for k, deleted in first)
    assert len({deleted for k, deleted in first if k == 1}) == 3


def test_lesion_study_result_layout():
    model = tiny_model()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    result = lesion_study(model, images, labels, mean=MEAN, std=STD, draws=2, max_k=99, seed=0)
    assert result["units"] == 6 and result["residual"] and result["images"] == 20
    assert [entry["unit"] for entry in result["single"]] == [1, 2, 3, 4, 5, 6]
    assert [entry["k"] for entry in result["random"]] == [1, 2, 3, 4, 5, 6]
    assert all(len(entry["errors"]) == 2 for entry in result["random"])
    assert result["random"][-1]["deleted"] == [[1, 2, 3, 4, 5, 6]] * 2
    assert 0.0 <= result["baseline_error"] <= 100.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    spec = RunSpec(net=NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16]),
                   data=DataSpec(synthetic_train=256, synthetic_test=64),
                   train=TrainSpec(epochs=1, batch_size=64, precision="fp32", log_every=2))
    with open_store(home) as store:
        run_id = store.create_run(spec, name="tiny")
        fit(spec, store.run_dir(run_id), home=home)
    return home, run_id


def test_a_foreground_lesion_study_is_stored_as_a_completed_job(trained_run):
    home, run_id = trained_run
    with open_store(home) as store:
        analysis = Workbench(store, QueueExecutor(store)).run_analysis(
            run_id, LESION, {"draws": 2, "max_k": 2, "limit_images": 32})
        stored = store.list_analyses(run_id, "lesion")
    assert analysis.status == "completed" and analysis.id in [a.id for a in stored]
    result = analysis.result
    assert result["run"]["checkpoint"] == "best.pt" and analysis.params["limit_images"] == 32
    assert result["images"] == 32 and len(result["single"]) == 3


def test_a_lesion_study_without_a_checkpoint_fails_with_a_message(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run({"net": TINY}, name="untrained")
        analysis = Workbench(store, QueueExecutor(store)).run_analysis(run_id, LESION)
    assert analysis.status == "failed" and "no checkpoint" in analysis.error_message


def test_a_lesion_of_a_fine_tune_with_a_hidden_layer_head_loads_its_head(trained_run, tmp_path):
    home, source_id = trained_run
    source = home / "runs" / str(source_id) / "checkpoints" / "best.pt"
    spec = RunSpec(net=NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16]),
                   data=DataSpec(synthetic_train=128, synthetic_test=64),
                   train=TrainSpec(iterations=2, batch_size=64, precision="fp32", log_every=1),
                   init_from=str(source), finetune="head", head_hidden=16)
    with open_store(home) as store:
        run_id = store.create_run(spec, name="tiny head-16")
        fit(spec, store.run_dir(run_id), home=home, model_factory=FinetuneStart(spec))
        analysis = Workbench(store, QueueExecutor(store)).run_analysis(run_id, LESION, {"draws": 1, "max_k": 1})
    assert analysis.status == "completed", analysis.error_message
    assert len(analysis.result["single"]) == 3


def test_a_queued_lesion_study_is_run_by_a_worker_process_and_listed(trained_run):
    home, run_id = trained_run
    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(project)}
    command = [sys.executable, "-m", "workbench", "--home", str(home)]
    queued = subprocess.run([*command, "lesion", str(run_id), "--queue", "--draws", "1", "--max-k", "1",
                             "--limit-images", "16"], env=env, capture_output=True, text=True, timeout=120)
    assert queued.returncode == 0, queued.stderr
    analysis_id = int(queued.stdout.split()[1])
    worker = subprocess.run([*command, "worker", "--exit-when-idle"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert worker.returncode == 0, worker.stderr
    listed = subprocess.run([*command, "analyses", "--json"], env=env, capture_output=True, text=True, timeout=120)
    job = next(entry for entry in json.loads(listed.stdout) if entry["id"] == analysis_id)
    assert (job["kind"], job["run_id"], job["status"]) == ("lesion", run_id, "completed")
    with open_store(home) as store:
        assert store.get_analysis(analysis_id).result["random"][0]["k"] == 1
