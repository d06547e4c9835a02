"""Plotly figure builders: pure functions, data in, figure out.

Training curves follow the paper's figures (He et al. 2015, Fig. 6): x in iterations or epochs,
y the error in %, dashed training error, bold test error, one colour per run. Long curves are
downsampled (min/max per bucket, so spikes survive) before they reach the browser.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import hex_to_rgb, qualitative

from workbench.models.blocks import _unit_recipe
from workbench.science.statistics import AT_ITERATION, BEST, FINAL, Summary, t_quantile
from workbench.spec import CONVS_PER_UNIT, NetSpec
from workbench.viz.series import RunCurves, SeedGroup, Series

CURVE_HEIGHT = 480
SMALL_CHART_HEIGHT = 260
MAX_POINTS_PER_TRACE = 800
RUN_COLOURS = qualitative.D3 + qualitative.Dark24
WHITE_TEMPLATE = pio.templates["plotly_white"]
METRIC_AXIS_TITLES = {"error": "error (%)", "loss": "cross-entropy loss", "lr": "learning rate",
                      "images_per_s": "images/s", "system/cpu_percent": "CPU load (%)",
                      "system/rss_mb": "worker memory (MiB)", "system/gpu_util": "GPU load (%)",
                      "system/gpu_mem_mb": "GPU memory (MiB)"}
X_AXES = ("iterations", "epochs", "wall time")
X_AXIS_TITLES = {"wall time": "wall time since the run's first point (min)"}
EMA, RUNNING_MEAN = "EMA (debiased)", "running mean"
SMOOTHING_KINDS = (EMA, RUNNING_MEAN)
STD, MIN_MAX, CI95 = "mean ± std", "min-max", "95% CI"
BANDS = (STD, MIN_MAX, CI95)
OP_COLOURS = {"conv": "#4C78A8", "bn": "#54A24B", "relu": "#F58518", "add": "#7F7F7F", "io": "#FFFFFF"}


def unvalidated_figure(traces: Sequence[dict], layout: dict) -> go.Figure:
    """A figure of trace and layout dicts built by our own code, on the white template.

    Plotly's property validation costs about 100x the JSON encoding for charts of many long traces;
    these dicts are ours, so a live update skips it (`_validate=False`), naming the template object
    itself since unvalidated layouts do not resolve template names.
    """
    return go.Figure(data=list(traces), layout={**layout, "template": WHITE_TEMPLATE}, _validate=False)


def run_colour(index: int) -> str:
    """The colour of the index-th run of a chart."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def minmax_indices(y: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE) -> np.ndarray:
    """Indices of at most about `max_points` points: the first, the last, and each bucket's minimum and maximum."""
    n = len(y)
    buckets = max(1, max_points // 2)
    if n <= max_points or n <= 2:
        return np.arange(n)
    size = math.ceil(n / buckets)
    padded = size * buckets
    low = np.full(padded, np.inf)
    high = np.full(padded, -np.inf)
    low[:n] = y
    high[:n] = y
    starts = np.arange(buckets) * size
    picks = np.concatenate([
        starts + low.reshape(buckets, size).argmin(axis=1),
        starts + high.reshape(buckets, size).argmax(axis=1),
        [0, n - 1],
    ])
    return np.unique(picks[picks < n])


def downsample_minmax(
    x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE
) -> tuple[np.ndarray, np.ndarray]:
    """At most about `max_points` points: the first, the last, and each bucket's minimum and maximum, in order."""
    if len(y) <= max_points:
        return x, y
    picks = minmax_indices(y, max_points)
    return x[picks], y[picks]


def smooth(values: np.ndarray, weight: float, kind: str = EMA) -> np.ndarray:
    """Smoothed values of every stored point; weight 0 returns them unchanged.

    EMA: TensorBoard's debiased exponential moving average (the average starts at 0 and is divided
    by 1 - weight**n, so early points are not pulled towards the first one). Running mean: the
    mean of the last 1 / (1 - weight) points, the window an EMA of that weight effectively averages.
    """
    if weight <= 0 or len(values) < 2:
        return values
    if kind == RUNNING_MEAN:
        window = max(1, round(1.0 / (1.0 - weight)))
        sums = np.concatenate([[0.0], np.cumsum(values)])
        ends = np.arange(1, len(values) + 1)
        starts = np.maximum(0, ends - window)
        return (sums[ends] - sums[starts]) / (ends - starts)
    keep = 1.0 - weight
    biased = np.fromiter(
        itertools.accumulate(values, lambda average, value: weight * average + keep * value, initial=0.0),
        dtype=np.float64, count=len(values) + 1,
    )[1:]
    return biased / (1.0 - weight ** np.arange(1, len(values) + 1))


def _value_text(metric: str, value: float) -> str:
    return f"{value:.2f}%" if metric == "error" else f"{value:.3f}"


def summary_value(series: Series, summary: str = FINAL, at: int | None = None) -> float:
    """A run's summary of one curve: its final value, its best (lowest) or its last value at or before `at`."""
    if summary == BEST:
        return float(series.values.min())
    if summary == AT_ITERATION and at is not None:
        index = int(np.searchsorted(series.iterations, at, side="right")) - 1
        return float(series.values[max(index, 0)])
    return float(series.values[-1])


def summary_label(summary: str, at: int | None) -> str:
    """"final", "best" or "at 500": which summary a legend shows."""
    return f"at {at}" if summary == AT_ITERATION and at is not None else summary


def _summary_text(metric: str, values: Sequence[float], summary: str, at: int | None) -> str:
    what = summary_label(summary, at)
    stats = Summary.of(values)
    if stats.n == 1:
        return _value_text(metric, stats.mean) if summary == FINAL else f"{what} {_value_text(metric, stats.mean)}"
    unit = "%" if metric == "error" else ""
    return f"n={stats.n}, {what} {stats.mean:.{2 if unit else 3}f} ± {stats.std:.{2 if unit else 3}f}{unit}"


@dataclass(frozen=True)
class CurveStyle:
    """How curves are drawn: metric, x axis, smoothing of training curves, seed bands and the legend's summary."""

    metric: str = "error"
    x_axis: str = "iterations"
    smoothing: float = 0.0
    smoothing_kind: str = EMA
    band: str = STD
    show_runs: bool = False
    summary: str = FINAL
    summary_at: int | None = None
    max_points: int = MAX_POINTS_PER_TRACE

    def values(self, series: Series, split: str) -> np.ndarray:
        """The values drawn: training curves smoothed, test curves as logged."""
        return smooth(series.values, self.smoothing, self.smoothing_kind) if split == "train" else series.values


def _line(split: str, colour: str, width_scale: float = 1.0) -> dict:
    test = split == "test"
    return {"color": colour, "width": (2.6 if test else 1.2) * width_scale, "dash": "solid" if test else "dash"}


def _curve_trace(series: Series, run: RunCurves, split: str, colour: str, style: CurveStyle) -> dict:
    x, y = downsample_minmax(series.x(style.x_axis, run.start), style.values(series, split), style.max_points)
    test = split == "test"
    summary = _summary_text(style.metric, [summary_value(series, style.summary, style.summary_at)], style.summary,
                            style.summary_at)
    shown = split if test else run.train_label
    return {
        "type": "scatter", "x": x, "y": np.round(y, 4), "mode": "lines+markers" if test and len(x) <= 60 else "lines",
        "name": f"{run.label} {shown} {summary}",
        "legendgroup": str(run.run_id), "uid": f"{run.run_id}-{split}",
        "line": _line(split, colour), "marker": {"size": 5},
        "hovertemplate": f"{run.label} {shown}: %{{y:.4g}}<extra></extra>",
    }


def pointwise(members: Sequence[tuple[RunCurves, Series]], style: CurveStyle, split: str, band: str):
    """(x, mean, lower, upper, n) of runs' curves over every stored iteration any of them logged.

    Each column is the runs that logged that iteration; x is their mean position on the chosen axis;
    the band is `spread`'s.
    """
    longest = max((series.iterations for _, series in members), key=len)
    if all(np.array_equal(series.iterations, longest[:len(series)]) for _, series in members):
        grid = longest  # runs of one config log at the same iterations: no sort needed
    else:
        grid = np.unique(np.concatenate([series.iterations for _, series in members]))
    values = np.full((len(members), len(grid)), np.nan)
    xs = np.full((len(members), len(grid)), np.nan)
    for row, (run, series) in enumerate(members):
        columns = np.searchsorted(grid, series.iterations)
        values[row, columns] = style.values(series, split)
        xs[row, columns] = series.x(style.x_axis, run.start)
    return np.nanmean(xs, axis=0), *spread(values, band)


def spread(values: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lower, upper, n) of each column of `values` (runs x points, NaN where a run has none).

    Bands: mean ± std, min to max, or the 95% confidence interval of the mean (Student's t).
    """
    count = np.sum(~np.isnan(values), axis=0)
    mean = np.nanmean(values, axis=0)
    if band == MIN_MAX:
        return mean, np.nanmin(values, axis=0), np.nanmax(values, axis=0), count
    deviation = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / np.maximum(count - 1, 1))
    if band == CI95:
        quantiles = {n: t_quantile(0.975, n - 1) for n in np.unique(count) if n > 1}
        deviation = deviation / np.sqrt(count) * np.array([quantiles.get(n, 0.0) for n in count])
    return mean, mean - deviation, mean + deviation, count


def _fill_colour(colour: str, alpha: float = 0.18) -> str:
    red, green, blue = hex_to_rgb(colour)
    return f"rgba({red}, {green}, {blue}, {alpha})"


def seed_group_traces(group: SeedGroup, colour: str, style: CurveStyle) -> list[dict]:
    """A seed group's mean line and band per split (and its runs thin underneath with `style.show_runs`), the
    legend giving n and the mean ± std of `style.summary`."""
    traces = []
    for split in ("train", "test"):
        members = [(run, getattr(run, split)) for run in group.runs
                   if getattr(run, split) is not None and len(getattr(run, split))]
        if not members:
            continue
        x, mean, lower, upper, _ = pointwise(members, style, split, style.band)
        picks = np.unique(np.concatenate([minmax_indices(lower, style.max_points),
                                          minmax_indices(upper, style.max_points)]))
        x, mean, lower, upper = x[picks], mean[picks], lower[picks], upper[picks]
        uid = f"{group.key}-{split}"
        traces.append({
            "type": "scatter", "x": np.concatenate([x, x[::-1]]),
            "y": np.round(np.concatenate([upper, lower[::-1]]), 4), "fill": "toself", "fillcolor": _fill_colour(colour),
            "mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "legendgroup": uid, "showlegend": False,
            "uid": f"{uid}-band",
            "name": f"{group.label} {split} {style.band}",
        })
        if style.show_runs:
            traces += [{
                "type": "scatter", "x": series.x(style.x_axis, run.start)[idx], "y": np.round(values[idx], 4),
                "mode": "lines", "line": _line(split, colour, 0.4), "opacity": 0.5, "legendgroup": uid,
                "showlegend": False, "uid": f"{uid}-{run.run_id}", "hoverinfo": "skip",
            } for run, series in members
                for values in [style.values(series, split)]
                for idx in [minmax_indices(values, style.max_points)]]
        summaries = [summary_value(series, style.summary, style.summary_at) for _, series in members]
        traces.append({
            "type": "scatter", "x": x, "y": np.round(mean, 4), "mode": "lines", "line": _line(split, colour),
            "name": f"{group.label} {split} {_summary_text(style.metric, summaries, style.summary, style.summary_at)}",
            "legendgroup": uid, "uid": uid,
            "hovertemplate": f"{group.label} {split} mean: %{{y:.3f}}<extra></extra>",
        })
    return traces


def training_curves_figure(
    runs: Sequence[RunCurves | SeedGroup],
    *,
    metric: str = "error",
    x_axis: str = "iterations",
    smoothing: float = 0.0,
    smoothing_kind: str = EMA,
    log_y: bool = False,
    max_points: int = MAX_POINTS_PER_TRACE,
    height: int = CURVE_HEIGHT,
    revision: str = "curves",
    style: CurveStyle | None = None,
) -> go.Figure:
    """Training (dashed) and test (bold) curves of runs and seed groups, one colour each, summaries in the legend.

    A seed group of several runs is drawn as its mean with a band (`style.band`), its runs thin
    underneath when `style.show_runs`. `style` replaces the keyword options when given. `revision`
    is the layout's uirevision: a chart updated with the same revision keeps the user's zoom.
    """
    style = style or CurveStyle(metric=metric, x_axis=x_axis, smoothing=smoothing, smoothing_kind=smoothing_kind,
                                max_points=max_points)
    traces = []
    for index, entry in enumerate(runs):
        colour = run_colour(index)
        if isinstance(entry, SeedGroup) and len(entry.runs) > 1:
            traces += seed_group_traces(entry, colour, style)
            continue
        run = entry.runs[0] if isinstance(entry, SeedGroup) else entry
        traces += [_curve_trace(series, run, split, colour, style)
                   for split, series in (("train", run.train), ("test", run.test))
                   if series is not None and len(series)]
    figure = unvalidated_figure(traces, {
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "xaxis": {"title": {"text": X_AXIS_TITLES.get(style.x_axis, style.x_axis)}},
        "yaxis": {"title": {"text": METRIC_AXIS_TITLES.get(style.metric, style.metric)},
                  "type": "log" if log_y else "linear"},
        "legend": {"x": 1.02, "y": 1},
        "hovermode": "x unified",
        "uirevision": revision,
    })
    if not traces:
        _add_note(figure, "No curves yet: pick runs or a group; curves appear after the first logged iterations.")
    return figure


def path_length_figure(distribution: Sequence[float], *, x_title: str = "residual branches on a path",
                       height: int = SMALL_CHART_HEIGHT) -> go.Figure:
    """Share of paths through the network by how many residual branches (or other units) they cross
    (Veit et al. 2016)."""
    figure = go.Figure(go.Bar(x=list(range(len(distribution))), y=list(distribution), marker_color=OP_COLOURS["conv"]))
    figure.update_layout(
        height=height, template="plotly_white", margin={"l": 50, "r": 10, "t": 30, "b": 40},
        title={"text": "path lengths", "font": {"size": 13}},
        xaxis_title=x_title, yaxis_title="share of paths",
    )
    return figure


def _op_kind(op: str) -> str:
    return "conv" if op.startswith("conv") else "bn" if op.startswith("bn") else op


def _op_label(op: str, spec: NetSpec) -> str:
    if not op.startswith("conv"):
        return {"relu": "ReLU"}.get(op, op.replace("bn", "BN"))
    index = int(op.removeprefix("conv"))
    kernel = "3x3" if spec.unit == "basic" or index == 2 else "1x1"
    return f"conv {kernel}"


def _shortcut_text(spec: NetSpec) -> str:
    # Full pre-activation projections take the already normalized input, so they have no BN of their own.
    projection = "1x1 conv" if spec.placement == "full_preact" else "1x1 conv + BN"
    return {
        "A": "shortcut: identity (zero-pad + subsample where the shape changes)",
        "B": f"shortcut: identity ({projection} where the shape changes)",
        "C": f"shortcut: {projection} projection on every unit",
    }[spec.shortcut]


ROUND_NODES = ("add", "io")


def draw_node(figure: go.Figure, x: float, y: float, label: str, kind: str, colour: str,
              half_width: float = 0.42) -> None:
    """One op of a diagram: a circle for the input, output and addition; else the label on a box of its own
    size (Plotly sizes an annotation's background in pixels, so a narrow chart never clips the label), its
    words stacked so neighbouring boxes stay apart."""
    if kind in ROUND_NODES:
        figure.add_shape(type="circle", x0=x - half_width, x1=x + half_width, y0=y - 0.3, y1=y + 0.3,
                         fillcolor=colour, line={"color": "#333", "width": 1})
        figure.add_annotation(x=x, y=y, text=f"<b>{label}</b>", showarrow=False,
                              font={"color": "#000" if kind == "io" else "#fff", "size": 11})
        return
    figure.add_annotation(x=x, y=y, text=f"<b>{label.replace(' ', '<br>')}</b>", showarrow=False,
                          font={"color": "#fff", "size": 11}, bgcolor=colour, bordercolor="#333", borderwidth=1,
                          borderpad=4)


def unit_diagram_figure(spec: NetSpec, *, height: int = 200) -> go.Figure:
    """One unit of `spec`: its ops in order before and after the addition, and the shortcut around them."""
    before, after = _unit_recipe(spec.placement, CONVS_PER_UNIT[spec.unit])
    residual = spec.shortcut != "none"
    nodes = [("x", "io"), *((_op_label(op, spec), _op_kind(op)) for op in before)]
    add_index = len(nodes) if residual else None
    if residual:
        nodes.append(("+", "add"))
    nodes += [(_op_label(op, spec), _op_kind(op)) for op in after]
    nodes.append(("out", "io"))

    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=list(range(len(nodes))), y=[0] * len(nodes), mode="lines", line={"color": "#444", "width": 1.5},
        hoverinfo="skip", showlegend=False,
    ))
    for index, (label, kind) in enumerate(nodes):
        draw_node(figure, index, 0, label, kind, OP_COLOURS[kind])
    if residual:
        figure.add_trace(go.Scatter(
            x=[0, 0, add_index, add_index], y=[0.3, 0.85, 0.85, 0.3], mode="lines",
            line={"color": "#D62728", "width": 2}, hoverinfo="skip", showlegend=False,
        ))
        figure.add_annotation(x=add_index / 2, y=1.05, text=_shortcut_text(spec), showarrow=False,
                              font={"size": 12, "color": "#D62728"})
    else:
        figure.add_annotation(x=(len(nodes) - 1) / 2, y=0.75, text="plain unit: no shortcut, no addition",
                              showarrow=False, font={"size": 12, "color": "#555"})
    if spec.stochastic_depth > 0:
        figure.add_annotation(
            x=(len(nodes) - 1) / 2, y=-0.62, showarrow=False, font={"size": 11, "color": "#555"},
            text=f"stochastic depth: branch dropped with probability up to {spec.stochastic_depth:g} (linear decay)",
        )
    figure.update_layout(
        height=height, template="plotly_white", margin={"l": 10, "r": 10, "t": 20, "b": 10},
        xaxis={"visible": False, "range": [-0.6, len(nodes) - 0.4]},
        yaxis={"visible": False, "range": [-0.8, 1.25]},
        title={"text": f"one {spec.unit} unit, placement {spec.placement}", "font": {"size": 13}},
    )
    return figure


def _add_note(figure: go.Figure, text: str) -> None:
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                          font={"size": 14, "color": "#777"})
