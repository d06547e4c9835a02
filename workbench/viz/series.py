"""The curves a chart draws: numpy series of one metric, and a run's training and test series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Series:
    """One metric of one split of one run: iterations, epochs, values and wall times (Unix s) in iteration order."""

    iterations: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    epochs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    wall_times: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.iterations)

    def extend(self, iterations: Sequence[int], epochs: Sequence[float], values: Sequence[float],
               wall_times: Sequence[float] | None = None) -> None:
        """Append points; cached points at or after the first new iteration are replaced (a resumed run)."""
        if not len(iterations):
            return
        keep = int(np.searchsorted(self.iterations, iterations[0], side="left"))
        walls = np.zeros(len(iterations)) if wall_times is None else wall_times
        self.iterations = np.concatenate([self.iterations[:keep], np.asarray(iterations, dtype=np.int64)])
        self.epochs = np.concatenate([self.epochs[:keep], np.asarray(epochs, dtype=np.float64)])
        self.values = np.concatenate([self.values[:keep], np.asarray(values, dtype=np.float64)])
        self.wall_times = np.concatenate([self.wall_times[:keep], np.asarray(walls, dtype=np.float64)])

    @classmethod
    def from_points(cls, points: Sequence[tuple[int, float]] | np.ndarray) -> Series:
        """A series of (iteration, value) pairs in iteration order (epochs and wall times unknown: zero)."""
        table = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        zeros = np.zeros(len(table))
        return cls(table[:, 0].astype(np.int64), zeros, table[:, 1].copy(), zeros.copy())

    def points(self) -> np.ndarray:
        """(iteration, value) rows in iteration order, as an (n, 2) array."""
        return np.column_stack([self.iterations.astype(np.float64), self.values])

    def x(self, axis: str, start: float = 0.0) -> np.ndarray:
        """The x values for an "iterations", "epochs" or "wall time" axis (minutes after `start`, Unix s)."""
        if axis == "wall time":
            return (self.wall_times - start) / 60.0
        return self.epochs if axis == "epochs" else self.iterations



@dataclass(frozen=True)
class RunCurves:
    """The curves of one run to draw: a label and its training and test series (either may be missing).

    `train_label` names the first series in the legend ("system" where it holds system samples).
    """

    run_id: int
    label: str
    train: Series | None
    test: Series | None
    train_label: str = "train"

    @property
    def start(self) -> float:
        """The wall time of the run's first drawn point (Unix s): zero of its wall-time axis."""
        return min((series.wall_times[0] for series in (self.train, self.test) if series is not None and len(series)),
                   default=0.0)


@dataclass(frozen=True)
class SeedGroup:
    """Runs that differ only by seed, drawn as one curve with a band; `key` names it across redraws."""

    key: str
    label: str
    runs: tuple[RunCurves, ...]
