"""The thread policy of the processes the workbench starts: real processes, their real environments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import open_store
from workbench.jobs import LocalExecutor
from workbench.paths import database_url
from workbench.threads import available_cores

ROOT = Path(__file__).resolve().parents[1]
ENV = {key: value for key, value in os.environ.items()
       if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "WORKBENCH_THREADS", "WORKBENCH_SERVER_THREADS")}


def environment_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def worker_environments(home: Path) -> list[dict[str, str]]:
    """The environments an app's LocalExecutor gives its two workers."""
    with open_store(home) as store:
        executor = LocalExecutor(store, db_url=database_url(home), workers=2)
        executor.start()
        try:
            return [environment_of(pid) for pid in executor.worker_pids().values()]
        finally:
            executor.shutdown()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a process's environment from /proc")
def test_local_workers_share_the_cores_and_wait_passively(tmp_path, monkeypatch):
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "WORKBENCH_THREADS"):
        monkeypatch.delenv(key, raising=False)
    environments = worker_environments(tmp_path)
    share = str(max(1, available_cores() // 2))
    assert [(env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]) for env in environments] == [(share, "PASSIVE")] * 2


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a process's environment from /proc")
def test_an_explicit_wait_policy_and_thread_count_win(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("WORKBENCH_THREADS", "3")
    environments = worker_environments(tmp_path)
    assert {(env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]) for env in environments} == {("3", "ACTIVE")}


def test_the_ui_server_uses_one_thread_unless_told_otherwise():
    check = "import app, os, torch; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
    assert python(check) == "1 PASSIVE"
    assert python(check, WORKBENCH_SERVER_THREADS="2") == "2 PASSIVE"


def test_train_threads_option_is_used_and_recorded(tmp_path):
    command = [sys.executable, "-m", "workbench", "--home", str(tmp_path), "train", "--preset", "resnet20",
               "--dataset", "synthetic", "--iterations", "2", "--batch-size", "16", "--precision", "fp32",
               "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    with open_store(tmp_path) as store:
        (run,) = store.list_runs()
    assert run.device == "cpu (fp32, 1 thread)"


def test_a_bad_thread_count_is_refused_with_a_message(tmp_path):
    done = subprocess.run([sys.executable, "-m", "workbench", "--home", str(tmp_path), "runs"], cwd=ROOT,
                          env={**ENV, "PYTHONPATH": str(ROOT), "WORKBENCH_THREADS": "many"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "WORKBENCH_THREADS='many': give a whole number of threads" in done.stderr
