"""Stored curves written out for other tools: one long CSV, or TensorBoard event files (a folder per run).

The CSV has one row per stored value: run, run_name, metric, split, iteration, epoch, wall_time
(Unix seconds), value (empty where training produced NaN). In TensorBoard each run's values are
scalars tagged "<split>/<metric>" at their iteration and wall time, so its wall-time axis matches ours.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from storage import RunRecord, RunStore
from workbench.errors import WorkbenchError

CSV_COLUMNS = ("run", "run_name", "metric", "split", "iteration", "epoch", "wall_time", "value")


def _runs_and_rows(store: RunStore, run_ids: Sequence[int], names: Iterable[str] | None):
    if not run_ids:
        raise WorkbenchError("no runs to export: pick runs (or a group) first")
    runs = [store.get_run(run_id) for run_id in run_ids]
    batches = store.fetch_metrics_since({run.id: 0 for run in runs}, names=list(names) if names else None)
    return [(run, batches[run.id].rows if run.id in batches else []) for run in runs]


def run_folder_name(run: RunRecord) -> str:
    """A TensorBoard run name that says which run it is: "run12-resnet20"."""
    return f"run{run.id}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-") or "run")


def write_metrics_csv(store: RunStore, run_ids: Sequence[int], path: Path,
                      names: Iterable[str] | None = None) -> Path:
    """Every stored value of the runs (of the metrics `names`, or all) as a long-format CSV at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for run, rows in _runs_and_rows(store, run_ids, names):
            writer.writerows((run.id, run.name, row.name, row.split, row.iteration, row.epoch, row.wall_time,
                              "" if row.value is None else row.value) for row in rows)
    return path


def write_tensorboard(store: RunStore, run_ids: Sequence[int], folder: Path,
                      names: Iterable[str] | None = None) -> list[Path]:
    """TensorBoard event files under `folder`, one subfolder per run; returns the subfolders."""
    from torch.utils.tensorboard import SummaryWriter

    written = []
    for run, rows in _runs_and_rows(store, run_ids, names):
        target = Path(folder) / run_folder_name(run)
        with SummaryWriter(log_dir=str(target)) as writer:
            for row in rows:
                writer.add_scalar(f"{row.split}/{row.name}", float("nan") if row.value is None else row.value,
                                  global_step=row.iteration, walltime=row.wall_time)
        written.append(target)
    return written
