"""The degradation experiment (He et al. 2015, Sec. 4.2, Fig. 6): plain and residual twins across depths.

`degradation_observed` reads the twins' training curves (several seeds per network where there are)
and says whether a deeper plain net trains worse than a shallower one, with Welch's t-test over the
seeds (the ladder itself is planned by `workbench.service.plans`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from workbench.errors import PresetNotFound
from workbench.presets import get_preset
from workbench.science.statistics import AT_ITERATION, BEST, FINAL, Summary, welch_t_test
from workbench.spec import parse_net

logger = logging.getLogger(__name__)

DEFAULT_DEPTHS = (20, 32, 44, 56)
DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True)
class CurveRun:
    """One run's training and test error curves, as (iteration, error %) points in iteration order (sequences of
    pairs, or (n, 2) arrays)."""

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


def smoothed_at(points: Sequence[tuple[int, float]] | np.ndarray, iteration: int, window: int) -> float | None:
    """Mean of the values logged in (iteration - window, iteration]; the latest one before that if none.

    `points` are (iteration, value) pairs in iteration order, or an (n, 2) array of them.
    """
    table = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    end = int(np.searchsorted(table[:, 0], iteration, side="right"))
    start = int(np.searchsorted(table[:end, 0], iteration - window, side="right"))
    if start < end:
        return float(table[start:end, 1].mean())
    return float(table[end - 1, 1]) if end else None


@dataclass
class DegradationVerdict:
    """Whether degradation shows, at which iteration, and the numbers behind the answer.

    `observed` is True when a deeper plain net trains worse across seeds (Welch's t-test at 5%),
    False when no deeper plain net is above a shallower one by more than the tolerance, and None
    when there is not enough data or not enough evidence (one seed, or seeds that overlap).
    `train_errors` holds each network's mean over its seeds, each seed's read as `summary` says.
    """

    observed: bool | None
    verdict: str
    explanation: str
    iteration: int | None = None
    window: int | None = None
    summary: str = FINAL
    train_errors: dict[str, float] = field(default_factory=dict)
    degraded_pairs: list[dict[str, Any]] = field(default_factory=list)
    residual_pairs: list[dict[str, Any]] = field(default_factory=list)
    seeds: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_network(runs: list[CurveRun]) -> dict[str, list[CurveRun]]:
    """Runs by network name: the runs of one network are its seeds."""
    networks: dict[str, list[CurveRun]] = {}
    for run in runs:
        networks.setdefault(run.name, []).append(run)
    return networks


def _compare_pairs(networks: dict[str, list[CurveRun]], errors: dict[str, list[float]],
                   tolerance: float) -> list[dict[str, Any]]:
    """Every (shallower, deeper) pair whose deeper net's mean training error is higher by more than `tolerance`,
    with Welch's t-test over their seeds (None with fewer than two seeds on a side)."""
    pairs = []
    ordered = sorted(networks, key=lambda name: networks[name][0].depth)
    for i, shallow in enumerate(ordered):
        for deep in ordered[i + 1:]:
            low, high = Summary.of(errors[shallow]), Summary.of(errors[deep])
            if networks[deep][0].depth > networks[shallow][0].depth and high.mean > low.mean + tolerance:
                test = welch_t_test(errors[shallow], errors[deep])
                pairs.append({
                    "shallow": shallow, "deep": deep, "shallow_error": low.mean, "deep_error": high.mean,
                    "gap": high.mean - low.mean, "seeds": (low.n, high.n),
                    "t": test.t if test else None, "df": test.df if test else None, "p": test.p if test else None,
                    "significant": bool(test and test.significant),
                })
    return pairs


@dataclass(frozen=True)
class Reading:
    """Where each seed's training error is read: `summary` (FINAL, BEST or AT_ITERATION) at or up to `iteration`,
    averaged over the trailing `window` iterations (all but BEST)."""

    summary: str
    iteration: int
    window: int

    def where(self) -> str:
        return f"{'up to' if self.summary == BEST else 'at'} iteration {self.iteration}"

    def text(self) -> str:
        if self.summary == BEST:
            return f"lowest training error logged {self.where()}"
        return f"training error averaged over iterations {self.iteration - self.window + 1}-{self.iteration}"


def _seed_errors(runs: list[CurveRun], curves: dict[int, np.ndarray], window: int | None, summary: str,
                 at: int | None) -> tuple[Reading, dict[str, list[float]]]:
    """(where they were read, training error of each seed per network) for runs compared together: at the last
    iteration every run has reached (or `at`, when the summary is AT_ITERATION and all have reached it)."""
    common = int(min(curves[id(run)][-1, 0] for run in runs))
    if summary == AT_ITERATION and at is not None:
        common = min(common, at)
    reading = Reading(summary, common, window or max(1, common // 10))
    errors: dict[str, list[float]] = {}
    for run in runs:
        curve = curves[id(run)]
        if reading.summary == BEST:
            reached = curve[curve[:, 0] <= common, 1]
            value = float(reached.min()) if len(reached) else None
        else:
            value = smoothed_at(curve, common, reading.window)
        # A run whose first logged point comes after `common` is read at that first point.
        errors.setdefault(run.name, []).append(value if value is not None else float(curve[0, 1]))
    return reading, errors


def _network_text(name: str, values: Sequence[float]) -> str:
    """"plain56 35.0%", or with seeds "plain56 35.0 ± 0.4% (n=3), best 34.6%" (the paper's best and mean ± std)."""
    stats = Summary.of(values)
    if stats.n == 1:
        return f"{name} {stats.mean:.1f}%"
    return f"{name} {stats.mean:.1f} ± {stats.std:.1f}% (n={stats.n}), best {stats.minimum:.1f}%"


def _table(networks: dict[str, list[CurveRun]], errors: dict[str, list[float]]) -> str:
    return ", ".join(_network_text(name, errors[name]) for name in sorted(networks, key=lambda n: networks[n][0].depth))


def _test_text(pair: dict[str, Any]) -> str:
    if pair["p"] is None:
        return f"{pair['seeds'][0]} and {pair['seeds'][1]} seed(s): Welch's t-test needs at least two on each side"
    return f"Welch's t-test over seeds: t = {pair['t']:.2f}, df = {pair['df']:.1f}, p = {pair['p']:.3g}"


def degradation_observed(
    runs: Sequence[CurveRun], *, tolerance: float = DEFAULT_TOLERANCE, window: int | None = None,
    summary: str = FINAL, at: int | None = None,
) -> DegradationVerdict:
    """Is a deeper plain net's training error higher than a shallower one's at the same iteration, across seeds?

    Runs with the same name are seeds of one network. Compares training error (%) smoothed over
    the trailing `window` iterations (default: a tenth of the iterations compared) at the last
    iteration every plain run has reached (`summary` FINAL), at iteration `at` (AT_ITERATION; the
    last common one if not all runs have reached it), or each seed's lowest logged training error
    up to the last common iteration (BEST). A deeper net counts as training worse when its mean
    is above the shallower one's by more than `tolerance` percentage points and Welch's t-test
    over the seeds finds the difference at the 5% level; a gap without that (one seed, or
    overlapping seeds) is "not enough evidence". Residual runs are compared among themselves the
    same way (at their own last common iteration) and reported alongside.
    """
    curves = {id(run): np.asarray(run.train, dtype=np.float64).reshape(-1, 2) for run in runs}
    plain = [run for run in runs if not run.residual and len(curves[id(run)])]
    residual = [run for run in runs if run.residual and len(curves[id(run)])]
    if len({run.depth for run in plain}) < 2:
        return DegradationVerdict(
            observed=None, verdict="not enough data",
            explanation="Degradation needs training curves of plain nets of at least two depths; "
                        f"{len(plain)} plain run(s) have logged training error so far.",
        )
    networks = _by_network(plain)
    reading, errors = _seed_errors(plain, curves, window, summary, at)
    pairs = _compare_pairs(networks, errors, tolerance)
    degraded = [pair for pair in pairs if pair["significant"]]
    table = _table(networks, errors)
    where = f"{reading.text()}: {table}."
    if degraded or pairs:
        worst = max(degraded or pairs, key=lambda pair: pair["gap"])
        verdict = "degradation observed" if degraded else "not enough evidence"
        explanation = (
            f"The deeper plain net {worst['deep']} trains worse than the shallower {worst['shallow']} "
            f"({worst['deep_error']:.1f}% vs {worst['shallow_error']:.1f}% training error {reading.where()}; "
            f"{_test_text(worst)}"
            + ("" if degraded else "; not significant at 5%, so this may be seed noise: repeat over seeds") + f"); "
            f"{where}"
        )
    else:
        verdict = "no degradation observed"
        explanation = f"No deeper plain net is more than {tolerance:g} points above a shallower one in {where}"
    all_errors = dict(errors)
    residual_degraded: list[dict[str, Any]] = []
    if len({run.depth for run in residual}) >= 2:
        residual_networks = _by_network(residual)
        res_reading, res_errors = _seed_errors(residual, curves, window, summary, at)
        residual_degraded = _compare_pairs(residual_networks, res_errors, tolerance)
        all_errors.update(res_errors)
        res_table = _table(residual_networks, res_errors)
        if residual_degraded:
            explanation += " Residual nets {}: {}; {}.".format(res_reading.where(), res_table, ", ".join(
                f"{p['deep']} is above {p['shallow']}" for p in residual_degraded))
        else:
            explanation += (f" Residual nets {res_reading.where()}: {res_table}; "
                            "no deeper residual net trains worse.")
    return DegradationVerdict(
        observed=True if degraded else (None if pairs else False), verdict=verdict, explanation=explanation,
        iteration=reading.iteration, window=reading.window, summary=reading.summary,
        train_errors={name: Summary.of(values).mean for name, values in all_errors.items()},
        degraded_pairs=pairs, residual_pairs=residual_degraded, seeds=all_errors,
    )


VERDICT_HEADLINES = {"degradation observed": "Degradation observed", "no degradation observed":
                     "No degradation observed", "not enough evidence": "Not enough evidence",
                     "not enough data": "Not enough data yet"}


def verdict_markdown(verdict: DegradationVerdict) -> str:
    """The verdict as one Markdown paragraph: a bold headline, then the numbers behind it."""
    return f"**{VERDICT_HEADLINES[verdict.verdict]}.** {verdict.explanation}"


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
