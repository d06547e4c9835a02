"""Finding runs among hundreds: filters, columns read from each run's spec and results, and spec diffs.

Everything here works on `RunRecord`s already read (one query for the table), so a keystroke in
the search box filters in memory. Spec columns are dotted paths into the stored spec
("train.lr", "net.depth", "net.shortcut"), so any setting can be a column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage import RunRecord
from storage.status import ALL_STATUSES

__all__ = ["ALL_STATUSES", "RESULT_COLUMNS", "RunFilter", "best_error", "best_error_text", "cell", "column_value",
           "differing", "filter_runs", "flatten", "spec_columns", "spec_diff"]

RESULT_COLUMNS = ("status", "preset", "iteration", "epoch", "best_val_error", "test_error_at_best", "best_test_error",
                  "last_test_error", "last_train_error", "images_per_s", "device", "group_name", "tags")


def best_error(run: RunRecord) -> tuple[float | None, str]:
    """(error, split) the run's best checkpoint was chosen by: its validation split when it has one, else test."""
    if run.best_val_error is not None:
        return run.best_val_error, "val"
    return run.best_test_error, "test"


def best_error_text(run: RunRecord) -> str:
    """"6.80% val" or "8.75% test": the best checkpoint's error and the split it was chosen on; "" before any."""
    error, split = best_error(run)
    return "" if error is None else f"{error:.2f}% {split}"


@dataclass(frozen=True)
class RunFilter:
    """What the runs table shows: runs matching every given criterion (empty criteria match all)."""

    text: str = ""
    statuses: Sequence[str] = ()
    datasets: Sequence[str] = ()
    groups: Sequence[str] = ()
    tags: Sequence[str] = ()
    presets: Sequence[str] = ()

    def matches(self, run: RunRecord) -> bool:
        text = self.text.strip().lower()
        haystack = " ".join(str(part) for part in (run.id, run.name, run.preset, run.dataset, run.group_name,
                                                   run.notes, *run.tags) if part).lower()
        return ((not text or all(word in haystack for word in text.split()))
                and (not self.statuses or run.status in self.statuses)
                and (not self.datasets or run.dataset in self.datasets)
                and (not self.groups or run.group_name in self.groups)
                and (not self.tags or any(tag in run.tags for tag in self.tags))
                and (not self.presets or (run.preset or "custom") in self.presets))


def filter_runs(runs: Iterable[RunRecord], wanted: RunFilter) -> list[RunRecord]:
    return [run for run in runs if wanted.matches(run)]


def flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested spec as {dotted path: value}; lists stay values ("net.blocks": [3, 3, 3])."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def column_value(run: RunRecord, column: str) -> Any:
    """A spec path's value ("train.lr"), or a result field's ("best_test_error")."""
    if column in RESULT_COLUMNS:
        value = getattr(run, column)
        return ", ".join(value) if column == "tags" else value
    return flatten(run.spec).get(column)


def spec_columns(runs: Iterable[RunRecord]) -> list[str]:
    """Every spec path any of the runs has, sorted."""
    return sorted({path for run in runs for path in flatten(run.spec)})


def cell(value: Any) -> str:
    """How a value reads in a table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def differing(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The columns whose cells are not all the same (all columns for fewer than two rows)."""
    if len(rows) < 2:
        return list(columns)
    return [column for index, column in enumerate(columns) if len({str(row[index]) for row in rows}) > 1]


def spec_diff(runs: Sequence[RunRecord]) -> list[tuple[str, list[str], bool]]:
    """(spec path, each run's value, whether they differ) for every path of the runs' full specs."""
    flats = [flatten(run.spec) for run in runs]
    paths = sorted({path for flat in flats for path in flat})
    table = []
    for path in paths:
        values = [cell(flat.get(path)) for flat in flats]
        table.append((path, values, len(set(values)) > 1))
    return table
