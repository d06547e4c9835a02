"""Build tab: a preset picker, every NetSpec field, and a live summary of the network they describe."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.presets import get_preset, save_preset
from workbench.service.checks import NetworkCost, network_cost
from workbench.service.forms import net_spec_from_fields, net_spec_from_json
from workbench.spec import PLACEMENTS, SHORTCUTS, NetSpec
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import number_field
from workbench.viz.charts import path_length_figure, unit_diagram_figure

DEFAULT_PRESET = "resnet20"
STAGE_COLUMNS = ["stage", "units", "output (C x H x W)", "parameters"]
FIELD_NAMES = (
    "name", "family", "unit", "size_by", "depth", "blocks", "widths", "bottleneck_stride", "placement",
    "shortcut", "zero_init_residual", "stochastic_depth", "num_classes", "input_size", "in_channels",
)


@dataclass
class BuildTab:
    """Components other tabs use: the current network as JSON (empty while the form is invalid)."""

    spec_json: gr.Code
    preset: gr.Dropdown


def _list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def fields_of(spec: NetSpec) -> list:
    """Form values (in FIELD_NAMES order) that describe `spec`; sized by depth when depth alone gives its blocks."""
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


@functools.lru_cache(maxsize=64)
def _cost_of(spec_json: str) -> NetworkCost:
    return network_cost(NetSpec.model_validate_json(spec_json))


def summary_markdown(spec: NetSpec, cost: NetworkCost) -> str:
    """Parameters, multiply-adds, depth and memory of a network as Markdown."""
    summary = cost.summary
    expected = summary.get("expected_units")
    size = summary["input_size"]
    stochastic = (f"\n- **Expected units at training time:** {expected:.1f} of {summary['units']} (stochastic depth)"
                  if spec.stochastic_depth > 0 and expected is not None else "")
    return (
        f"### {spec.name}\n"
        f"{spec.family} / {spec.unit} units / placement `{spec.placement}` / shortcut `{spec.shortcut}`\n\n"
        f"- **Parameters:** {summary['params']:,} ({summary['trainable_params']:,} trainable)\n"
        f"- **Multiply-adds:** {summary['macs'] / 1e6:,.2f} M per {size}x{size} image\n"
        f"- **Weighted depth:** {summary['depth']} layers ({summary['units']} units, blocks {spec.blocks})\n"
        f"- **Activation memory:** about {summary['activation_bytes'] / 2**20:,.0f} MiB at batch "
        f"{summary['activation_batch_size']}; training needs about {cost.training_bytes / 2**30:,.2f} GiB of "
        f"{cost.memory_bytes / 2**30:,.0f} GiB ({cost.memory_name}){stochastic}"
    )


def review_network(*values):
    """Validate the form; return (error box, summary, stage table, path lengths, unit diagram, spec JSON)."""
    form = dict(zip(FIELD_NAMES, values, strict=True))
    try:
        spec = net_spec_from_fields(**form)
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
    return (gr.update(value="", visible=False), summary_markdown(spec, cost), stages,
            path_length_figure(summary["path_lengths"]), unit_diagram_figure(spec),
            json.dumps(spec.model_dump(mode="json"), indent=2))


def build_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> BuildTab:
    """Create the Build tab inside the current Blocks."""
    preset_names = [p.name for p in ctx.presets()]
    start = fields_of(get_preset(DEFAULT_PRESET, ctx.home).spec)
    first = review_network(*start)

    def load_preset(name: str) -> list:
        return fields_of(get_preset(name, ctx.home).spec)

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
            name = gr.Textbox(start[0], label="Network name")
            with gr.Row():
                family = gr.Radio(["cifar", "imagenet"], value=start[1], label="Family (stem and stages)")
                unit = gr.Radio(["basic", "bottleneck"], value=start[2], label="Unit")
            size_by = gr.Radio([("depth", "depth"), ("blocks per stage", "blocks")], value=start[3],
                               label="Size by")
            with gr.Row():
                depth = number_field(start[4], label="Depth (weighted layers)", precision=0, elem_id="depth-field")
                blocks = gr.Textbox(start[5], label="Blocks per stage", elem_id="blocks-field")
            widths = gr.Textbox(start[6], label="Widths per stage", elem_id="widths-field")
            placement = gr.Dropdown([(f"{key}: {text}", key) for key, text in PLACEMENTS.items()],
                                    value=start[8], label="BN / ReLU placement")
            shortcut = gr.Dropdown([(f"{key}: {text}", key) for key, text in SHORTCUTS.items()],
                                   value=start[9], label="Shortcut")
            with gr.Row():
                stride = gr.Radio(["3x3", "1x1"], value=start[7], label="Bottleneck stride on")
                zero_init = gr.Checkbox(start[10], label="Zero-init last BN of each unit")
            with gr.Row():
                drop = number_field(start[11], label="Stochastic depth (last unit's drop prob.)",
                                 minimum=0, maximum=0.95, step=0.05)
                classes = number_field(start[12], label="Classes", precision=0)
            with gr.Row():
                input_size = number_field(start[13], label="Input size (px)", precision=0)
                in_channels = number_field(start[14], label="Input channels", precision=0)
            with gr.Accordion("Save as a preset", open=False):
                with gr.Row():
                    preset_name = gr.Textbox(label="Preset name", placeholder="my-resnet", scale=3)
                    save = gr.Button("Save preset", scale=1)
                save_message = gr.Markdown(elem_id="save-message")
        with gr.Column(scale=1, min_width=420):
            error = gr.Markdown(visible=False, elem_id="build-error", elem_classes=["error-box"])
            summary = gr.Markdown(first[1], elem_id="build-summary")
            stages = gr.Dataframe(first[2], headers=STAGE_COLUMNS, interactive=False, label="Stages")
            unit_plot = gr.Plot(first[4], label="One unit", elem_id="unit-diagram")
            paths_plot = gr.Plot(first[3], label="Path-length histogram")
            with gr.Accordion("Spec (JSON)", open=False):
                spec_json = gr.Code(first[5], language="json", interactive=False, elem_id="spec-json")

    fields = [name, family, unit, size_by, depth, blocks, widths, stride, placement, shortcut, zero_init, drop,
              classes, input_size, in_channels]
    review_outputs = [error, summary, stages, paths_plot, unit_plot, spec_json]
    gr.on([field.input for field in fields], review_network, inputs=fields, outputs=review_outputs,
          trigger_mode="always_last", api_name="review_network")
    preset.input(load_preset, preset, fields, api_visibility="private").then(
        review_network, fields, review_outputs, api_visibility="private")
    save.click(save_network, [preset_name, spec_json], [save_message, preset], api_name="save_preset")
    demo.load(lambda: gr.update(choices=[p.name for p in ctx.presets()]), None, preset, api_visibility="private")
    return BuildTab(spec_json=spec_json, preset=preset)
