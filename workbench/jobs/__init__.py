"""Background jobs: an executor interface, a local process executor, and the worker that runs training."""

from workbench.jobs.executor import Executor, LocalExecutor
from workbench.jobs.worker import StoreSink, execute_run, run_worker

__all__ = ["Executor", "LocalExecutor", "StoreSink", "execute_run", "run_worker"]
