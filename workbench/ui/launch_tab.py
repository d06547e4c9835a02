"""Launch tab: dataset and training settings, and buttons for one run, a plain + residual twin, or a depth ladder."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.launch import (
    DEFAULT_LADDER_DEPTHS,
    check_data_source,
    data_spec_from_fields,
    default_group_name,
    parse_int_list,
    plan_ladder,
    plan_single,
    plan_twin,
    submit_plan,
    train_spec_from_fields,
    unique_group_name,
)
from workbench.spec import NetSpec
from workbench.ui.context import WorkbenchContext

DATASETS = [
    ("Embedded synthetic set (no download)", "synthetic"),
    ("CIFAR-10", "cifar10"),
    ("CIFAR-100", "cifar100"),
    ("Image folder", "folder"),
]
LAUNCH_KINDS = ("run", "twin", "ladder")


@dataclass
class LaunchTab:
    """`launched` holds {"group": name or None, "run_ids": [...]} of the latest launch."""

    launched: gr.State


def network_line(spec_json: str):
    """The network the buttons would launch, and whether they may (three button updates)."""
    if not spec_json:
        text = "**The network in the Build tab is invalid.** Fix it there to launch."
        return [text] + [gr.update(interactive=False)] * 3
    spec = NetSpec.model_validate_json(spec_json)
    text = (f"Network: **{spec.name}** ({spec.unit} units, blocks {spec.blocks}, widths {spec.widths}, "
            f"shortcut {spec.shortcut}); set it in the Build tab.")
    return [text] + [gr.update(interactive=True)] * 3


def dataset_visibility(name: str):
    """Show only the fields that apply to the chosen dataset."""
    return (gr.update(visible=name == "synthetic"), gr.update(visible=name != "synthetic"),
            gr.update(visible=name in ("cifar10", "cifar100")), gr.update(visible=name == "folder"))


def launch(ctx: WorkbenchContext, kind: str, spec_json: str, dataset: str, path: str, download: bool, classes: str,
           per_class_cap, resolution, validation_size, synthetic_train, synthetic_test, budget_unit: str, budget,
           batch_size, lr, schedule: str, warmup, seed, precision: str, device: str, log_every, eval_every,
           ladder_depths: str):
    """Queue one run, a twin or a ladder; returns (message, launched)."""
    if not spec_json:
        return "**Nothing launched:** the network in the Build tab is invalid; fix it there first.", gr.skip()
    try:
        net = NetSpec.model_validate_json(spec_json)
        data = data_spec_from_fields(
            name=dataset, path=path, download=download, classes=classes, per_class_cap=per_class_cap,
            resolution=resolution, validation_size=validation_size, synthetic_train=synthetic_train,
            synthetic_test=synthetic_test, seed=seed,
        )
        train = train_spec_from_fields(
            budget_unit=budget_unit, budget=budget, batch_size=batch_size, lr=lr, schedule=schedule,
            warmup_iterations=warmup, seed=seed, precision=precision, device=device, log_every=log_every,
            eval_every=eval_every,
        )
        check_data_source(data, ctx.home, ctx.data_roots)
        presets = ctx.presets()
        group = None
        if kind == "run":
            plan = plan_single(net, data, train, presets)
        else:
            taken = [name for name, _ in ctx.store.list_groups()]
            group = unique_group_name(default_group_name(kind, net, data), taken)
            if kind == "twin":
                plan = plan_twin(net, data, train, presets, group=group)
            else:
                plan = plan_ladder(net, parse_int_list(ladder_depths, "ladder depths"), data, train, presets,
                                   group=group)
        run_ids = submit_plan(ctx.executor, plan)
    except (WorkbenchError, ValueError) as exc:
        return f"**Nothing launched:** {exc}", gr.skip()
    names = ", ".join(f"#{run_id} {run.name}" for run_id, run in zip(run_ids, plan, strict=True))
    where = f" as group *{group}*" if group else ""
    message = f"Queued {names}{where} on {data.name}. Follow them in the Runs and Compare tabs."
    return message, {"group": group, "run_ids": run_ids}


def launch_tab(ctx: WorkbenchContext, spec_json: gr.Code) -> LaunchTab:
    """Create the Launch tab inside the current Blocks; `spec_json` is the Build tab's network."""
    roots = ", ".join(f"`{root}`" for root in ctx.data_roots)
    with gr.Tab("Launch", id="launch"):
        network = gr.Markdown(network_line(spec_json.value)[0], elem_id="launch-network")
        with gr.Row():
            with gr.Column():
                gr.Markdown("#### Data")
                dataset = gr.Dropdown(DATASETS, value="synthetic", label="Dataset", elem_id="dataset-picker")
                with gr.Row() as synthetic_row:
                    synthetic_train = gr.Number(10000, label="Synthetic training images", precision=0,
                                                elem_id="synthetic-train")
                    synthetic_test = gr.Number(2000, label="Synthetic test images", precision=0,
                                               elem_id="synthetic-test")
                with gr.Column(visible=False) as path_column:
                    path = gr.Textbox(label="Path (archive or folder)",
                                      info=f"Must lie under the data folders: {roots}. Relative paths are looked "
                                           "up there.")
                with gr.Column(visible=False) as cifar_column:
                    download = gr.Checkbox(False, label="Download when not found")
                with gr.Column(visible=False) as folder_column:
                    resolution = gr.Number(0, label="Resolution in px (0 = as stored)", precision=0)
                with gr.Row():
                    classes = gr.Textbox(label="Classes", placeholder="all; or first k (5); or names: cat, dog")
                    per_class_cap = gr.Number(0, label="Images per class (0 = all)", precision=0)
                    validation_size = gr.Number(0, label="Validation images", precision=0)
            with gr.Column():
                gr.Markdown("#### Training")
                with gr.Row():
                    budget_unit = gr.Radio(["epochs", "iterations"], value="epochs", label="Budget in")
                    budget = gr.Number(5, label="Budget", elem_id="budget")
                with gr.Row():
                    batch_size = gr.Number(128, label="Batch size", precision=0, elem_id="batch-size")
                    lr = gr.Number(0.1, label="Learning rate")
                    schedule = gr.Dropdown(["step", "cosine", "constant"], value="step", label="Schedule")
                with gr.Row():
                    warmup = gr.Number(0, label="Warm-up iterations", precision=0)
                    seed = gr.Number(0, label="Seed", precision=0)
                with gr.Row():
                    precision = gr.Dropdown(["auto", "fp32", "bf16"], value="auto", label="Precision")
                    device = gr.Dropdown(["auto", "cpu", "cuda", "mps"], value="auto", label="Device")
                with gr.Row():
                    log_every = gr.Number(20, label="Log every (iterations)", precision=0, elem_id="log-every")
                    eval_every = gr.Number(0, label="Extra evaluation every (0 = at epoch ends only)",
                                           precision=0)
        with gr.Row():
            launch_run = gr.Button("Launch run", variant="secondary", elem_id="launch-run")
            launch_twin = gr.Button("Launch plain + residual twin", variant="primary", elem_id="launch-twin")
            with gr.Column():
                ladder_depths = gr.Textbox(", ".join(map(str, DEFAULT_LADDER_DEPTHS)), label="Ladder depths")
                launch_ladder = gr.Button("Launch depth ladder (each depth with its twin)", elem_id="launch-ladder")
        message = gr.Markdown(elem_id="launch-message")
        launched = gr.State(None)

    inputs = [spec_json, dataset, path, download, classes, per_class_cap, resolution, validation_size,
              synthetic_train, synthetic_test, budget_unit, budget, batch_size, lr, schedule, warmup, seed,
              precision, device, log_every, eval_every, ladder_depths]
    buttons = {"run": launch_run, "twin": launch_twin, "ladder": launch_ladder}
    for kind, button in buttons.items():
        button.click(functools.partial(launch, ctx, kind), inputs, [message, launched], api_name=f"launch_{kind}")
    spec_json.change(network_line, spec_json, [network, launch_run, launch_twin, launch_ladder],
                     api_visibility="private")
    dataset.change(dataset_visibility, dataset, [synthetic_row, path_column, cifar_column, folder_column],
                   api_visibility="private")
    return LaunchTab(launched=launched)
