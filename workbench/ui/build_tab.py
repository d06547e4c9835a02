"""Build tab: pick a preset and see its parameters, multiply-adds and depth before training."""

from __future__ import annotations

import gradio as gr

from workbench import summarize
from workbench.errors import WorkbenchError
from workbench.presets import get_preset, list_presets


def summary_markdown(preset_name: str) -> str:
    """Markdown summary of a preset, or the builder's message when it cannot be built."""
    try:
        preset = get_preset(preset_name)
        summary = summarize(preset.spec)
    except WorkbenchError as exc:
        return f"**Cannot build this network:** {exc}"
    spec = preset.spec
    reference = f"{preset.reference_error:.2f}%" if preset.reference_error is not None else "not reported"
    rows = "\n".join(
        f"| {s['stage']} | {s['units']} | {'x'.join(map(str, s['output_shape']))} | {s['params']:,} |"
        for s in summary["stages"]
    )
    return (
        f"### {preset.name}\n"
        f"{spec.family} / {spec.unit} / placement `{spec.placement}` / shortcut `{spec.shortcut}`\n\n"
        f"- **Parameters:** {summary['params']:,}\n"
        f"- **Multiply-adds:** {summary['macs'] / 1e6:,.1f} M per {summary['input_size']}px image\n"
        f"- **Weighted depth:** {summary['depth']} ({summary['units']} units)\n"
        f"- **Paper error:** {reference} ({preset.source})\n\n"
        f"| stage | units | output | params |\n|---|---|---|---|\n{rows}\n"
    )


def build_tab() -> None:
    """Create the Build tab's components inside the current Blocks context."""
    names = [p.name for p in list_presets()]
    with gr.Row():
        preset = gr.Dropdown(names, value="resnet20", label="Preset")
    summary = gr.Markdown(summary_markdown("resnet20"))
    preset.change(summary_markdown, inputs=preset, outputs=summary)
