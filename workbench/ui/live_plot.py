"""Charts updated in place, so that a user's zoom, pan and legend choices survive live updates.

Gradio's `gr.Plot` mounts a new plotly.js chart whenever its figure changes, which drops whatever
the user did to the old one. So a plot gets a figure through its own value only when what it shows
changes (another selection, metric or axis), and later figures of the same view go as JSON through
one hidden textbox to `Plotly.react` on the chart already on the page: with an unchanged
`layout.uirevision`, plotly.js keeps the user's axis ranges and hidden traces.
"""

from __future__ import annotations

from collections.abc import Mapping

import gradio as gr
import plotly.graph_objects as go

APPLY_JS = """
(text) => {
  if (!text || !window.Plotly) return;
  for (const [elemId, figure] of Object.entries(JSON.parse(text))) {
    const chart = document.querySelector(`#${elemId} .js-plotly-plot`);
    if (!chart || chart.__liveText === text) continue;
    chart.__liveText = text;
    figure.layout.autosize = true;
    figure.layout.template = chart.layout.template;
    window.Plotly.react(chart, figure.data, figure.layout, {responsive: true});
  }
}
"""


def live_channel(elem_id: str) -> gr.Textbox:
    """The hidden textbox that carries figures to charts already drawn (see `live_figures`)."""
    return gr.Textbox("", visible=False, elem_id=elem_id)


def apply_live_figures(dependency, channel: gr.Textbox) -> None:
    """After `dependency` (an event), draw the figures it put in `channel` into their charts, in the browser."""
    dependency.then(None, channel, None, js=APPLY_JS, api_visibility="private", show_progress="hidden")


def live_figures(figures: Mapping[str, go.Figure]) -> str:
    """{chart elem_id: figure} as the channel's JSON text (plotly's own encoding of each figure).

    The template is left out (the figures are consumed): the chart on the page keeps the one it was
    mounted with, and copying and encoding it took half the time of a live update.
    """
    for figure in figures.values():
        figure.layout.template = None
    return "{" + ",".join(f'"{elem_id}":{figure.to_json()}' for elem_id, figure in figures.items()) + "}"
