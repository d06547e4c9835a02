"""Launch tab: dataset and training settings, and buttons for one run, a plain + residual twin, a depth ladder,
the placements, a stochastic-depth or drop-path pair, and several architectures side by side."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.service.forms import (
    FORM_FIELDS,
    field_choices,
    field_default,
    field_help,
    net_spec_from_json,
    parse_int_list,
)
from workbench.service.plans import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURES,
    DEFAULT_DROP_PROB,
    DEFAULT_LADDER_DEPTHS,
    SEEDS,
    plan_architectures,
    plan_drop_path,
    plan_ladder,
    plan_placements,
    plan_single,
    plan_stochastic_depth,
    plan_twin,
    with_seeds,
)
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import number_field
from workbench.ui.sweep_section import sweep_controls, wire_sweep_launch

DATASET_LABELS = {
    "synthetic": "Embedded synthetic set (no download)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "folder": "Image folder",
}
DATASETS = [(DATASET_LABELS.get(name, name), name) for name in field_choices(DataSpec, "name")]
LAUNCH_KINDS = ("run", "twin", "ladder", "placements", "stochastic_depth", "drop_path")
PAPER_VALIDATION_SIZE = 5000  # He et al. 2015, sec. 4.2: 45k training and 5k validation images of CIFAR-10


@dataclass
class LaunchTab:
    """`launched` holds {"group": name or None, "run_ids": [...]} of the latest launch."""

    launched: gr.State


@dataclass
class RunForm:
    """The data and training fields of a launch form; `components()` lists them in FORM_FIELDS order."""

    dataset: gr.Dropdown
    path: gr.Textbox
    download: gr.Checkbox
    classes: gr.Textbox
    per_class_cap: gr.Number
    resolution: gr.Number
    validation_size: gr.Number
    synthetic_train: gr.Number
    synthetic_test: gr.Number
    budget_unit: gr.Radio
    budget: gr.Number
    batch_size: gr.Number
    lr: gr.Number
    schedule: gr.Dropdown
    warmup: gr.Number
    seed: gr.Number
    precision: gr.Dropdown
    device: gr.Dropdown
    devices: gr.Number
    log_every: gr.Number
    eval_every: gr.Number
    grad_norm_every: gr.Number

    def components(self) -> list[gr.components.Component]:
        return [getattr(self, name) for name in FORM_FIELDS]


def network_line(spec_json: str):
    """The network the buttons would launch, and whether they may (one update per launch button)."""
    if not spec_json:
        text = "**The network in the Build tab is invalid.** Fix it there to launch."
        return [text] + [gr.update(interactive=False)] * len(LAUNCH_KINDS)
    try:
        spec = net_spec_from_json(spec_json)
    except WorkbenchError as exc:
        return [f"**The network in the Build tab is invalid:** {exc}"] + [gr.update(interactive=False)] * len(
            LAUNCH_KINDS)
    if isinstance(spec, NetSpec):
        outline = (f"{spec.unit} units, blocks {spec.blocks}, widths {spec.widths}, shortcut {spec.shortcut}, "
                   f"placement {spec.placement}")
    else:
        outline = spec.outline()
    text = f"Network: **{spec.name}** ({outline}); set it in the Build tab."
    return [text] + [gr.update(interactive=True)] * len(LAUNCH_KINDS)


def dataset_visibility(name: str):
    """Show only the fields that apply to the chosen dataset."""
    return (gr.update(visible=name == "synthetic"), gr.update(visible=name != "synthetic"),
            gr.update(visible=name in ("cifar10", "cifar100")), gr.update(visible=name == "folder"))


def launch(ctx: WorkbenchContext, kind: str, spec_json: str, *values):
    """Queue one run, a twin, a ladder, the five placements, a stochastic-depth or drop-path pair, or several
    architectures; returns (message, launched).

    `values` are the launch form's FORM_FIELDS in order, then the ladder depths, the drop probability, how many
    seeds each run is repeated with (several make a seed group of each run) and the presets of an architectures
    launch. Only the architectures launch does without the Build tab's network.
    """
    *form_values, ladder_depths, drop_prob, seeds, architectures = values
    if not spec_json and kind != "architectures":
        return "**Nothing launched:** the network in the Build tab is invalid; fix it there first.", gr.skip()
    try:
        data, train = ctx.specs_from_form(dict(zip(FORM_FIELDS, form_values, strict=True)))
        presets = ctx.presets()
        group = None
        if kind == "architectures":
            names = list(architectures or [])
            group = ctx.group_name(ARCHITECTURES, " vs ".join(names), data)
            plan = plan_architectures(names, data, train, group=group, home=ctx.home)
            name = names[0] if names else ""
        else:
            net = net_spec_from_json(spec_json)
            name = net.name
            if kind == "run":
                plan = plan_single(net, data, train, presets)
            else:
                group = ctx.group_name(kind.replace("_", " "), net.name, data)
                if kind == "twin":
                    plan = plan_twin(net, data, train, presets, group=group)
                elif kind == "ladder":
                    plan = plan_ladder(net, parse_int_list(ladder_depths, "ladder depths"), data, train, presets,
                                       group=group)
                elif kind == "placements":
                    plan = plan_placements(net, data, train, presets, group=group)
                elif kind == "drop_path":
                    plan = plan_drop_path(net, data, train, presets, group=group)
                else:
                    plan = plan_stochastic_depth(net, drop_prob, data, train, presets, group=group)
        seeds = int(seeds or 1)
        if seeds > 1 and group is None:
            group = ctx.group_name(SEEDS, name, data)
        plan = with_seeds(plan, seeds, group=group)
        run_ids = ctx.submit(plan)
    except (WorkbenchError, ValueError) as exc:
        return f"**Nothing launched:** {exc}", gr.skip()
    return _queued(run_ids, plan, group, data)


def estimate(ctx: WorkbenchContext, spec_json: str, *form_values) -> str:
    """How long a run of the Build tab's network with the form's settings should take, in words."""
    try:
        data, train = ctx.specs_from_form(dict(zip(FORM_FIELDS, form_values, strict=True)))
        text = ctx.estimate(RunSpec(net=net_spec_from_json(spec_json), data=data, train=train)).text()
    except (WorkbenchError, ValueError) as exc:
        return f"**No estimate:** {exc}"
    return f"**Estimated run time:** {text}"


def paper_split(dataset: str):
    """The paper's CIFAR split: 5,000 training images held out for validation (CIFAR-10 unless CIFAR is chosen)."""
    return (gr.update(value=dataset if dataset in ("cifar10", "cifar100") else "cifar10"),
            gr.update(value=PAPER_VALIDATION_SIZE))


def _queued(run_ids: list[int], plan: list, group: str | None, data: DataSpec):
    names = ", ".join(f"#{run_id} {run.name}" for run_id, run in zip(run_ids, plan, strict=True))
    where = f" as group *{group}*" if group else ""
    message = f"Queued {names}{where} on {data.name}. Follow them in the Runs and Compare tabs."
    return message, {"group": group, "run_ids": run_ids}


def run_form(ctx: WorkbenchContext, id_prefix: str = "", *, dataset: str = "synthetic", budget: float = 5,
             lr: float = 0.1) -> RunForm:
    """Create the Data and Training columns of a launch form inside the current Blocks.

    Element ids are `id_prefix` + a field name ("dataset-picker", "budget"...), so two tabs can hold a form each.
    """
    roots = ", ".join(f"`{root}`" for root in ctx.data_roots)
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### Data")
            dataset_picker = gr.Dropdown(DATASETS, value=dataset, label="Dataset", elem_id=f"{id_prefix}dataset-picker")
            with gr.Row(visible=dataset == "synthetic") as synthetic_row:
                synthetic_train = number_field(field_default(DataSpec, "synthetic_train"),
                                            label="Synthetic training images", precision=0,
                                            elem_id=f"{id_prefix}synthetic-train")
                synthetic_test = number_field(field_default(DataSpec, "synthetic_test"), label="Synthetic test images",
                                           precision=0,
                                           elem_id=f"{id_prefix}synthetic-test")
            with gr.Column(visible=dataset != "synthetic") as path_column:
                path = gr.Textbox(label="Path (archive or folder)", elem_id=f"{id_prefix}dataset-path",
                                  info=f"Must lie under the data folders: {roots}. Relative paths are looked "
                                       "up there.")
            with gr.Column(visible=dataset in ("cifar10", "cifar100")) as cifar_column:
                download = gr.Checkbox(False, label="Download when not found")
            with gr.Column(visible=dataset == "folder") as folder_column:
                resolution = number_field(0, label="Resolution in px (0 = as stored)", precision=0,
                                       elem_id=f"{id_prefix}resolution")
            with gr.Row():
                classes = gr.Textbox(label="Classes", placeholder="all; or first k (5); or names: cat, dog",
                                     info="ImageNet-style folders: WordNet ids or words (n01440764 or tench)")
                per_class_cap = number_field(0, label="Images per class (0 = all)", precision=0,
                                          elem_id=f"{id_prefix}per-class-cap")
                validation_size = number_field(field_default(DataSpec, "validation_size"), label="Validation images",
                                            precision=0, info=field_help(DataSpec, "validation_size"),
                                            elem_id=f"{id_prefix}validation-size")
        with gr.Column():
            gr.Markdown("#### Training")
            with gr.Row():
                budget_unit = gr.Radio(["epochs", "iterations"], value="epochs", label="Budget in",
                                       elem_id=f"{id_prefix}budget-unit")
                budget_field = number_field(budget, label="Budget", elem_id=f"{id_prefix}budget")
            with gr.Row():
                batch_size = number_field(field_default(TrainSpec, "batch_size"), label="Batch size", precision=0,
                                       elem_id=f"{id_prefix}batch-size")
                lr_field = number_field(lr, label="Learning rate", elem_id=f"{id_prefix}lr")
                schedule = gr.Dropdown(field_choices(TrainSpec, "schedule"), value=field_default(TrainSpec, "schedule"),
                                       label="Schedule")
            with gr.Row():
                warmup = number_field(field_default(TrainSpec, "warmup_iterations"), label="Warm-up iterations",
                                   precision=0, info=field_help(TrainSpec, "warmup_iterations"))
                seed = number_field(field_default(TrainSpec, "seed"), label="Seed", precision=0)
            with gr.Row():
                precision = gr.Dropdown(field_choices(TrainSpec, "precision"),
                                        value=field_default(TrainSpec, "precision"), label="Precision")
                device = gr.Dropdown(field_choices(TrainSpec, "device"), value=field_default(TrainSpec, "device"),
                                     label="Device")
                devices = number_field(field_default(TrainSpec, "devices"), label="Devices", precision=0,
                                       elem_id=f"{id_prefix}devices", info=field_help(TrainSpec, "devices"))
            with gr.Row():
                log_every = number_field(field_default(TrainSpec, "log_every"), label="Log every (iterations)",
                                      precision=0, elem_id=f"{id_prefix}log-every",
                                      info=field_help(TrainSpec, "log_every"))
                eval_every = number_field(0, label="Extra evaluation every (0 = at epoch ends only)", precision=0)
                grad_norm_every = number_field(field_default(TrainSpec, "grad_norm_every"),
                                               label="Per-unit gradient norms every (iterations, 0 = never)",
                                               precision=0, elem_id=f"{id_prefix}grad-norm-every",
                                               info="for the Analysis tab's gradient flow during training")
    dataset_picker.change(dataset_visibility, dataset_picker, [synthetic_row, path_column, cifar_column, folder_column],
                          api_visibility="private")
    return RunForm(
        dataset=dataset_picker, path=path, download=download, classes=classes, per_class_cap=per_class_cap,
        resolution=resolution, validation_size=validation_size, synthetic_train=synthetic_train,
        synthetic_test=synthetic_test, budget_unit=budget_unit, budget=budget_field, batch_size=batch_size, lr=lr_field,
        schedule=schedule, warmup=warmup, seed=seed, precision=precision, device=device, devices=devices,
        log_every=log_every, eval_every=eval_every, grad_norm_every=grad_norm_every,
    )


def launch_tab(ctx: WorkbenchContext, spec_json: gr.Code) -> LaunchTab:
    """Create the Launch tab inside the current Blocks; `spec_json` is the Build tab's network."""
    with gr.Tab("Launch", id="launch"):
        network = gr.Markdown(network_line(spec_json.value)[0], elem_id="launch-network")
        form = run_form(ctx)
        with gr.Row():
            launch_run = gr.Button("Launch run", variant="secondary", elem_id="launch-run")
            launch_twin = gr.Button("Launch plain + residual twin", variant="primary", elem_id="launch-twin")
            with gr.Column():
                ladder_depths = gr.Textbox(", ".join(map(str, DEFAULT_LADDER_DEPTHS)), label="Ladder depths")
                launch_ladder = gr.Button("Launch depth ladder (each depth with its twin)", elem_id="launch-ladder")
        with gr.Row():
            launch_placements = gr.Button("Launch the five unit placements (He et al. 2016, Fig. 4)",
                                          elem_id="launch-placements")
            with gr.Column():
                drop_prob = number_field(DEFAULT_DROP_PROB, minimum=0, maximum=1, label="Last unit's drop probability",
                                      elem_id="drop-prob")
                launch_sd = gr.Button("Launch without and with stochastic depth", elem_id="launch-stochastic-depth")
            launch_drop_path = gr.Button("Launch a FractalNet without and with drop-path (Larsson et al. 2016)",
                                         elem_id="launch-drop-path")
        seeds = gr.Number(1, minimum=1, maximum=100, precision=0, label="Seeds: repeat each run with this many seeds",
                          info="from the seed above up; Compare draws each seed group as a mean with a band",
                          elem_id="launch-seeds")
        with gr.Row():
            architectures = gr.Dropdown([p.name for p in ctx.presets()], value=list(DEFAULT_ARCHITECTURES),
                                        multiselect=True, label="Architectures (presets of any family)",
                                        elem_id="architectures-picker", scale=3)
            launch_architectures = gr.Button("Launch architectures side by side (same data, order and seed)",
                                             elem_id="launch-architectures", scale=1)
        sweep = sweep_controls()
        message = gr.Markdown(elem_id="launch-message")
        with gr.Row():
            split_button = gr.Button("Paper's 45k/5k split (CIFAR, He et al. 2015 sec. 4.2)", elem_id="paper-split",
                                     size="sm", scale=1)
            estimate_button = gr.Button("Estimate run time", elem_id="estimate-run", size="sm", scale=1)
            estimate_text = gr.Markdown(elem_id="launch-estimate")
        launched = gr.State(None)

    inputs = [spec_json, *form.components(), ladder_depths, drop_prob, seeds, architectures]
    buttons = {"run": launch_run, "twin": launch_twin, "ladder": launch_ladder, "placements": launch_placements,
               "stochastic_depth": launch_sd, "drop_path": launch_drop_path}
    launch_architectures.click(functools.partial(launch, ctx, "architectures"), inputs, [message, launched],
                               api_name="launch_architectures")
    for kind, button in buttons.items():
        button.click(functools.partial(launch, ctx, kind), inputs, [message, launched], api_name=f"launch_{kind}")
    spec_json.change(network_line, spec_json, [network, *buttons.values()], api_visibility="private")
    split_button.click(paper_split, form.dataset, [form.dataset, form.validation_size], api_visibility="private")
    estimate_button.click(functools.partial(estimate, ctx), [spec_json, *form.components()], estimate_text,
                          api_name="estimate_run", concurrency_limit=1)
    wire_sweep_launch(ctx, sweep, [spec_json, *form.components()], message, launched)
    return LaunchTab(launched=launched)
