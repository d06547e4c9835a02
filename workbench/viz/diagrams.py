"""One unit of each network family, drawn for the Build tab: a ResNet unit, a dense layer, a wide or ResNeXt
unit, a fractal block and a generalized residual block (the spec in, a figure out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.spec import DenseNetSpec, FractalNetSpec, NetSpec, ResNeXtSpec, RiRSpec, WideResNetSpec
from workbench.viz.charts import OP_COLOURS, draw_node, unit_diagram_figure

COLOURS = {**OP_COLOURS, "dropout": "#B279A2", "concat": "#9467BD", "join": "#9467BD"}
SHORTCUT_COLOUR = "#D62728"
Node = tuple[str, str]


def _box(figure: go.Figure, x: float, y: float, label: str, kind: str, half_width: float = 0.42) -> None:
    draw_node(figure, x, y, label, kind, COLOURS[kind], half_width)


def _line(figure: go.Figure, xs: Sequence[float], ys: Sequence[float], colour: str = "#444",
          width: float = 1.5) -> None:
    figure.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", line={"color": colour, "width": width},
                                hoverinfo="skip", showlegend=False))


def _layout(figure: go.Figure, title: str, x_range: tuple[float, float], y_range: tuple[float, float],
            height: int) -> go.Figure:
    figure.update_layout(
        height=height, template="plotly_white", margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"visible": False, "range": list(x_range)}, yaxis={"visible": False, "range": list(y_range)},
        title={"text": title, "font": {"size": 13}},
    )
    return figure


def chain_figure(nodes: Sequence[Node], *, skip_to: int | None, skip_text: str, title: str, note: str = "",
                 height: int = 200) -> go.Figure:
    """Ops in a row from input to output, with a skip path from the input to node `skip_to` above them."""
    figure = go.Figure()
    _line(figure, range(len(nodes)), [0] * len(nodes))
    for index, (label, kind) in enumerate(nodes):
        _box(figure, index, 0, label, kind)
    if skip_to is not None:
        _line(figure, [0, 0, skip_to, skip_to], [0.3, 0.85, 0.85, 0.3], SHORTCUT_COLOUR, 2)
        figure.add_annotation(x=skip_to / 2, y=1.05, text=skip_text, showarrow=False,
                              font={"size": 12, "color": SHORTCUT_COLOUR})
    if note:
        figure.add_annotation(x=(len(nodes) - 1) / 2, y=-0.62, text=note, showarrow=False,
                              font={"size": 11, "color": "#555"})
    return _layout(figure, title, (-0.6, len(nodes) - 0.4), (-0.8, 1.25), height)


def dense_layer_figure(spec: DenseNetSpec) -> go.Figure:
    """A dense layer (Huang et al. 2017): BN-ReLU-conv (1x1 bottleneck for B), BN-ReLU-conv 3x3, concatenation."""
    k = spec.growth_rate
    nodes: list[Node] = [("x", "io")]
    if spec.bottleneck:
        nodes += [("BN", "bn"), ("ReLU", "relu"), (f"conv 1x1, {spec.bn_size * k}", "conv")]
    nodes += [("BN", "bn"), ("ReLU", "relu"), (f"conv 3x3, {k}", "conv")]
    if spec.drop_rate:
        nodes.append((f"dropout {spec.drop_rate:g}", "dropout"))
    nodes += [("concat", "concat"), ("out", "io")]
    transition = (f"transitions: BN-ReLU-conv 1x1 keeping {spec.compression:g} of the channels, 2x2 average pool"
                  if spec.family == "cifar" else "transitions: BN-ReLU-conv 1x1, 2x2 average pool")
    return chain_figure(nodes, skip_to=len(nodes) - 2,
                        skip_text=f"input kept: concatenated with the k = {k} new channels", note=transition,
                        title=f"one dense layer of a {spec.variant}")


def wide_unit_figure(spec: WideResNetSpec) -> go.Figure:
    """A wide ResNet unit: pre-activation basic, dropout between the convs (ImageNet: torchvision's bottleneck)."""
    if spec.family == "imagenet":
        return unit_diagram_figure(spec.resnet_layout())
    k = spec.widen_factor
    nodes: list[Node] = [("x", "io"), ("BN", "bn"), ("ReLU", "relu"), ("conv 3x3", "conv"), ("BN", "bn"),
                         ("ReLU", "relu")]
    if spec.dropout:
        nodes.append((f"dropout {spec.dropout:g}", "dropout"))
    nodes += [("conv 3x3", "conv"), ("+", "add"), ("out", "io")]
    return chain_figure(nodes, skip_to=len(nodes) - 2,
                        skip_text="shortcut: identity (1x1 projection where the shape changes)",
                        note=f"widths 16k/32k/64k with k = {k}: {16 * k}/{32 * k}/{64 * k} channels",
                        title=f"one unit of WRN-{spec.depth}-{k} (pre-activation, Zagoruyko & Komodakis 2016)")


def resnext_unit_figure(spec: ResNeXtSpec) -> go.Figure:
    """A ResNeXt unit: 1x1, grouped 3x3 (cardinality C), 1x1, added to the shortcut."""
    groups = f"conv 3x3<br>{spec.cardinality} groups"
    nodes: list[Node] = [("x", "io"), ("conv 1x1", "conv"), ("BN", "bn"), ("ReLU", "relu"), (groups, "conv"),
                         ("BN", "bn"), ("ReLU", "relu"), ("conv 1x1", "conv"), ("BN", "bn"), ("+", "add"),
                         ("ReLU", "relu"), ("out", "io")]
    return chain_figure(nodes, skip_to=9, skip_text="shortcut: identity (1x1 conv + BN where the shape changes)",
                          note=f"{spec.cardinality} paths of {spec.bottleneck_width} channels each at the first stage "
                               "(aggregated transformations, Xie et al. 2017)",
                          title=f"one ResNeXt unit ({spec.cardinality}x{spec.bottleneck_width}d)")


def fractal_block_figure(spec: FractalNetSpec, *, height: int = 260) -> go.Figure:
    """One fractal block: column c has 2^(c-1) convs; joins (element-wise means) where columns end together."""
    columns = spec.columns
    rows = 2 ** (columns - 1)
    figure = go.Figure()
    row_height = 1.0
    top = rows * row_height
    for column in range(1, columns + 1):
        span = 2 ** (columns - column)
        x = column - 1
        for first in range(0, rows, span):
            y_top = top - first * row_height
            y_bottom = y_top - span * row_height
            figure.add_shape(type="rect", x0=x - 0.3, x1=x + 0.3, y0=y_bottom + 0.12, y1=y_top - 0.12,
                             fillcolor=COLOURS["conv"], line={"color": "#333", "width": 1})
        figure.add_annotation(x=x, y=top + 0.35, text=f"column {column}", showarrow=False, font={"size": 11})
    for row in range(1, rows + 1):
        ending = [c for c in range(1, columns + 1) if row % 2 ** (columns - c) == 0]
        if len(ending) > 1:
            y = top - row * row_height
            figure.add_shape(type="rect", x0=min(ending) - 1 - 0.38, x1=max(ending) - 1 + 0.38, y0=y - 0.1,
                             y1=y + 0.1, fillcolor=COLOURS["join"], line={"color": "#333", "width": 1})
    figure.add_annotation(x=columns - 0.5, y=top / 2, text="conv 3x3-BN-ReLU<br>purple: join (mean)",
                          showarrow=False, xanchor="left", font={"size": 11, "color": "#555"})
    drop = (f"drop-path: local (each join input dropped with p = {spec.local_drop_prob:g}) and global (one column) "
            "on alternating mini-batches" if spec.drop_path else "no drop-path")
    figure.add_annotation(x=(columns - 1) / 2, y=-0.45, text=drop, showarrow=False, font={"size": 11, "color": "#555"})
    title = f"one fractal block of {columns} columns (Larsson et al. 2016), then a 2x2 max-pool"
    return _layout(figure, title, (-0.6, columns + 1.6), (-0.7, top + 0.6), height)


def generalized_residual_figure(spec: RiRSpec, *, height: int = 260) -> go.Figure:
    """A generalized residual block (Targ et al. 2016): residual and transient streams exchange information."""
    figure = go.Figure()
    half = [w // 2 for w in spec.widths]
    conv_x, add_x = 1.6, 3.0
    convs = [("conv r→r", 1.45, 1), ("conv t→r", 0.55, -1), ("conv r→t", -0.55, 1), ("conv t→t", -1.45, -1)]
    for _, y, source in convs:
        target = 1 if y > 0 else -1
        _line(figure, [0, conv_x, add_x], [source, y, target])
    for y in (1, -1):
        _line(figure, [add_x, 5], [y, y])
    for label, y, _ in convs:
        _box(figure, conv_x, y, label, "conv", half_width=0.55)
    for y, name in ((1, "r"), (-1, "t")):
        _box(figure, 0, y, name, "io")
        _box(figure, add_x, y, "+", "add")
        _box(figure, 4, y, "BN-ReLU", "bn", half_width=0.5)
        _box(figure, 5, y, f"{name}'", "io")
    _line(figure, [0, 0, add_x, add_x], [1.3, 2.0, 2.0, 1.3], SHORTCUT_COLOUR, 2)
    figure.add_annotation(x=add_x / 2, y=2.2, text="shortcut on the residual stream only", showarrow=False,
                          font={"size": 12, "color": SHORTCUT_COLOUR})
    figure.add_annotation(x=2.5, y=-2.05, showarrow=False, font={"size": 11, "color": "#555"},
                          text=f"{spec.layers_per_block} such blocks inside each RiR block (itself residual); "
                               f"each stream {'/'.join(map(str, half))} channels")
    return _layout(figure, "one generalized residual block of ResNet in ResNet", (-0.6, 5.6), (-2.3, 2.45), height)


def unit_diagram(spec: Any) -> go.Figure:
    """The diagram of one unit of `spec`'s network, whichever the family."""
    if isinstance(spec, NetSpec):
        return unit_diagram_figure(spec)
    drawers = {DenseNetSpec: dense_layer_figure, WideResNetSpec: wide_unit_figure, ResNeXtSpec: resnext_unit_figure,
               FractalNetSpec: fractal_block_figure, RiRSpec: generalized_residual_figure}
    return drawers[type(spec)](spec)
