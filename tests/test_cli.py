"""The headless CLI as a user runs it: a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench", "--home", str(home), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_presets_lists_every_preset(tmp_path):
    result = run_cli("presets", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"resnet20", "plain56", "preact-resnet1001", "resnet152"} <= names


def test_summary_json_has_params_macs_depth(tmp_path):
    result = run_cli("summary", "resnet20", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["params"], summary["macs"], summary["depth"]) == (269_722, 40_551_040, 20)


def test_summary_of_a_spec_file(tmp_path):
    spec_file = tmp_path / "net.yaml"
    spec_file.write_text("family: cifar\nunit: bottleneck\ndepth: 164\nplacement: full_preact\nshortcut: B\n")
    result = run_cli("summary", str(spec_file), "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 1_703_258


def test_bad_input_gives_a_message_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: 21\n")
    result = run_cli("summary", str(bad), home=tmp_path)
    assert result.returncode == 2
    assert "6n+2" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("summary", "resnet21", home=tmp_path)
    assert result.returncode == 2 and "Valid presets" in result.stderr


CIFAR = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


@pytest.mark.skipif(not CIFAR.exists(), reason=f"needs CIFAR-10 at {CIFAR} (../shared/data)")
def test_train_reads_a_cifar_archive_anywhere_unless_data_roots_are_given(tmp_path):
    common = ("--dataset", "cifar10", "--data-dir", str(CIFAR), "--per-class-cap", "10", "--iterations", "1",
              "--batch-size", "16", "--precision", "fp32")
    trained = run_cli("train", "--preset", "resnet20", *common, home=tmp_path)
    assert trained.returncode == 0, trained.stderr
    refused = run_cli("--data-root", str(tmp_path), "submit", "--preset", "resnet20", *common, home=tmp_path)
    assert refused.returncode == 2 and "outside the allowed data roots" in refused.stderr


def test_submit_with_seeds_queues_a_seed_group_with_gradient_norms(tmp_path):
    from storage import open_store

    result = run_cli("submit", "--preset", "resnet20", "--iterations", "10", "--seed", "3", "--seeds", "3",
                     "--grad-norm-every", "7", home=tmp_path)
    assert result.returncode == 0, result.stderr
    run_ids = [int(word) for word in result.stdout.split()]
    with open_store(tmp_path) as store:
        runs = [store.get_run(run_id) for run_id in run_ids]
    assert [run.spec["train"]["seed"] for run in runs] == [3, 4, 5]
    assert {run.spec["train"]["grad_norm_every"] for run in runs} == {7}
    assert {run.group_kind for run in runs} == {"seeds"} and len({run.group_name for run in runs}) == 1
