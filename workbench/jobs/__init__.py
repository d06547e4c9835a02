"""Background jobs: an executor interface, executors (queue only, local processes, Ray jobs), the worker that
trains runs and runs analyses."""

from workbench.jobs.executor import STALE_AFTER_S, Executor, LocalExecutor, QueueExecutor
from workbench.jobs.ray_executor import RayExecutor
from workbench.jobs.worker import StoreSink, execute_run, run_worker

__all__ = [
    "STALE_AFTER_S", "Executor", "LocalExecutor", "QueueExecutor", "RayExecutor", "StoreSink", "execute_run",
    "run_worker",
]
