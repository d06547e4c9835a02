"""Plotly figure builders: pure functions, data in, figure out.

Training curves follow the paper's figures (He et al. 2015, Fig. 6): x in iterations or epochs,
y the error in %, dashed training error, bold test error, one colour per run. Long curves are
downsampled (min/max per bucket, so spikes survive) before they reach the browser.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from workbench.models.blocks import _unit_recipe
from workbench.spec import CONVS_PER_UNIT, NetSpec
from workbench.viz.series import RunCurves, Series

CURVE_HEIGHT = 480
SMALL_CHART_HEIGHT = 260
MAX_POINTS_PER_TRACE = 800
RUN_COLOURS = qualitative.D3 + qualitative.Dark24
METRIC_AXIS_TITLES = {"error": "error (%)", "loss": "cross-entropy loss"}
OP_COLOURS = {"conv": "#4C78A8", "bn": "#54A24B", "relu": "#F58518", "add": "#7F7F7F", "io": "#FFFFFF"}


def run_colour(index: int) -> str:
    """The colour of the index-th run of a chart."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def downsample_minmax(
    x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE
) -> tuple[np.ndarray, np.ndarray]:
    """At most about `max_points` points: the first, the last, and each bucket's minimum and maximum, in order."""
    n = len(y)
    buckets = max(1, max_points // 2)
    if n <= max_points or n <= 2:
        return x, y
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
    picks = np.unique(picks[picks < n])
    return x[picks], y[picks]


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average (TensorBoard's smoothing); weight 0 returns the values unchanged."""
    if weight <= 0 or len(values) < 2:
        return values
    keep = 1.0 - weight
    return np.fromiter(
        itertools.accumulate(values, lambda average, value: weight * average + keep * value),
        dtype=np.float64, count=len(values),
    )


def _final_text(metric: str, value: float) -> str:
    return f"{value:.2f}%" if metric == "error" else f"{value:.3f}"


def _curve_trace(
    series: Series, *, label: str, split: str, colour: str, group: int, metric: str, x_axis: str,
    smoothing: float, max_points: int,
) -> dict:
    values = smooth(series.values, smoothing) if split == "train" else series.values
    x, y = downsample_minmax(series.x(x_axis), values, max_points)
    test = split == "test"
    return {
        "type": "scatter", "x": x, "y": np.round(y, 4), "mode": "lines+markers" if test and len(x) <= 60 else "lines",
        "name": f"{label} {split} {_final_text(metric, float(series.values[-1]))}",
        "legendgroup": str(group),
        "line": {"color": colour, "width": 2.6 if test else 1.2, "dash": "solid" if test else "dash"},
        "marker": {"size": 5},
        "hovertemplate": f"{label} {split}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
    }


def training_curves_figure(
    runs: Sequence[RunCurves],
    *,
    metric: str = "error",
    x_axis: str = "iterations",
    smoothing: float = 0.0,
    log_y: bool = False,
    max_points: int = MAX_POINTS_PER_TRACE,
    height: int = CURVE_HEIGHT,
) -> go.Figure:
    """Training (dashed) and test (bold) curves of several runs, one colour per run, final values in the legend."""
    traces = []
    for index, run in enumerate(runs):
        for split, series in (("train", run.train), ("test", run.test)):
            if series is not None and len(series):
                traces.append(_curve_trace(
                    series, label=run.label, split=split, colour=run_colour(index), group=run.run_id,
                    metric=metric, x_axis=x_axis, smoothing=smoothing, max_points=max_points,
                ))
    figure = go.Figure(data=traces, layout={
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "template": "plotly_white",
        "xaxis": {"title": {"text": x_axis}},
        "yaxis": {"title": {"text": METRIC_AXIS_TITLES.get(metric, metric)}, "type": "log" if log_y else "linear"},
        "legend": {"x": 1.02, "y": 1},
        "hovermode": "closest",
        "uirevision": "curves",
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
    return {
        "A": "shortcut: identity (zero-pad + subsample where the shape changes)",
        "B": "shortcut: identity (1x1 conv + BN where the shape changes)",
        "C": "shortcut: 1x1 conv + BN projection on every unit",
    }[spec.shortcut]


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
        round_node = kind in ("add", "io")
        figure.add_shape(
            type="circle" if round_node else "rect", x0=index - 0.42, x1=index + 0.42, y0=-0.3, y1=0.3,
            fillcolor=OP_COLOURS[kind], line={"color": "#333", "width": 1},
        )
        figure.add_annotation(
            x=index, y=0, text=f"<b>{label}</b>", showarrow=False,
            font={"color": "#000" if kind == "io" else "#fff", "size": 11},
        )
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
