"""The CLI as users run it (real subprocesses): options around the sub-command, quiet output, bad input
answered with one line and exit code 2, nothing queued, and a `workbench` command from `pip install -e .`."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from PIL import Image

from storage import open_store

ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "workbench")
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def workbench(*args: str, cwd: Path = ROOT, command: tuple[str, ...] = CLI):
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=CLI_ENV)


def workbench_side_by_side(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several `workbench` commands run at once (each is mostly interpreter start-up), in the order given."""
    started = [subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=CLI_ENV) for args in commands]
    results = []
    for args, process in zip(commands, started, strict=True):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "README.txt").write_text("not an archive\n")
    for folder in (root / "flat", root / "pets" / "cat", root / "pets" / "dog"):
        folder.mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (8, 8)).save(folder / f"{index}.png")
    return root


def queued(home: Path) -> list:
    with open_store(home) as store:
        return store.list_runs()


def test_global_options_go_before_or_after_the_sub_command(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert workbench("submit", "--preset", "resnet20", "--home", str(first)).stdout.strip() == "1"
    after = workbench("runs", "--json", "--home", str(first))
    before = workbench("--home", str(first), "runs", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout) and len(json.loads(after.stdout)) == 1
    overridden = workbench("--home", str(first), "runs", "--json", "--home", str(second))
    assert json.loads(overridden.stdout) == []


def test_quiet_by_default_and_debug_logs_with_v(tmp_path):
    quiet = workbench("runs", "--home", str(tmp_path))
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose = workbench("runs", "--home", str(tmp_path), "-v")
    assert verbose.returncode == 0 and "INFO alembic" in verbose.stderr


BAD_SUBMITS = [
    (["--epochs", "1e30"], "epochs must be above 0 and at most 10,000"),
    (["--iterations", str(10**19)], "iterations must be between 1 and 10,000,000"),
    (["--seed", str(2**70)], "seed must be between 0 and 9,223,372,036,854,775,807"),
    (["--batch-size", str(10**6)], "batch_size must be between 1 and 65,536"),
    (["--validation-size", "20000"], "validation_size 20,000 leaves no training images"),
    (["--classes", "999"], "asked for the first 999 classes but the synthetic dataset has only 10"),
    (["--dataset", "cifar10", "--data-dir", "{data}/README.txt"], "README.txt is not a tar archive"),
    (["--dataset", "folder", "--data-dir", "{data}/flat"], "has no class sub-folders"),
    (["--dataset", "folder", "--data-dir", "{data}/pets", "--classes", "cat, wolf"], "unknown class name(s) wolf"),
]


def test_each_bad_submit_is_one_message_and_queues_nothing(tmp_path, data):
    homes = [tmp_path / f"home{index}" for index in range(len(BAD_SUBMITS))]
    results = workbench_side_by_side(*(
        ("submit", "--preset", "resnet20", *(flag.format(data=data) for flag in flags), "--home", str(home),
         "--data-root", str(data))
        for (flags, _), home in zip(BAD_SUBMITS, homes, strict=True)))
    for (flags, expected), home, result in zip(BAD_SUBMITS, homes, results, strict=True):
        assert result.returncode == 2, (flags, result.stderr)
        assert expected in result.stderr and result.stderr.startswith("error: "), (flags, result.stderr)
        assert "Traceback" not in result.stderr, flags
        assert queued(home) == [], flags


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    result = workbench("submit", "--preset", "resnet20", "--device", "cuda", "--home", str(tmp_path))
    assert result.returncode == 2 and "device: cuda was asked for" in result.stderr
    assert queued(tmp_path) == []


def test_a_run_id_beyond_64_bits_is_a_message(tmp_path):
    commands = [("cancel", str(2**70)), ("resume", str(2**70)),
                ("export", str(2**70), "--format", "bundle", "-o", str(tmp_path / "x.zip"))]
    results = workbench_side_by_side(*((*args, "--home", str(tmp_path / args[0])) for args in commands))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 2 and "run id must be a whole number from 1 to" in result.stderr, args[0]


def test_a_giant_network_is_refused_without_being_built(tmp_path):
    spec = tmp_path / "giant.yaml"
    spec.write_text("depth: 30002\n")
    result = workbench("summary", str(spec), "--home", str(tmp_path))
    assert result.returncode == 2 and "at most 1,000 residual units" in result.stderr
    spec.write_text("blocks: [10, 10, 10]\nwidths: [4096, 4096, 4096]\n")
    result = workbench("summary", str(spec), "--json", "--home", str(tmp_path))
    assert result.returncode == 0 and json.loads(result.stdout)["params"] == 9_060_347_914


@pytest.mark.slow
def test_pip_install_e_gives_a_workbench_command_that_works_from_any_folder(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The new venv borrows the packages (pip, setuptools, torch...) of the one running the tests.
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "-e", str(ROOT)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = workbench("presets", "--home", str(tmp_path / "home"), cwd=elsewhere,
                       command=(str(venv / "bin" / "workbench"),))
    assert result.returncode == 0 and "resnet20" in result.stdout and result.stderr == ""
