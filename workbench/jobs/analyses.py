"""Analyses as jobs: what a worker does with a claimed analysis of each kind, and how it reports.

Each kind is a function `(store, run, params, report) -> result`; `report(fraction)` records progress
and raises AnalysisCancelled when the user cancelled. The science itself is in `workbench.science`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from storage import AnalysisRecord, RunRecord, RunStore
from storage.status import CANCELLED, COMPLETED, FAILED
from workbench.data import eval_batches, load_dataset
from workbench.errors import IllegalTransition, WorkbenchError
from workbench.paths import RunFolder
from workbench.science.fractal import check_fractal, column_errors
from workbench.science.gradient_flow import initial_gradient_profile
from workbench.science.lesion import DEFAULT_DRAWS, DEFAULT_MAX_K, check_lesionable, lesion_study, limit_test_split
from workbench.spec import RunSpec
from workbench.training.loop import (
    adapt_net_to_data,
    precision_name,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)
from workbench.weights.loader import load_model_file, run_spec_of

logger = logging.getLogger(__name__)

LESION = "lesion"
GRADIENT_PROFILE = "gradient_profile"
FRACTAL_COLUMNS = "fractal_columns"
HEARTBEAT_INTERVAL_S = 1.0

Report = Callable[[float], None]


class AnalysisCancelled(WorkbenchError):
    """The user cancelled the analysis while it ran."""


def lesion_defaults() -> dict[str, Any]:
    return {"draws": DEFAULT_DRAWS, "max_k": DEFAULT_MAX_K, "limit_images": None, "seed": 0, "checkpoint": "best",
            "device": "auto"}


def _checkpoint_and_test_split(
    store: RunStore, run: RunRecord, options: dict[str, Any], allowed_roots: list[Path] | None,
    check: Callable[[Any], None],
) -> tuple[Path, Any, Any, torch.Tensor, torch.Tensor]:
    """(checkpoint path, model, run spec, test images, labels) of a run's `options["checkpoint"]`; `check` refuses
    the model before its data is loaded."""
    path = RunFolder.of(store.home, run.id).existing_checkpoint(options["checkpoint"])
    if path is None:
        raise WorkbenchError(f"run {run.id} has no checkpoint yet; train it (or let it reach its first evaluation) "
                             "first")
    model = load_model_file(path)
    check(model)
    spec = run_spec_of(model)
    dataset = load_dataset(spec.data, home=store.home, allowed_roots=allowed_roots)
    images, labels = limit_test_split(dataset.test_images, dataset.test_labels, options["limit_images"],
                                      options["seed"])
    return path, model, spec, images, labels


def run_lesion(
    store: RunStore, run: RunRecord, params: dict[str, Any], report: Report, allowed_roots: list[Path] | None,
) -> dict[str, Any]:
    """Lesion a run's checkpoint on its test split (Veit et al. 2016)."""
    options = {**lesion_defaults(), **params}
    path, model, spec, images, labels = _checkpoint_and_test_split(store, run, options, allowed_roots,
                                                                   check_lesionable)
    target = resolve_device(options["device"])
    autocast_dtype = resolve_precision(spec.train.precision, target)
    channels_last = resolve_channels_last(spec.train.channels_last, target, autocast_dtype)
    model = model.to(target)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    result = lesion_study(
        model, images, labels, mean=model.metadata["mean"], std=model.metadata["std"], draws=options["draws"],
        max_k=options["max_k"], seed=options["seed"], device=target, autocast_dtype=autocast_dtype,
        channels_last=channels_last, on_progress=report,
    )
    result["run"] = {
        "seconds": round(time.perf_counter() - start, 1), "checkpoint": path.name,
        "max_k": result["random"][-1]["k"] if result["random"] else 0, "device": str(target),
        "precision": precision_name(autocast_dtype),
    }
    return result


def run_fractal_columns(
    store: RunStore, run: RunRecord, params: dict[str, Any], report: Report, allowed_roots: list[Path] | None,
) -> dict[str, Any]:
    """Test error of a trained FractalNet with all columns joined and with each column alone."""
    options = {"checkpoint": "best", "limit_images": None, "seed": 0, "device": "auto", **params}
    path, model, _, images, labels = _checkpoint_and_test_split(store, run, options, allowed_roots, check_fractal)
    target = resolve_device(options["device"])
    result = column_errors(model.to(target), images, labels, mean=model.metadata["mean"], std=model.metadata["std"],
                           device=target, on_progress=report)
    return {**result, "checkpoint": path.name}


def run_gradient_profile(
    store: RunStore, run: RunRecord, params: dict[str, Any], report: Report, allowed_roots: list[Path] | None,
) -> dict[str, Any]:
    """Per-unit input gradient norms of the run's network at initialization (its seed, as `fit` does),
    on the first `batch_size` training images, normalised without augmentation."""
    spec = RunSpec.model_validate(run.spec)
    batch_size = int(params.get("batch_size", 128))
    dataset = load_dataset(spec.data, home=store.home, allowed_roots=allowed_roots)
    report(0.5)
    images, labels = next(eval_batches(
        dataset.train_images[:batch_size], dataset.train_labels[:batch_size], batch_size,
        mean=dataset.info.mean, std=dataset.info.std, device="cpu",
    ))
    net = adapt_net_to_data(spec.net, dataset)
    return {"profile": initial_gradient_profile(net, images, labels, seed=spec.train.seed), "batch_size": batch_size}


ANALYSIS_KINDS: dict[str, Callable[..., dict[str, Any]]] = {
    LESION: run_lesion,
    GRADIENT_PROFILE: run_gradient_profile,
    FRACTAL_COLUMNS: run_fractal_columns,
}


class _AnalysisHeartbeat:
    """Heartbeats a running analysis every second with its latest progress, and notices a cancel."""

    def __init__(self, store: RunStore, analysis_id: int, worker_id: str, shutdown: threading.Event) -> None:
        self.store, self.analysis_id, self.worker_id, self.shutdown = store, analysis_id, worker_id, shutdown
        self.progress = 0.0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"analysis-{analysis_id}", daemon=True)

    def _loop(self) -> None:
        while not self._closed.wait(HEARTBEAT_INTERVAL_S):
            try:
                if self.store.analysis_heartbeat(self.analysis_id, self.worker_id, self.progress):
                    self.cancelled.set()
            except IllegalTransition:
                self.lost.set()
            except Exception:
                logger.exception("heartbeat of analysis %d failed; retrying", self.analysis_id)

    def report(self, fraction: float) -> None:
        self.progress = fraction
        if self.cancelled.is_set() or self.lost.is_set() or self.shutdown.is_set():
            raise AnalysisCancelled(f"analysis {self.analysis_id} was cancelled")

    def __enter__(self) -> _AnalysisHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._thread.join()


def execute_analysis(
    store: RunStore, analysis: AnalysisRecord, worker_id: str, *, allowed_roots: list[Path] | None = None,
    shutdown: threading.Event | None = None,
) -> str:
    """Run one claimed analysis to its final status; never raises for the analysis's own errors.

    An analysis stopped because its worker is shutting down goes back to the queue.
    """
    shutdown = shutdown or threading.Event()
    heartbeat = _AnalysisHeartbeat(store, analysis.id, worker_id, shutdown)
    try:
        run = store.get_run(analysis.run_id)
        if analysis.kind not in ANALYSIS_KINDS:
            raise WorkbenchError(f"analysis kind {analysis.kind!r} is unknown; known: {', '.join(ANALYSIS_KINDS)}")
        with heartbeat:
            result = ANALYSIS_KINDS[analysis.kind](store, run, dict(analysis.params), heartbeat.report, allowed_roots)
    except AnalysisCancelled:
        if heartbeat.lost.is_set():
            return "lost"
        if shutdown.is_set() and not heartbeat.cancelled.is_set():
            store.release_analysis(analysis.id, worker_id)
            return "requeued"
        store.finish_analysis(analysis.id, worker_id, CANCELLED)
        return CANCELLED
    except Exception as exc:
        message = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        logger.error("analysis %d (%s of run %d) failed: %s", analysis.id, analysis.kind, analysis.run_id, message)
        try:
            store.finish_analysis(analysis.id, worker_id, FAILED, error_message=message,
                                  traceback=traceback.format_exc())
        except IllegalTransition:
            return "lost"
        return FAILED
    store.finish_analysis(analysis.id, worker_id, COMPLETED, result=result)
    logger.info("analysis %d (%s of run %d) completed", analysis.id, analysis.kind, analysis.run_id)
    return COMPLETED
