"""Training curves kept in memory and grown incrementally from the store.

A `CurveCache` remembers, per run, the id of the last metric row it has seen; `refresh` asks the
store only for newer rows. A resumed run re-logs the iterations after its checkpoint (the store
deletes the old rows), so new rows at or before the last cached iteration replace the cached tail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from storage.records import METRIC_FIELDS
from workbench.jobs.system_metrics import SYSTEM_METRICS, SYSTEM_SPLIT
from workbench.science.degradation import CurveRun
from workbench.training.loop import GRAD_NORM_PREFIX
from workbench.viz.series import RunCurves, Series

CURVE_METRICS = ("error", "loss")
# Families name stage N layerN (ResNets, WRN, ResNeXt, RiR), denseblockN (DenseNet) or blockN (FractalNet).
STAGE_PREFIXES = ("layer", "denseblock", "block")
MAX_STAGES = 5
GRAD_NORM_METRICS = tuple(f"grad norm (stage {stage})" for stage in range(1, MAX_STAGES + 1))
CHART_METRICS = (*CURVE_METRICS, "lr", "images_per_s", *GRAD_NORM_METRICS, *SYSTEM_METRICS)


def stored_names(metric: str) -> tuple[str, ...]:
    """The stored metric names a chart metric reads: a stage's gradient norm is stored under its family's stage name
    (`grad_norm/layer2`, `grad_norm/denseblock2`, ...), so one choice compares stage 2 of any networks."""
    if metric in GRAD_NORM_METRICS:
        stage = GRAD_NORM_METRICS.index(metric) + 1
        return tuple(f"{GRAD_NORM_PREFIX}{prefix}{stage}" for prefix in STAGE_PREFIXES)
    return (metric,)


GRAD_NORM_NAMES = tuple(name for metric in GRAD_NORM_METRICS for name in stored_names(metric))


SeriesKey = tuple[int, str, str]


class CurveCache:
    """Curves of a set of runs, keyed by (run id, split, stored metric name), with a store cursor per run."""

    def __init__(self, metrics: Sequence[str] = CURVE_METRICS) -> None:
        self.metrics = tuple(name for metric in metrics for name in stored_names(metric))
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

    def ingest(self, run_id: int, rows: Sequence) -> bool:
        """Add metric rows of one run (tuples with the fields of storage.METRIC_FIELDS); True if any were kept."""
        if not len(rows):
            return False
        columns = dict(zip(METRIC_FIELDS, zip(*rows, strict=True), strict=True))
        values = np.asarray(columns["value"], dtype=np.float64)
        splits = np.asarray(columns["split"])
        names = np.asarray(columns["name"])
        usable = np.isfinite(values) & np.isin(names, self.metrics)
        if not usable.any():
            return False
        iterations = np.asarray(columns["iteration"], dtype=np.int64)
        epochs = np.asarray(columns["epoch"], dtype=np.float64)
        wall_times = np.asarray(columns["wall_time"], dtype=np.float64)
        for split in np.unique(splits[usable]):
            for name in np.unique(names[usable & (splits == split)]):
                chosen = usable & (splits == split) & (names == name)
                series = self.series.setdefault((run_id, str(split), str(name)), Series())
                series.extend(iterations[chosen], epochs[chosen], values[chosen], wall_times[chosen])
        return True

    def get(self, run_id: int, split: str, metric: str) -> Series | None:
        """The cached series of a chart metric, or None when the run has logged none yet."""
        return next((self.series[key] for name in stored_names(metric)
                     if (key := (run_id, split, name)) in self.series), None)


def curves_of(cache: CurveCache, labels: dict[int, str], metric: str = "error") -> list[RunCurves]:
    """The cached training and test curves of `metric` for each followed run, in selection order (a system
    metric's samples take the training curve's place)."""
    first = SYSTEM_SPLIT if metric in SYSTEM_METRICS else "train"
    return [
        RunCurves(run_id, labels.get(run_id, f"#{run_id}"), cache.get(run_id, first, metric),
                  cache.get(run_id, "test", metric), train_label=first)
        for run_id in cache.run_ids
    ]


def ladder_curve_runs(cache: CurveCache, members: Mapping[int, tuple[str, int, bool]]) -> list[CurveRun]:
    """The cached error curves of ladder runs, {run id: (name, depth, residual)}, for the degradation check."""
    runs = []
    for run_id, (name, depth, residual) in members.items():
        train, test = cache.get(run_id, "train", "error"), cache.get(run_id, "test", "error")
        runs.append(CurveRun(name=name, depth=depth, residual=residual, train=train.points() if train else [],
                             test=test.points() if test else []))
    return runs
