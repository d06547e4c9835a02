"""The thread policy of every process the workbench starts: how many torch threads it uses and how they wait.

Measured on a 2-core machine shared with other CPU-bound work (`bench/contention.py`): OpenMP threads
that spin while they wait (libgomp's default) make a training step 3-10x slower as soon as another
process takes a core, because each parallel region waits on a thread that is not scheduled; threads
that sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`) keep the step at its fair share. So every
process gets the passive policy, local workers split the cores between them, and the UI server,
which only reviews networks and draws charts, uses one thread.

Override with `WORKBENCH_THREADS` (threads per worker or analysis process), `WORKBENCH_SERVER_THREADS`
(the UI server), `--threads` on `worker`/`train`, or an explicit `OMP_WAIT_POLICY`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from workbench.errors import WorkbenchError

WORKER_THREADS_ENV = "WORKBENCH_THREADS"
SERVER_THREADS_ENV = "WORKBENCH_SERVER_THREADS"
WAIT_POLICY = "PASSIVE"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _from_env(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise WorkbenchError(f"{name}={text!r}: give a whole number of threads, 1 or more")
    return int(text)


def worker_threads(workers: int = 1) -> int:
    """Threads for each of `workers` training processes: $WORKBENCH_THREADS, else an equal share of the cores."""
    return _from_env(WORKER_THREADS_ENV) or max(1, available_cores() // max(1, workers))


def cli_threads(given: int | None) -> int:
    """Threads for a CLI process: `--threads`, else $WORKBENCH_THREADS, else what the process that started it
    chose ($OMP_NUM_THREADS, set by the app for its workers), else all the cores."""
    if given is not None:
        if given < 1:
            raise WorkbenchError(f"--threads {given}: give a whole number of threads, 1 or more")
        return given
    inherited = os.environ.get("OMP_NUM_THREADS", "").strip()
    # OpenMP also accepts nested lists ("4,2"); only a plain count is taken over.
    return _from_env(WORKER_THREADS_ENV) or (int(inherited) if inherited.isdigit() and int(inherited) else
                                             available_cores())


def server_threads() -> int:
    """Threads for the UI server: $WORKBENCH_SERVER_THREADS, else 1."""
    return _from_env(SERVER_THREADS_ENV) or 1


def child_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process started with `threads` threads (OpenMP reads it before torch starts)."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return env


def use_threads(threads: int) -> None:
    """Apply the policy inside this process: the wait policy (only effective before torch is first
    imported, which is why the CLI and the app call this first) and torch's intra-op thread count."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
