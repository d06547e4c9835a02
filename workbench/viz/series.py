"""The curves a chart draws: numpy series of one metric, and a run's training and test series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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

    def points(self) -> list[tuple[int, float]]:
        """(iteration, value) pairs in iteration order."""
        return list(zip(self.iterations.tolist(), self.values.tolist(), strict=True))

    def x(self, axis: str) -> np.ndarray:
        """The x values for an "iterations" or "epochs" axis."""
        return self.epochs if axis == "epochs" else self.iterations



@dataclass(frozen=True)
class RunCurves:
    """The curves of one run to draw: a label and its training and test series (either may be missing)."""

    run_id: int
    label: str
    train: Series | None
    test: Series | None
