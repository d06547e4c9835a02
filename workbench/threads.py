"""The thread policy of every process the workbench starts: how many torch threads it uses and how they wait.

Measured on a 2-core machine shared with other CPU-bound work (`bench/contention.py`): OpenMP threads
that spin while they wait (libgomp's default) make a training step 3-10x slower as soon as another
process takes a core, because each parallel region waits on a thread that is not scheduled; threads
that sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`) keep the step at its fair share. So every
process gets the passive policy, local workers split the cores between them, and the UI server,
which only reviews networks and draws charts, uses one thread.

Passive waits do not stop a step with two or more threads from waiting on a thread that is not scheduled,
so a training process also watches its own step time and the load of other processes (`ThreadGovernor`):
when the machine is shared it tries one thread, keeps it while that is faster, and now and then tries its
full count again.

Override with `WORKBENCH_THREADS` (threads per worker or analysis process), `WORKBENCH_SERVER_THREADS`
(the UI server), `--threads` on `worker`/`train`, an explicit `OMP_WAIT_POLICY`, or
`WORKBENCH_ADAPT_THREADS=0` (keep the thread count whatever the step time).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import psutil

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


class OtherProcessesLoad:
    """Cores that processes other than this one kept busy since the previous call (0 on the first)."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def __call__(self) -> float:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        now = (time.monotonic(), busy, time.process_time())
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return 0.0
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])


class ThreadGovernor:
    """Trains on whichever of the full thread count and one thread is faster while the machine is shared.

    Fed the duration of every training step; judges the median of each `window` steps. At the full count it
    tries one thread for a window when its steps slowed `slowdown` times from the fastest seen, or when other
    processes kept at least `busy_cores` cores busy (a machine busy from the start shows no slowdown). On one
    thread it tries the full count every `retry_after` windows. A try is kept when it is at least 10% faster;
    each lost try doubles the wait before the next, up to 8 times `retry_after` windows.
    """

    def __init__(self, threads: int, *, window: int = 10, slowdown: float = 1.5, retry_after: int = 15,
                 busy_cores: float = 0.5, apply: Callable[[int], None] = _set_torch_threads,
                 others: Callable[[], float] | None = None) -> None:
        self.full = self.current = max(1, threads)
        self.window, self.slowdown, self.retry_after, self.busy_cores = window, slowdown, retry_after, busy_cores
        self._apply = apply
        self._others = others or OtherProcessesLoad()
        self._others()
        self._steps: list[float] = []
        self._fastest_full: float | None = None
        self._settled: float | None = None
        self._trying = False
        self._windows = 0
        self._backoff = 1

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
            self._judge(median, self._others())

    def _judge(self, median: float, others: float) -> None:
        if self._trying:
            self._judge_try(median)
            return
        self._windows += 1
        self._settled = median
        waited = self._windows >= self.retry_after * self._backoff
        if self.current == self.full:
            slowed = self._fastest_full is not None and median > self.slowdown * self._fastest_full
            self._fastest_full = min(median, self._fastest_full or median)
            if (slowed or others >= self.busy_cores) and (waited or self._backoff == 1):
                reason = (f"steps slowed from {1e3 * self._fastest_full:.0f} ms to {1e3 * median:.0f} ms" if slowed
                          else f"other processes keep {others:.1f} cores busy")
                logger.info("%s: trying 1 thread", reason)
                self._try(1)
        elif waited:
            self._try(self.full)

    def _judge_try(self, median: float) -> None:
        self._trying = False
        tried, before = self.current, self._settled
        if before is not None and median < 0.9 * before:
            logger.info("training on %d thread%s: %.0f ms per step against %.0f ms", tried, "s" if tried > 1 else "",
                        1e3 * median, 1e3 * before)
            self._settled, self._backoff = median, 1
            if tried == self.full:
                self._fastest_full = median
        else:
            self._backoff = min(8, self._backoff * 2)
            self._switch(self.full if tried == 1 else 1)

    def _try(self, threads: int) -> None:
        self._trying = True
        self._switch(threads)

    def _switch(self, threads: int) -> None:
        self.current = threads
        self._windows = 0
        self._apply(threads)
