"""The thread policy of every process the workbench starts: how many torch threads it uses and how they wait.

Measured on a 2-core machine shared with other CPU-bound work (`bench/contention.py`): OpenMP threads
that spin while they wait (libgomp's default) make a training step 3-10x slower as soon as another
process takes a core, because each parallel region waits on a thread that is not scheduled; threads
that sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`) keep the step at its fair share. So every
process gets the passive policy, local workers split the cores between them, and the UI server,
which only reviews networks and draws charts, uses one thread.

Passive waits do not stop a step with two or more threads from waiting on a thread that is not scheduled,
so a training process also watches its own step time (`ThreadGovernor`): when its steps slow down by half
or more it trains on one thread, and now and then tries its full count again.

Override with `WORKBENCH_THREADS` (threads per worker or analysis process), `WORKBENCH_SERVER_THREADS`
(the UI server), `--threads` on `worker`/`train`, an explicit `OMP_WAIT_POLICY`, or
`WORKBENCH_ADAPT_THREADS=0` (keep the thread count whatever the step time).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
from collections.abc import Callable, Mapping

from workbench.errors import WorkbenchError

WORKER_THREADS_ENV = "WORKBENCH_THREADS"
SERVER_THREADS_ENV = "WORKBENCH_SERVER_THREADS"
ADAPT_THREADS_ENV = "WORKBENCH_ADAPT_THREADS"
WAIT_POLICY = "PASSIVE"

logger = logging.getLogger(__name__)


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


def _set_torch_threads(threads: int) -> None:
    sys.modules["torch"].set_num_threads(threads)


class ThreadGovernor:
    """Trains on one thread while another process holds a core, on the full count otherwise.

    Fed the duration of every training step; judges the median of each `window` steps. At the full count, a
    median `slowdown` times the fastest seen so far drops the process to one thread. After `retry_after`
    windows on one thread it tries the full count for one window and keeps it when that is at least 10%
    faster; a failed try doubles the wait before the next (up to 8 times).
    """

    def __init__(self, threads: int, *, window: int = 20, slowdown: float = 1.5, retry_after: int = 15,
                 apply: Callable[[int], None] = _set_torch_threads) -> None:
        self.full = self.current = max(1, threads)
        self.window, self.slowdown, self.retry_after = window, slowdown, retry_after
        self._apply = apply
        self._steps: list[float] = []
        self._fastest_full: float | None = None
        self._last_single: float | None = None
        self._windows_single = 0
        self._backoff = 1
        self._trying_full = False

    @classmethod
    def for_this_process(cls, threads: int) -> ThreadGovernor | None:
        """A governor for a process training on `threads` CPU threads, or None where there is nothing to adapt
        (one thread, or $WORKBENCH_ADAPT_THREADS=0)."""
        if threads < 2 or os.environ.get(ADAPT_THREADS_ENV, "1").strip() == "0":
            return None
        return cls(threads)

    def observe(self, seconds: float) -> None:
        """Record one step's duration; may change the thread count for the steps that follow."""
        self._steps.append(seconds)
        if len(self._steps) >= self.window:
            median = statistics.median(self._steps)
            self._steps.clear()
            self._judge(median)

    def _judge(self, median: float) -> None:
        if self._trying_full:
            self._trying_full = False
            if self._last_single is not None and median < 0.9 * self._last_single:
                logger.info("back to %d threads: %.0f ms per step against %.0f ms on one",
                            self.full, 1e3 * median, 1e3 * self._last_single)
                self._fastest_full, self._backoff = median, 1
            else:
                self._backoff = min(8, self._backoff * 2)
                self._switch(1)
            return
        if self.current == self.full:
            if self._fastest_full is not None and median > self.slowdown * self._fastest_full:
                logger.info("steps slowed from %.0f ms to %.0f ms (another process is using the cores): "
                            "training on 1 thread", 1e3 * self._fastest_full, 1e3 * median)
                self._switch(1)
            else:
                self._fastest_full = min(median, self._fastest_full or median)
            return
        self._last_single = median
        self._windows_single += 1
        if self._windows_single >= self.retry_after * self._backoff:
            self._trying_full = True
            self._switch(self.full)

    def _switch(self, threads: int) -> None:
        self.current = threads
        self._windows_single = 0
        self._apply(threads)
