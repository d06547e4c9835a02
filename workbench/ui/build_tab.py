"""Build tab: a preset picker, the network kind, the fields of that family, and a live summary (parameters,
multiply-adds, depth, activation memory, stages, path lengths, a diagram of one unit)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.presets import get_preset, save_preset
from workbench.service.checks import NetworkCost, network_cost
from workbench.service.forms import (
    FAMILY_FORM_FIELDS,
    FAMILY_FORMS,
    family_form_values,
    family_spec_from_fields,
    field_help,
    net_spec_from_fields,
    net_spec_from_json,
)
from workbench.service.plans import edited_name
from workbench.spec import (
    KINDS,
    PLACEMENTS,
    SHORTCUTS,
    DenseNetSpec,
    FractalNetSpec,
    NetSpec,
    ResNeXtSpec,
    RiRSpec,
    WideResNetSpec,
)
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import edited, number_field
from workbench.viz.charts import path_length_figure
from workbench.viz.diagrams import unit_diagram

DEFAULT_PRESET = "resnet20"
#: The preset the form shows when the user switches to a family.
FAMILY_PRESETS = {"resnet": "resnet20", "densenet": "densenet-bc-100", "wide_resnet": "wrn-16-4",
                  "resnext": "resnext29-8x64d", "fractalnet": "fractalnet-20", "rir": "rir-18"}
STAGE_COLUMNS = ["stage", "units", "output (C x H x W)", "parameters"]
SHARED_FIELDS = ("name", "num_classes", "input_size", "in_channels")
FIELD_NAMES = (
    "name", "family", "unit", "size_by", "depth", "blocks", "widths", "bottleneck_stride", "placement",
    "shortcut", "zero_init_residual", "stochastic_depth", "num_classes", "input_size", "in_channels",
)
FAMILY_FIELD_NAMES = tuple(FAMILY_FORM_FIELDS)
#: What a path of the path-length histogram counts, per family.
PATH_UNITS = {"densenet": "dense layers on a path", "fractalnet": "convs on a path",
              "rir": "RiR blocks' residual branches on a path"}


@dataclass
class BuildTab:
    """Components other tabs use: the current network as JSON (empty while the form is invalid)."""

    spec_json: gr.Code
    preset: gr.Dropdown


def _list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def fields_of(spec: NetSpec) -> list:
    """ResNet form values (in FIELD_NAMES order) that describe `spec`; sized by depth when depth alone gives its
    blocks."""
    try:
        by_depth = NetSpec.model_validate({**spec.model_dump(exclude={"blocks", "name"}), "depth": spec.depth})
        size_by = "depth" if by_depth.blocks == spec.blocks else "blocks"
    except ValueError:
        size_by = "blocks"
    return [
        spec.name, spec.family, spec.unit, size_by, spec.depth, _list(spec.blocks), _list(spec.widths),
        spec.bottleneck_stride, spec.placement, spec.shortcut, spec.zero_init_residual, spec.stochastic_depth,
        spec.num_classes, spec.input_size, spec.in_channels,
    ]


def form_of(spec, current_family_values: list | None = None) -> list:
    """Every Build form value for `spec` of any family: kind, the ResNet fields, then the family fields.

    A ResNet keeps the family fields as they are (`current_family_values`) and vice versa, the shared
    fields (name, classes, input size and channels) aside.
    """
    family_values = list(current_family_values or [None] * len(FAMILY_FIELD_NAMES))
    if isinstance(spec, NetSpec):
        return [spec.kind, *fields_of(spec), *family_values]
    resnet = fields_of(get_preset(DEFAULT_PRESET).spec)
    for name in SHARED_FIELDS:
        resnet[FIELD_NAMES.index(name)] = getattr(spec, name)
    shown = family_form_values(spec)
    family_values = [shown.get(name, value) for name, value in zip(FAMILY_FIELD_NAMES, family_values, strict=True)]
    return [spec.kind, *resnet, *family_values]


@functools.lru_cache(maxsize=64)
def _cost_of(spec_json: str) -> NetworkCost:
    return network_cost(net_spec_from_json(spec_json))


def _family_line(spec) -> str:
    if isinstance(spec, NetSpec):
        return (f"{spec.family} / {spec.unit} units / widths {spec.widths} / placement `{spec.placement}` / "
                f"shortcut `{spec.shortcut}`")
    if isinstance(spec, DenseNetSpec):
        return (f"{spec.family} / {spec.variant} / growth rate k = {spec.growth_rate} / compression "
                f"{spec.compression:g} / first conv {spec.init_features} channels")
    if isinstance(spec, WideResNetSpec):
        return f"{spec.family} / WRN-{spec.depth}-{spec.widen_factor} / dropout {spec.dropout:g}"
    if isinstance(spec, ResNeXtSpec):
        return f"{spec.family} / ResNeXt {spec.cardinality}x{spec.bottleneck_width}d / stage widths {spec.widths}"
    if isinstance(spec, FractalNetSpec):
        drop = "local + global drop-path" if spec.drop_path else "no drop-path"
        evaluated = f"column {spec.eval_column}" if spec.eval_column else "all columns joined"
        return (f"FractalNet B={spec.blocks} C={spec.columns} / widths {spec.widths} / {drop} / evaluated with "
                f"{evaluated}")
    if isinstance(spec, RiRSpec):
        return (f"ResNet in ResNet / widths {spec.widths} (half residual, half transient stream) / "
                f"{spec.layers_per_block} generalized residual blocks per RiR block")
    return spec.outline()


def summary_markdown(spec, cost: NetworkCost) -> str:
    """Parameters, multiply-adds, depth and memory of a network of any family as Markdown."""
    summary = cost.summary
    expected = summary.get("expected_units")
    size = summary["input_size"]
    stochastic = (f"\n- **Expected units at training time:** {expected:.1f} of {summary['units']} (stochastic depth)"
                  if isinstance(spec, NetSpec) and spec.stochastic_depth > 0 and expected is not None else "")
    blocks = f"blocks {spec.blocks}" if isinstance(spec.blocks, list) else f"{spec.blocks} fractal blocks"
    return (
        f"### {spec.name}\n"
        f"{KINDS[spec.kind]}: {_family_line(spec)}\n\n"
        f"- **Parameters:** {summary['params']:,} ({summary['trainable_params']:,} trainable)\n"
        f"- **Multiply-adds:** {summary['macs'] / 1e6:,.2f} M per {size}x{size} image\n"
        f"- **Weighted depth:** {summary['depth']} layers ({summary['units']} units, {blocks})\n"
        f"- **Activation memory:** about {summary['activation_bytes'] / 2**20:,.0f} MiB at batch "
        f"{summary['activation_batch_size']}; training needs about {cost.training_bytes / 2**30:,.2f} GiB of "
        f"{cost.memory_bytes / 2**30:,.0f} GiB ({cost.memory_name}){stochastic}"
    )


def spec_of_form(kind: str, *values):
    """The network spec the form describes: the ResNet fields for kind resnet, else the family fields."""
    resnet = dict(zip(FIELD_NAMES, values[:len(FIELD_NAMES)], strict=True))
    if kind == "resnet":
        return net_spec_from_fields(**resnet)
    family = dict(zip(FAMILY_FIELD_NAMES, values[len(FIELD_NAMES):], strict=True))
    return family_spec_from_fields(kind, **{name: resnet[name] for name in SHARED_FIELDS}, **family)


def review_network(kind: str, *values):
    """Validate the form; return (error box, summary, stage table, path lengths, unit diagram, spec JSON)."""
    try:
        spec = spec_of_form(kind, *values)
        cost = _cost_of(spec.model_dump_json())
        problem = cost.problem()
        if problem:
            raise WorkbenchError(problem)
    except (WorkbenchError, ValueError, TypeError) as exc:
        message = f"**This network cannot be built:** {exc}"
        return (gr.update(value=message, visible=True), "*Fix the highlighted problem to see the summary.*",
                gr.skip(), gr.skip(), gr.skip(), "")
    summary = cost.summary
    stages = [[s["stage"], s["units"], " x ".join(map(str, s["output_shape"])), f"{s['params']:,}"]
              for s in summary["stages"]]
    paths = path_length_figure(summary["path_lengths"],
                               x_title=PATH_UNITS.get(spec.kind, "residual branches on a path"))
    return (gr.update(value="", visible=False), summary_markdown(spec, cost), stages, paths, unit_diagram(spec),
            json.dumps(spec.model_dump(mode="json"), indent=2))


def kind_visibility(kind: str) -> list:
    """Show the ResNet fields for kind resnet, else the family's own fields."""
    shown = FAMILY_FORMS.get(kind, ())
    return [gr.update(visible=kind == "resnet"), gr.update(visible=kind != "resnet"),
            *(gr.update(visible=name in shown) for name in FAMILY_FIELD_NAMES)]


def build_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> BuildTab:
    """Create the Build tab inside the current Blocks."""
    preset_names = [p.name for p in ctx.presets()]
    start = form_of(get_preset(DEFAULT_PRESET, ctx.home).spec)
    first = review_network(*start)
    resnet_start = dict(zip(FIELD_NAMES, start[1:], strict=False))

    def load_preset(name: str, *family_values) -> list:
        spec = get_preset(name, ctx.home).spec
        return [spec.name, *form_of(spec, list(family_values))]

    def switch_kind(kind: str, *family_values):
        preset_name = FAMILY_PRESETS[kind]
        return [preset_name, *load_preset(preset_name, *family_values)]

    def follow_name(preset_name: str, shown_name: str, kind: str, *values):
        """The name after an edit: the matching preset's, or a custom one, unless the user typed a name (the name
        field no longer holds the one this form put there, `shown_name`); (name field, shown name)."""
        if values[0] != shown_name:
            return gr.skip(), gr.skip()
        try:
            name = edited_name(spec_of_form(kind, *values), get_preset(preset_name, ctx.home), ctx.presets())
        except (WorkbenchError, ValueError, TypeError):
            return gr.skip(), gr.skip()
        return (gr.skip(), gr.skip()) if name == shown_name else (name, name)

    def save_network(name: str, spec_json: str):
        if not spec_json:
            return "Fix the network first: it cannot be saved while it is invalid.", gr.skip()
        try:
            preset = save_preset(str(name or "").strip(), net_spec_from_json(spec_json), ctx.home)
        except WorkbenchError as exc:
            return f"**Not saved:** {exc}", gr.skip()
        names = [p.name for p in ctx.presets()]
        return f"Saved as preset **{preset.name}**.", gr.update(choices=names, value=preset.name)

    with gr.Tab("Build", id="build"), gr.Row():
        with gr.Column(scale=1, min_width=360):
            preset = gr.Dropdown(preset_names, value=DEFAULT_PRESET, label="Preset", elem_id="preset-picker")
            kind = gr.Radio([(text, key) for key, text in KINDS.items()], value="resnet", label="Network kind",
                            elem_id="kind-picker")
            name = gr.Textbox(resnet_start["name"], label="Network name")
            with gr.Column(visible=True) as resnet_fields:
                with gr.Row():
                    family = gr.Radio(["cifar", "imagenet"], value=resnet_start["family"],
                                      label="Family (stem and stages)")
                    unit = gr.Radio(["basic", "bottleneck"], value=resnet_start["unit"], label="Unit")
                size_by = gr.Radio([("depth", "depth"), ("blocks per stage", "blocks")], value=resnet_start["size_by"],
                                   label="Size by")
                with gr.Row():
                    depth = number_field(resnet_start["depth"], label="Depth (weighted layers)", precision=0,
                                      elem_id="depth-field")
                    blocks = gr.Textbox(resnet_start["blocks"], label="Blocks per stage", elem_id="blocks-field")
                widths = gr.Textbox(resnet_start["widths"], label="Widths per stage", elem_id="widths-field")
                placement = gr.Dropdown([(f"{key}: {text}", key) for key, text in PLACEMENTS.items()],
                                        value=resnet_start["placement"], label="BN / ReLU placement")
                shortcut = gr.Dropdown([(f"{key}: {text}", key) for key, text in SHORTCUTS.items()],
                                       value=resnet_start["shortcut"], label="Shortcut")
                with gr.Row():
                    stride = gr.Radio(["3x3", "1x1"], value=resnet_start["bottleneck_stride"],
                                      label="Bottleneck stride on")
                    zero_init = gr.Checkbox(resnet_start["zero_init_residual"], label="Zero-init last BN of each unit")
                drop = number_field(resnet_start["stochastic_depth"], label="Stochastic depth (last unit's drop prob.)",
                                 minimum=0, maximum=0.95, step=0.05)
            with gr.Column(visible=False) as family_fields:
                family_components = _family_components()
            with gr.Row():
                classes = number_field(resnet_start["num_classes"], label="Classes", precision=0)
                input_size = number_field(resnet_start["input_size"], label="Input size (px)", precision=0)
                in_channels = number_field(resnet_start["in_channels"], label="Input channels", precision=0)
            with gr.Accordion("Save as a preset", open=False):
                with gr.Row():
                    preset_name = gr.Textbox(label="Preset name", placeholder="my-resnet", scale=3)
                    save = gr.Button("Save preset", scale=1)
                save_message = gr.Markdown(elem_id="save-message")
            shown_name = gr.State(resnet_start["name"])
        with gr.Column(scale=1, min_width=420):
            error = gr.Markdown(visible=False, elem_id="build-error", elem_classes=["error-box"])
            summary = gr.Markdown(first[1], elem_id="build-summary")
            stages = gr.Dataframe(first[2], headers=STAGE_COLUMNS, interactive=False, label="Stages")
            unit_plot = gr.Plot(first[4], label="One unit", elem_id="unit-diagram")
            paths_plot = gr.Plot(first[3], label="Path-length histogram", elem_id="path-lengths")
            with gr.Accordion("Spec (JSON)", open=False):
                spec_json = gr.Code(first[5], language="json", interactive=False, elem_id="spec-json")

    resnet_components = [name, family, unit, size_by, depth, blocks, widths, stride, placement, shortcut, zero_init,
                         drop, classes, input_size, in_channels]
    family_list = [family_components[field] for field in FAMILY_FIELD_NAMES]
    fields = [kind, *resnet_components, *family_list]
    review_outputs = [error, summary, stages, paths_plot, unit_plot, spec_json]
    visibility_outputs = [resnet_fields, family_fields, *family_list]
    gr.on([edited(field) for field in fields[2:]], follow_name, [preset, shown_name, *fields], [name, shown_name],
          trigger_mode="always_last", api_visibility="private").then(
        review_network, fields, review_outputs, api_name="review_network")
    edited(name)(review_network, fields, review_outputs, trigger_mode="always_last", api_visibility="private")
    preset.input(load_preset, [preset, *family_list], [shown_name, *fields], api_visibility="private").then(
        kind_visibility, kind, visibility_outputs, api_visibility="private").then(
        review_network, fields, review_outputs, api_visibility="private")
    kind.input(switch_kind, [kind, *family_list], [preset, shown_name, *fields], api_visibility="private").then(
        kind_visibility, kind, visibility_outputs, api_visibility="private").then(
        review_network, fields, review_outputs, api_visibility="private")
    save.click(save_network, [preset_name, spec_json], [save_message, preset], api_name="save_preset")
    demo.load(lambda: gr.update(choices=[p.name for p in ctx.presets()]), None, preset, api_visibility="private")
    return BuildTab(spec_json=spec_json, preset=preset)


def _family_components() -> dict[str, gr.components.Component]:
    """The fields of the non-ResNet families (each shown only for the families that have it)."""
    info = field_help
    hidden = {"visible": False}
    return {
        "net_family": gr.Radio(["cifar", "imagenet"], value="cifar", label="Family (stem and stages)", **hidden),
        "family_size_by": gr.Radio([("depth", "depth"), ("blocks per stage", "blocks")], value="depth",
                                   label="Size by", **hidden),
        "family_depth": gr.Number(None, label="Depth (weighted layers)", precision=0, elem_id="family-depth-field",
                                  **hidden),
        "family_blocks": gr.Textbox("", label="Units per stage (dense layers per block, RiR blocks per stage)",
                                    elem_id="family-blocks-field", **hidden),
        "growth_rate": gr.Number(None, label="Growth rate k", precision=0, elem_id="growth-rate-field",
                                 info=info(DenseNetSpec, "growth_rate"), **hidden),
        "bottleneck": gr.Checkbox(False, label="Bottleneck (B): 1x1 conv of 4k channels before each 3x3", **hidden),
        "compression": gr.Number(None, label="Compression θ of the transitions (C: 0.5)",
                                 info=info(DenseNetSpec, "compression"), **hidden),
        "drop_rate": gr.Number(0, label="Dropout after each dense layer", **hidden),
        "widen_factor": gr.Number(None, label="Widening factor k", precision=0, elem_id="widen-factor-field",
                                  info=info(WideResNetSpec, "widen_factor"), **hidden),
        "wrn_dropout": gr.Number(0, label="Dropout between the convs (paper: 0.3)", **hidden),
        "cardinality": gr.Number(None, label="Cardinality C", precision=0, elem_id="cardinality-field",
                                 info=info(ResNeXtSpec, "cardinality"), **hidden),
        "bottleneck_width": gr.Number(None, label="Bottleneck width d", precision=0,
                                      info=info(ResNeXtSpec, "bottleneck_width"), **hidden),
        "family_widths": gr.Textbox("", label="Widths per stage or block (empty: the family's)",
                                    elem_id="family-widths-field", **hidden),
        "fractal_blocks": gr.Number(None, label="Blocks B", precision=0, info=info(FractalNetSpec, "blocks"),
                                    **hidden),
        "columns": gr.Number(None, label="Columns C", precision=0, elem_id="columns-field",
                             info=info(FractalNetSpec, "columns"), **hidden),
        "fractal_dropout": gr.Textbox("", label="Dropout per block (empty: none)", **hidden),
        "drop_path": gr.Checkbox(False, label="Drop-path (local and global, alternating mini-batches)",
                                 elem_id="drop-path-field", **hidden),
        "local_drop_prob": gr.Number(0.15, label="Local drop-path probability per join input", **hidden),
        "eval_column": gr.Number(0, label="Evaluate with column (0: all joined)", precision=0, **hidden),
        "layers_per_block": gr.Number(None, label="Generalized residual blocks per RiR block", precision=0,
                                      info=info(RiRSpec, "layers_per_block"), **hidden),
    }
