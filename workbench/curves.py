"""Training curves kept in memory and grown incrementally from the store.

A `CurveCache` remembers, per run, the id of the last metric row it has seen; `refresh` asks the
store only for newer rows. A resumed run re-logs the iterations after its checkpoint (the store
deletes the old rows), so new rows at or before the last cached iteration replace the cached tail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CURVE_METRICS = ("error", "loss")


@dataclass
class Series:
    """One metric of one split of one run: iterations, epochs and values in iteration order."""

    iterations: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    epochs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.iterations)

    def extend(self, iterations: Sequence[int], epochs: Sequence[float], values: Sequence[float]) -> None:
        """Append points; cached points at or after the first new iteration are replaced (a resumed run)."""
        if not len(iterations):
            return
        keep = int(np.searchsorted(self.iterations, iterations[0], side="left"))
        self.iterations = np.concatenate([self.iterations[:keep], np.asarray(iterations, dtype=np.int64)])
        self.epochs = np.concatenate([self.epochs[:keep], np.asarray(epochs, dtype=np.float64)])
        self.values = np.concatenate([self.values[:keep], np.asarray(values, dtype=np.float64)])

    def x(self, axis: str) -> np.ndarray:
        """The x values for an "iterations" or "epochs" axis."""
        return self.epochs if axis == "epochs" else self.iterations


SeriesKey = tuple[int, str, str]


class CurveCache:
    """Curves of a set of runs, keyed by (run id, split, metric name), with a store cursor per run."""

    def __init__(self, metrics: Sequence[str] = CURVE_METRICS) -> None:
        self.metrics = tuple(metrics)
        self.cursors: dict[int, int] = {}
        self.series: dict[SeriesKey, Series] = {}

    @property
    def run_ids(self) -> list[int]:
        return list(self.cursors)

    def select(self, run_ids: Iterable[int]) -> bool:
        """Follow exactly these runs (kept runs keep their curves); True if the selection changed."""
        wanted = list(dict.fromkeys(int(run_id) for run_id in run_ids))
        if wanted == list(self.cursors):
            return False
        self.cursors = {run_id: self.cursors.get(run_id, 0) for run_id in wanted}
        self.series = {key: series for key, series in self.series.items() if key[0] in self.cursors}
        return True

    def refresh(self, store) -> bool:
        """Fetch rows newer than the cursors from `store`; True if any arrived."""
        if not self.cursors:
            return False
        batches = store.fetch_metrics_since(self.cursors, names=self.metrics)
        changed = False
        for run_id, batch in batches.items():
            self.cursors[run_id] = batch.cursor
            changed |= self.ingest(run_id, batch.rows)
        return changed

    def ingest(self, run_id: int, rows: Iterable) -> bool:
        """Add metric rows (objects with iteration, epoch, split, name, value) of one run; True if any were kept."""
        grouped: dict[tuple[str, str], tuple[list[int], list[float], list[float]]] = {}
        for row in rows:
            value = row.value
            if value is None or not math.isfinite(value) or row.name not in self.metrics:
                continue
            iterations, epochs, values = grouped.setdefault((row.split, row.name), ([], [], []))
            iterations.append(row.iteration)
            epochs.append(row.epoch if row.epoch is not None else math.nan)
            values.append(value)
        for (split, name), (iterations, epochs, values) in grouped.items():
            self.series.setdefault((run_id, split, name), Series()).extend(iterations, epochs, values)
        return bool(grouped)

    def get(self, run_id: int, split: str, name: str) -> Series | None:
        """The cached series, or None when the run has logged none yet."""
        return self.series.get((run_id, split, name))


@dataclass(frozen=True)
class RunCurves:
    """The curves of one run to draw: a label and its training and test series (either may be missing)."""

    run_id: int
    label: str
    train: Series | None
    test: Series | None


@dataclass(frozen=True)
class DepthPoint:
    """One run of a depth ladder: depth, whether it has shortcuts, its final test error and the paper's number."""

    depth: int
    residual: bool
    test_error: float | None
    reference_error: float | None = None


def curves_of(cache: CurveCache, labels: dict[int, str], metric: str = "error") -> list[RunCurves]:
    """The cached training and test curves of `metric` for each followed run, in selection order."""
    return [
        RunCurves(run_id, labels.get(run_id, f"#{run_id}"), cache.get(run_id, "train", metric),
                  cache.get(run_id, "test", metric))
        for run_id in cache.run_ids
    ]


def ladder_points(runs: Iterable, presets: Iterable) -> list[DepthPoint]:
    """Depth, shortcut use, final test error and the paper's error (from a matching preset) of ladder runs."""
    references = {preset.name: preset.reference_error for preset in presets}
    return [
        DepthPoint(
            depth=int(run.spec["net"]["depth"]),
            residual=run.spec["net"].get("shortcut") != "none",
            test_error=run.last_test_error,
            reference_error=references.get(run.preset),
        )
        for run in runs
    ]
