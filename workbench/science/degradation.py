"""The degradation experiment (He et al. 2015, Sec. 4.2, Fig. 6): plain and residual twins across depths.

`degradation_observed` reads the twins' training curves and says whether a deeper plain net trains
worse than a shallower one (the ladder itself is planned by `workbench.service.plans`).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any

from workbench.errors import PresetNotFound
from workbench.presets import get_preset
from workbench.spec import parse_net

logger = logging.getLogger(__name__)

DEFAULT_DEPTHS = (20, 32, 44, 56)
DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True)
class CurveRun:
    """One run's training and test error curves, as (iteration, error %) points in iteration order."""

    name: str
    depth: int
    residual: bool
    train: Sequence[tuple[int, float]] = field(default=(), repr=False)
    test: Sequence[tuple[int, float]] = field(default=(), repr=False)

    @classmethod
    def from_rows(cls, name: str, depth: int, residual: bool, rows: Iterable[Any]) -> CurveRun:
        """From metric rows (mappings or records with iteration, split, name and value)."""
        rows = list(rows)
        return cls(name=name, depth=depth, residual=residual, train=metric_points(rows, "train", "error"),
                   test=metric_points(rows, "test", "error"))

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], rows: Iterable[Any]) -> CurveRun:
        """From a stored run spec (JSON) and its metric rows."""
        depth, residual = net_depth_and_residual(spec)
        return cls.from_rows(name, depth, residual, rows)


def net_depth_and_residual(spec: Mapping[str, Any]) -> tuple[int, bool]:
    """(depth, has residual shortcuts) of a stored run spec (JSON) of any network family."""
    net = parse_net(spec["net"])
    return net.depth, net.residual


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def metric_points(rows: Iterable[Any], split: str, name: str) -> list[tuple[int, float]]:
    """(iteration, value) pairs of one metric, in iteration order, skipping missing values."""
    points = [
        (int(_field(row, "iteration")), float(_field(row, "value")))
        for row in rows
        if _field(row, "split") == split and _field(row, "name") == name and _field(row, "value") is not None
    ]
    return sorted(points)


def smoothed_at(points: Sequence[tuple[int, float]], iteration: int, window: int) -> float | None:
    """Mean of the values logged in (iteration - window, iteration]; the latest one before that if none.

    `points` are (iteration, value) pairs in iteration order.
    """
    end = bisect.bisect_right(points, iteration, key=itemgetter(0))
    start = bisect.bisect_right(points, iteration - window, lo=0, hi=end, key=itemgetter(0))
    if start < end:
        return sum(value for _, value in points[start:end]) / (end - start)
    return points[end - 1][1] if end else None


@dataclass
class DegradationVerdict:
    """Whether degradation shows, at which iteration, and the numbers behind the answer."""

    observed: bool | None
    verdict: str
    explanation: str
    iteration: int | None = None
    window: int | None = None
    train_errors: dict[str, float] = field(default_factory=dict)
    degraded_pairs: list[dict[str, Any]] = field(default_factory=list)
    residual_pairs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compare_pairs(runs: list[CurveRun], errors: dict[str, float], tolerance: float) -> list[dict[str, Any]]:
    """Every (shallower, deeper) pair whose deeper net's training error is higher by more than `tolerance`."""
    pairs = []
    ordered = sorted(runs, key=lambda r: r.depth)
    for i, shallow in enumerate(ordered):
        for deep in ordered[i + 1:]:
            if deep.depth > shallow.depth and errors[deep.name] > errors[shallow.name] + tolerance:
                pairs.append({
                    "shallow": shallow.name, "deep": deep.name,
                    "shallow_error": errors[shallow.name], "deep_error": errors[deep.name],
                    "gap": errors[deep.name] - errors[shallow.name],
                })
    return pairs


def _smoothed_errors(
    runs: list[CurveRun], curves: dict[str, list[tuple[int, float]]], window: int | None
) -> tuple[int, int, dict[str, float]]:
    """(last common iteration, window, smoothed training error per run) for runs compared together."""
    common = min(curves[run.name][-1][0] for run in runs)
    window = window or max(1, common // 10)
    errors = {}
    for run in runs:
        value = smoothed_at(curves[run.name], common, window)
        # A run whose first logged point comes after `common` is read at that first point.
        errors[run.name] = value if value is not None else curves[run.name][0][1]
    return common, window, errors


def degradation_observed(
    runs: Sequence[CurveRun], *, tolerance: float = DEFAULT_TOLERANCE, window: int | None = None
) -> DegradationVerdict:
    """Is a deeper plain net's training error higher than a shallower one's at the same iteration?

    Compares training error (%) smoothed over the trailing `window` iterations (default: a tenth
    of the iterations compared) at the last iteration every plain run has reached. A gap above
    `tolerance` percentage points counts. Residual runs are compared among themselves the same way
    (at their own last common iteration) and reported alongside.
    """
    curves = {run.name: list(run.train) for run in runs}
    plain = [run for run in runs if not run.residual and curves[run.name]]
    residual = [run for run in runs if run.residual and curves[run.name]]
    if len({run.depth for run in plain}) < 2:
        return DegradationVerdict(
            observed=None, verdict="not enough data",
            explanation="Degradation needs training curves of plain nets of at least two depths; "
                        f"{len(plain)} plain run(s) have logged training error so far.",
        )
    common, used_window, errors = _smoothed_errors(plain, curves, window)
    degraded = _compare_pairs(plain, errors, tolerance)
    table = ", ".join(f"{run.name} {errors[run.name]:.1f}%" for run in sorted(plain, key=lambda r: r.depth))
    where = f"training error averaged over iterations {common - used_window + 1}-{common}: {table}."
    if degraded:
        worst = max(degraded, key=lambda pair: pair["gap"])
        verdict = "degradation observed"
        explanation = (
            f"The deeper plain net {worst['deep']} trains worse than the shallower {worst['shallow']} "
            f"({worst['deep_error']:.1f}% vs {worst['shallow_error']:.1f}% training error at iteration {common}); "
            f"{where}"
        )
    else:
        verdict = "no degradation observed"
        explanation = f"No deeper plain net is more than {tolerance:g} points above a shallower one in {where}"
    residual_degraded: list[dict[str, Any]] = []
    if len({run.depth for run in residual}) >= 2:
        res_common, _, res_errors = _smoothed_errors(residual, curves, window)
        residual_degraded = _compare_pairs(residual, res_errors, tolerance)
        errors.update(res_errors)
        res_table = ", ".join(
            f"{run.name} {res_errors[run.name]:.1f}%" for run in sorted(residual, key=lambda r: r.depth))
        if residual_degraded:
            explanation += " Residual nets at iteration {}: {}; {}.".format(res_common, res_table, ", ".join(
                f"{p['deep']} is above {p['shallow']}" for p in residual_degraded))
        else:
            explanation += (f" Residual nets at iteration {res_common}: {res_table}; "
                            "no deeper residual net trains worse.")
    return DegradationVerdict(
        observed=bool(degraded), verdict=verdict, explanation=explanation, iteration=common, window=used_window,
        train_errors=errors, degraded_pairs=degraded, residual_pairs=residual_degraded,
    )


VERDICT_HEADLINES = {True: "Degradation observed", False: "No degradation observed", None: "Not enough data yet"}


def verdict_markdown(verdict: DegradationVerdict) -> str:
    """The verdict as one Markdown paragraph: a bold headline, then the numbers behind it."""
    return f"**{VERDICT_HEADLINES[verdict.observed]}.** {verdict.explanation}"


def paper_reference_errors(depths: Iterable[int], home=None) -> dict[int, float]:
    """{depth: CIFAR-10 test error (%)} of the paper's ResNets at these depths, from the presets."""
    references = {}
    for depth in depths:
        try:
            error = get_preset(f"resnet{depth}", home).reference_error
        except PresetNotFound:
            continue
        if error is not None:
            references[depth] = error
    return references


def load_curve_runs(store: Any, runs: Sequence[Any]) -> list[CurveRun]:
    """Training and test error curves of stored runs (RunRecords), ready for the check and the figures."""
    batches = store.fetch_metrics_since({run.id: 0 for run in runs}, names=["error"])
    return [CurveRun.from_spec(run.preset or run.name, run.spec, batches[run.id].rows) for run in runs]
