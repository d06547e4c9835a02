"""Plotly figures for the science tools: plain data in, a figure out, nothing else touched.

Figure 6 of He et al. 2015 (plain nets left, residual nets right, dashed training error, bold
test error), error against depth with the paper's numbers as markers, lesion plots (Veit et al.
2016, Fig. 3 and 5) and gradient-flow heatmaps and profiles.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from workbench.science.degradation import CurveRun, smoothed_at
from workbench.science.statistics import FINAL
from workbench.viz.charts import (
    MAX_POINTS_PER_TRACE,
    CurveStyle,
    downsample_minmax,
    seed_group_traces,
    spread,
    summary_label,
    summary_value,
    unvalidated_figure,
)
from workbench.viz.series import RunCurves, SeedGroup, Series

PALETTE = qualitative.Plotly
HEIGHT = 420
TEMPLATE = "plotly_white"
TRAIN_DASH = "dash"
TRAIN_WIDTH = 1.5
TEST_WIDTH = 3.5
SHOW_MARKERS_BELOW = 30


def _figure6_layout() -> dict:
    """Two panels sharing the y axis: plain nets left, residual nets right."""
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                           subplot_titles=("plain networks", "residual networks"))
    figure.update_xaxes(title_text="iteration")
    figure.update_yaxes(title_text="error (%)", row=1, col=1)
    figure.update_layout(legend={"orientation": "h", "y": -0.2}, margin={"t": 60, "b": 40})
    layout = figure.layout.to_plotly_json()
    layout.pop("template")  # unvalidated_figure sets its own, and each update deep-copies this layout
    return layout


FIGURE6_LAYOUT = _figure6_layout()


def _depth_colors(runs: Sequence[CurveRun]) -> dict[int, str]:
    return {depth: PALETTE[i % len(PALETTE)] for i, depth in enumerate(sorted({run.depth for run in runs}))}


def empty_figure(message: str, height: int = HEIGHT) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(template=TEMPLATE, height=height, xaxis_visible=False, yaxis_visible=False)
    return figure


def _networks(runs: Sequence[CurveRun]) -> dict[str, list[CurveRun]]:
    """Runs by network name (the runs of one network are its seeds), plain before residual, shallow before deep."""
    networks: dict[str, list[CurveRun]] = {}
    for run in sorted(runs, key=lambda r: (r.residual, r.depth)):
        networks.setdefault(run.name, []).append(run)
    return networks


def _figure6_run_traces(run: CurveRun, colour: str, axes: dict, style: CurveStyle | None, max_points: int) -> list:
    traces = []
    for split, dash, width in (("train", TRAIN_DASH, TRAIN_WIDTH), ("test", "solid", TEST_WIDTH)):
        points = run.train if split == "train" else run.test
        if not len(points):
            continue
        series = Series.from_points(points)
        x, y = downsample_minmax(series.iterations, series.values, max_points)
        few = len(x) <= SHOW_MARKERS_BELOW
        summary = f"{series.values[-1]:.1f}%" if style is None or style.summary == FINAL else (
            f"{summary_label(style.summary, style.summary_at)} "
            f"{summary_value(series, style.summary, style.summary_at):.1f}%")
        traces.append({
            "type": "scatter", "x": x, "y": y, "mode": "lines+markers" if few else "lines",
            "marker": {"size": 6 if split == "test" else 3},
            "name": f"{run.name} {split} ({summary})", "legendgroup": run.name,
            "line": {"color": colour, "dash": dash, "width": width},
            "hovertemplate": f"{run.name} {split}<br>iteration %{{x}}<br>error %{{y:.2f}}%<extra></extra>", **axes,
        })
    return traces


def figure6(runs: Sequence[CurveRun], *, title: str | None = None, style: CurveStyle | None = None,
            max_points: int = MAX_POINTS_PER_TRACE, height: int = HEIGHT) -> go.Figure:
    """Training (dashed) and test (bold) error against iteration: plain nets left, residual nets right.

    Runs with the same name are seeds of one network. With `style`, a network of several seeds is
    drawn as the main curve chart draws a seed group (mean line, `style.band`, thin seeds with
    `style.show_runs`, n and mean ± std of `style.summary` in the legend), and a single run's legend
    gives `style.summary`; without it every run is drawn alone with its final error.
    """
    colors = _depth_colors(runs)
    style = style and replace(style, metric="error", x_axis="iterations", smoothing=0.0, max_points=max_points)
    traces = []
    for name, members in _networks(runs).items():
        axes = {"xaxis": "x2", "yaxis": "y2"} if members[0].residual else {"xaxis": "x", "yaxis": "y"}
        colour = colors[members[0].depth]
        if style is not None and len(members) > 1:
            group = SeedGroup(f"figure6-{name}", name, tuple(
                RunCurves(index, name, Series.from_points(run.train), Series.from_points(run.test))
                for index, run in enumerate(members)))
            traces += [{**trace, **axes} for trace in seed_group_traces(group, colour, style)]
        else:
            traces += [trace for run in members for trace in _figure6_run_traces(run, colour, axes, style, max_points)]
    return unvalidated_figure(traces, {**copy.deepcopy(FIGURE6_LAYOUT), "height": height, "title": title})


def final_errors(run: CurveRun, window: int | None = None) -> dict[str, Any]:
    """The run's last test error and its training error smoothed over the last tenth of its iterations."""
    train, test = run.train, run.test
    train_error = None
    if len(train):
        last = int(train[-1][0])
        train_error = smoothed_at(train, last, window or max(1, last // 10))
    return {"name": run.name, "depth": run.depth, "residual": run.residual, "train_error": train_error,
            "test_error": float(test[-1][1]) if len(test) else None}


def _seed_points(shown: Sequence[Mapping[str, Any]], key: str, band: str) -> tuple[dict[str, Any], str, str]:
    """(trace fields, legend suffix, hover suffix) of one family's networks over their seeds: a point at each
    network's mean error with `band` as error bars, n in the hover and (a range where it differs) in the legend."""
    networks: dict[str, list[Mapping[str, Any]]] = {}
    for final in shown:
        networks.setdefault(final["name"], []).append(final)
    seeds = max(len(members) for members in networks.values())
    values = np.full((seeds, len(networks)), np.nan)
    for column, members in enumerate(networks.values()):
        values[:len(members), column] = [final[key] for final in members]
    mean, lower, upper, count = spread(values, band)
    low, high = int(count.min()), int(count.max())
    fields = {
        "x": [members[0]["depth"] for members in networks.values()], "y": mean, "text": list(networks),
        "customdata": count, "error_y": {"type": "data", "symmetric": False, "array": upper - mean,
                                         "arrayminus": mean - lower, "visible": True, "thickness": 1.5},
    }
    return fields, f" (n={low}{'' if low == high else f'-{high}'}, {band})", f" (mean of %{{customdata}}, {band})"


def error_vs_depth(finals: Sequence[Mapping[str, Any]], references: Mapping[int, float] | None = None, *,
                   band: str | None = None, reference_label: str = "ResNet, He et al. 2015 Table 6",
                   height: int = HEIGHT) -> go.Figure:
    """Final error against depth for plain and residual nets, with the paper's numbers as star markers.

    Finals with the same name are seeds of one network: with `band` (as `spread` takes it) each network is one
    point at its mean with the band as error bars, n in the legend and the hover; without, every run is a point.
    """
    traces = []
    families = (("plain", False, PALETTE[1]), ("ResNet", True, PALETTE[0]))
    for label, residual, color in families:
        entries = sorted((f for f in finals if bool(f["residual"]) == residual), key=lambda f: f["depth"])
        for split, dash, width in (("train", TRAIN_DASH, TRAIN_WIDTH), ("test", "solid", TEST_WIDTH)):
            key = f"{split}_error"
            shown = [f for f in entries if f.get(key) is not None]
            if not shown:
                continue
            points = {"x": [f["depth"] for f in shown], "y": [f[key] for f in shown],
                      "text": [f["name"] for f in shown]}
            name_suffix = hover_suffix = ""
            if band is not None and len({f["name"] for f in shown}) < len(shown):
                points, name_suffix, hover_suffix = _seed_points(shown, key, band)
            traces.append({
                "type": "scatter", **points,
                "mode": "lines+markers", "name": f"{label} {split}{name_suffix}",
                "line": {"color": color, "dash": dash, "width": width},
                "hovertemplate": "%{text} " + split + "<br>depth %{x}<br>error %{y:.2f}%" + hover_suffix
                                 + "<extra></extra>",
            })
    if references:
        depths = sorted(references)
        traces.append({
            "type": "scatter", "x": depths, "y": [references[d] for d in depths], "mode": "markers",
            "name": reference_label, "marker": {"symbol": "star", "size": 13, "color": "black"},
            "hovertemplate": "paper: depth %{x}, test error %{y:.2f}%<extra></extra>",
        })
    depths_shown = sorted({f["depth"] for f in finals} | set(references or {}))
    return unvalidated_figure(traces, {
        "height": height, "xaxis": {"title": {"text": "depth (layers)"}, "tickvals": depths_shown},
        "yaxis": {"title": {"text": "error (%)"}, "rangemode": "tozero"}, "legend": {"orientation": "h", "y": -0.2}})


def _lesion_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def lesion_by_unit(studies: Sequence[tuple[str, Mapping[str, Any]]], *, height: int = HEIGHT) -> go.Figure:
    """Test error with each single unit deleted, per study, against the intact net (dotted line)."""
    if not studies:
        return empty_figure("no lesion study yet", height)
    figure = go.Figure()
    for index, (label, study) in enumerate(studies):
        color = _lesion_color(index)
        single = study["single"]
        units = [entry["unit"] for entry in single]
        figure.add_trace(go.Scatter(
            x=units, y=[entry["error"] for entry in single], mode="lines+markers", name=f"{label}: unit deleted",
            line={"color": color, "width": 2},
            marker={"symbol": ["diamond" if entry["kept"] != "identity" else "circle" for entry in single],
                    "size": [12 if entry["kept"] != "identity" else 7 for entry in single]},
            customdata=[[entry["stage"], entry["block"], entry["kept"]] for entry in single],
            hovertemplate=(f"{label}<br>unit %{{x}} (stage %{{customdata[0]}}, block %{{customdata[1]}}, keeps "
                           "%{customdata[2]})<br>error %{y:.2f}%<extra></extra>"),
        ))
        figure.add_trace(go.Scatter(
            x=[min(units), max(units)], y=[study["baseline_error"]] * 2, mode="lines",
            name=f"{label}: intact ({study['baseline_error']:.1f}%)",
            line={"color": color, "dash": "dot", "width": 1.5},
            hoverinfo="skip",
        ))
    figure.update_layout(
        template=TEMPLATE, height=height, title="Deleting one unit (diamonds: units that change the shape)",
        xaxis={"title": "deleted unit (forward order)",
               "dtick": 1 if max(s["units"] for _, s in studies) <= SHOW_MARKERS_BELOW else None},
        yaxis={"title": "test error (%)", "range": [0, 100]}, legend={"orientation": "h", "y": -0.2},
    )
    return figure


def lesion_by_k(studies: Sequence[tuple[str, Mapping[str, Any]]], *, height: int = HEIGHT) -> go.Figure:
    """Test error against the number of randomly deleted units: mean and spread of the draws (k = 0 is intact)."""
    if not studies:
        return empty_figure("no lesion study yet", height)
    figure = go.Figure()
    for index, (label, study) in enumerate(studies):
        color = _lesion_color(index)
        entries = study["random"]
        ks = [0] + [entry["k"] for entry in entries]
        means = [study["baseline_error"]] + [entry["mean"] for entry in entries]
        spreads = [0.0] + [entry["std"] for entry in entries]
        figure.add_trace(go.Scatter(
            x=ks, y=means, mode="lines+markers", name=f"{label}: mean of draws", line={"color": color, "width": 2.5},
            error_y={"type": "data", "array": spreads, "visible": True, "thickness": 1},
            hovertemplate=f"{label}<br>%{{x}} units deleted<br>mean error %{{y:.2f}}%<extra></extra>",
        ))
        draws_x = [entry["k"] for entry in entries for _ in entry["errors"]]
        draws_y = [error for entry in entries for error in entry["errors"]]
        figure.add_trace(go.Scatter(
            x=draws_x, y=draws_y, mode="markers", name=f"{label}: each draw", showlegend=False,
            marker={"color": color, "size": 5, "opacity": 0.45}, hoverinfo="skip",
        ))
    figure.update_layout(template=TEMPLATE, height=height, title="Deleting k random units",
                         xaxis={"title": "units deleted (k)", "dtick": 1},
                         yaxis={"title": "test error (%)", "range": [0, 100]},
                         legend={"orientation": "h", "y": -0.2})
    return figure


def _log10(value: float | None) -> float | None:
    return math.log10(value) if value is not None and value > 0 else None


def gradient_heatmaps(panels: Sequence[tuple[str, Sequence[int], Sequence[int], Sequence[Sequence[float | None]]]],
                      *, height: int = HEIGHT) -> go.Figure:
    """log10 of the gradient norm at each unit's input (unit x iteration), one panel per run, one colour scale."""
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return empty_figure("no gradient norms recorded (set grad_norm_every in the training recipe)", height)
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=False, horizontal_spacing=0.08,
                           subplot_titles=[panel[0] for panel in panels])
    logs = [[[_log10(v) for v in row] for row in panel[3]] for panel in panels]
    finite = [v for z in logs for row in z for v in row if v is not None]
    zmin, zmax = (min(finite), max(finite)) if finite else (None, None)
    for column, ((label, iterations, units, _), z) in enumerate(zip(panels, logs, strict=True), start=1):
        figure.add_trace(go.Heatmap(
            x=list(iterations), y=list(units), z=z, zmin=zmin, zmax=zmax, colorscale="Viridis",
            showscale=column == len(panels), colorbar={"title": "log10 norm"},
            hovertemplate=f"{label}<br>iteration %{{x}}<br>unit %{{y}}<br>log10 norm %{{z:.2f}}<extra></extra>",
        ), row=1, col=column)
        figure.update_yaxes(title_text="unit (input side at the bottom)" if column == 1 else None,
                            dtick=1 if len(units) <= SHOW_MARKERS_BELOW else None, row=1, col=column)
        figure.update_xaxes(title_text="iteration", row=1, col=column)
    figure.update_layout(template=TEMPLATE, height=height, title="Gradient norm at each unit's input")
    return figure


def gradient_profile_chart(profiles: Sequence[tuple[str, Sequence[float | None]]], *, title: str | None = None,
                           height: int = HEIGHT) -> go.Figure:
    """Gradient norm at each unit's input for one batch (log scale), one line per network."""
    if not profiles:
        return empty_figure("no gradient profile yet", height)
    figure = go.Figure()
    for index, (label, norms) in enumerate(profiles):
        figure.add_trace(go.Scatter(
            x=list(range(1, len(norms) + 1)), y=list(norms), mode="lines+markers", name=label,
            line={"color": _lesion_color(index), "width": 2},
            hovertemplate=f"{label}<br>unit %{{x}}<br>norm %{{y:.3g}}<extra></extra>",
        ))
    figure.update_layout(template=TEMPLATE, height=height,
                         title=title or "Gradient norm at each unit's input at initialization",
                         xaxis={"title": "unit (forward order)"}, yaxis={"title": "||dL/dx||", "type": "log"},
                         legend={"orientation": "h", "y": -0.2})
    return figure


COSTS = (("params", "parameters"), ("macs", "multiply-adds per image"))


def error_vs_cost(finals: Sequence[Mapping[str, Any]], papers: Sequence[Mapping[str, Any]] = (), *,
                  reference_label: str = "paper (CIFAR-10+)", height: int = HEIGHT) -> go.Figure:
    """Final error of each run against its parameters (left) and multiply-adds (right), log scales, with the
    papers' numbers as star markers. `finals` carry name, train/test error, params and macs."""
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                           subplot_titles=[label for _, label in COSTS])
    for column, (cost, label) in enumerate(COSTS, start=1):
        for split, symbol, size in (("train", "circle-open", 9), ("test", "circle", 12)):
            shown = [f for f in finals if f.get(f"{split}_error") is not None]
            if not shown:
                continue
            figure.add_trace(go.Scatter(
                x=[f[cost] for f in shown], y=[f[f"{split}_error"] for f in shown], mode="markers+text",
                text=[f["name"] if split == "test" else "" for f in shown], textposition="top center",
                cliponaxis=False,
                marker={"symbol": symbol, "size": size,
                        "color": [PALETTE[i % len(PALETTE)] for i in range(len(shown))]},
                name=f"runs, {split} error", legendgroup=split, showlegend=column == 1,
                customdata=[f["name"] for f in shown],
                hovertemplate="%{customdata} " + split + f"<br>{label} %{{x:,}}<br>error %{{y:.2f}}%<extra></extra>",
            ), row=1, col=column)
        if papers:
            figure.add_trace(go.Scatter(
                x=[p[cost] for p in papers], y=[p["error"] for p in papers], mode="markers", name=reference_label,
                marker={"symbol": "star", "size": 13, "color": "black"}, legendgroup="paper",
                showlegend=column == 1, customdata=[p["name"] for p in papers],
                hovertemplate="paper: %{customdata}<br>" + label + " %{x:,}<br>test error %{y:.2f}%<extra></extra>",
            ), row=1, col=column)
        figure.update_xaxes(title_text=label, type="log", row=1, col=column)
    figure.update_yaxes(title_text="error (%)", rangemode="tozero", row=1, col=1)
    figure.update_layout(template=TEMPLATE, height=height, legend={"orientation": "h", "y": -0.25},
                         margin={"t": 40, "b": 40})
    if not finals and not papers:
        return empty_figure("No finished evaluations yet: points appear after each run's first test evaluation.",
                            height)
    return figure
