"""A sweep's trials as parallel coordinates: one axis per parameter and one for the objective, one line per trial,
coloured by the objective (plain rows in, a figure out)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.viz.figures import HEIGHT, TEMPLATE, empty_figure


def _axis(label: str, values: list[Any], log: bool) -> dict[str, Any]:
    """One Parcoords dimension: names as evenly spaced ticks, a log parameter on a log10 axis labelled in its
    own units."""
    if any(isinstance(value, str) for value in values):
        names = sorted({str(value) for value in values})
        return {"label": label, "values": [names.index(str(value)) for value in values],
                "tickvals": list(range(len(names))), "ticktext": names}
    if log and all(value > 0 for value in values):
        exponents = range(math.floor(math.log10(min(values))), math.ceil(math.log10(max(values))) + 1)
        return {"label": f"{label} (log)", "values": [math.log10(value) for value in values],
                "tickvals": list(exponents), "ticktext": [f"{10.0 ** k:g}" for k in exponents]}
    return {"label": label, "values": values}


def parallel_coordinates(
    trials: Sequence[Mapping[str, Any]], parameters: Sequence[str], objective: str, *,
    log_scale: Collection[str] = (), title: str | None = None, height: int = HEIGHT,
) -> go.Figure:
    """Trials ({"params": {name: value}, "value": objective}) with a value, as parallel coordinates; lower (better)
    objectives are darker. `log_scale` names the parameters searched in log scale."""
    scored = [trial for trial in trials if trial.get("value") is not None]
    if not scored:
        return empty_figure("no trial has finished yet", height)
    dimensions = [_axis(name, [trial["params"][name] for trial in scored], name in log_scale) for name in parameters]
    values = [trial["value"] for trial in scored]
    dimensions.append({"label": objective, "values": values})
    line = {"color": values, "colorscale": "Viridis", "showscale": True,
            "colorbar": {"title": {"text": "error (%)"}}}
    figure = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    figure.update_layout(template=TEMPLATE, height=height, title=title, margin={"l": 60, "r": 60, "t": 80, "b": 40})
    return figure
