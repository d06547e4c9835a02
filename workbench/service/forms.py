"""The launch form, once: its fields, their choices and defaults read from the pydantic specs, and the
parsing of form values (UI text fields, CLI flags) into specs with readable errors."""

from __future__ import annotations

import json
import math
import typing
from typing import Any

from pydantic import BaseModel

from workbench.errors import SpecError
from workbench.spec import MAX_SEED, DataSpec, NetSpec, NetworkSpec, TrainSpec, parse_net, parse_spec


def field_choices(model: type[BaseModel], name: str) -> list[str]:
    """The allowed values of a Literal field of a spec (what a dropdown or a CLI `choices=` offers)."""
    annotation = model.model_fields[name].annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    literal = next((arg for arg in args if typing.get_origin(arg) is typing.Literal), annotation)
    return list(typing.get_args(literal))


def field_default(model: type[BaseModel], name: str) -> Any:
    """A spec field's default value."""
    return model.model_fields[name].get_default(call_default_factory=True)


def field_help(model: type[BaseModel], name: str) -> str | None:
    """A spec field's description (the UI's info text and the CLI's help)."""
    return model.model_fields[name].description


def parse_int_list(text: str, what: str) -> list[int]:
    """"3, 3, 3" (or "3 3 3", "[3,3,3]") as [3, 3, 3]; SpecError naming `what` otherwise."""
    cleaned = str(text).strip().strip("[]()")
    parts = [part for part in cleaned.replace(",", " ").split() if part]
    if not parts:
        raise SpecError(f"{what}: give whole numbers separated by commas, for example 3, 3, 3")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise SpecError(f"{what}: {text!r} is not a list of whole numbers; write for example 3, 3, 3") from None


def parse_classes(text: str | None) -> int | list[str] | None:
    """Class selection from a text field: empty for all, a number for the first k, or names separated by commas."""
    cleaned = (text or "").strip()
    if not cleaned:
        return None
    if cleaned.isdigit():
        return int(cleaned)
    names = [name.strip() for name in cleaned.split(",") if name.strip()]
    return names or None


def _number(value: Any, what: str) -> float | None:
    """A finite number from a form value (a number or its text); SpecError naming `what` otherwise."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{what}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise SpecError(f"{what} must be a finite number; got {value}")
    return number


def whole_number(value: Any, what: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value, what)
    if number is None:
        return None
    if number != int(number):
        raise SpecError(f"{what} must be a whole number; got {value}")
    return int(number)


def parse_id(value: Any, what: str = "run id") -> int:
    """A run or analysis id from a form value or a CLI argument; SpecError when it cannot name one."""
    number = whole_number(value, what)
    if number is None or not 1 <= number <= MAX_SEED:
        raise SpecError(f"{what} must be a whole number from 1 to {MAX_SEED:,}; got {str(value)[:40]!r}; "
                        "pick one from the list")
    return number


def net_spec_from_json(text: str | None) -> NetworkSpec:
    """The network spec of any family in a JSON text (the Build tab's spec, or an API caller's); SpecError when
    it is not one."""
    try:
        data = json.loads(text or "")
    except (json.JSONDecodeError, TypeError) as exc:
        raise SpecError(f"the network spec is not valid JSON ({exc}); build the network in the Build tab") from None
    if not isinstance(data, dict):
        raise SpecError("the network spec must be a JSON object of network fields, as the Build tab shows it")
    return parse_net(data)


def net_spec_from_fields(
    *,
    name: str,
    family: str,
    unit: str,
    size_by: str,
    depth: Any,
    blocks: str,
    widths: str,
    bottleneck_stride: str,
    placement: str,
    shortcut: str,
    zero_init_residual: bool,
    stochastic_depth: Any,
    num_classes: Any,
    input_size: Any,
    in_channels: Any,
) -> NetSpec:
    """The NetSpec a Build form describes; `size_by` ("depth" or "blocks") says which of the two counts."""
    data: dict[str, Any] = {
        "name": (name or "").strip() or "custom",
        "family": family,
        "unit": unit,
        "widths": parse_int_list(widths, "widths"),
        "bottleneck_stride": bottleneck_stride,
        "placement": placement,
        "shortcut": shortcut,
        "zero_init_residual": bool(zero_init_residual),
        "stochastic_depth": _number(stochastic_depth, "stochastic depth") or 0.0,
        "num_classes": whole_number(num_classes, "classes"),
        "input_size": whole_number(input_size, "input size"),
        "in_channels": whole_number(in_channels, "input channels"),
    }
    if size_by == "depth":
        data["depth"] = whole_number(depth, "depth")
        if data["depth"] is None:
            raise SpecError("depth: give the number of weighted layers, for example 20 or 56")
    else:
        data["blocks"] = parse_int_list(blocks, "blocks per stage")
    return parse_spec(NetSpec, {key: value for key, value in data.items() if value is not None})


def data_spec_from_fields(
    *,
    name: str,
    path: str | None = None,
    download: bool = False,
    classes: str | None = None,
    per_class_cap: Any = None,
    resolution: Any = None,
    validation_size: Any = 0,
    synthetic_train: Any = None,
    synthetic_test: Any = None,
    seed: Any = 0,
) -> DataSpec:
    """The DataSpec of a Launch form; fields that do not apply to the chosen dataset are ignored."""
    data: dict[str, Any] = {
        "name": name,
        "classes": parse_classes(classes),
        "per_class_cap": whole_number(per_class_cap, "per-class cap") or None,
        "validation_size": whole_number(validation_size, "validation size") or 0,
        "seed": whole_number(seed, "seed") or 0,
    }
    if name == "synthetic":
        data["synthetic_train"] = whole_number(synthetic_train, "synthetic training images")
        data["synthetic_test"] = whole_number(synthetic_test, "synthetic test images")
    else:
        data["path"] = (path or "").strip() or None
    if name in ("cifar10", "cifar100"):
        data["download"] = bool(download)
    if name == "folder":
        data["resolution"] = whole_number(resolution, "resolution") or None
    return parse_spec(DataSpec, {key: value for key, value in data.items() if value is not None})


def train_spec_from_fields(
    *,
    budget_unit: str,
    budget: Any,
    batch_size: Any,
    lr: Any,
    schedule: str,
    warmup_iterations: Any = 0,
    seed: Any = 0,
    precision: str = "auto",
    device: str = "auto",
    devices: Any = 1,
    log_every: Any = None,
    eval_every: Any = None,
    grad_norm_every: Any = None,
) -> TrainSpec:
    """The TrainSpec of a Launch form; the budget is in "epochs" or "iterations"."""
    if budget is None or budget == "":
        raise SpecError(f"budget: give the number of {budget_unit}")
    data: dict[str, Any] = {
        "batch_size": whole_number(batch_size, "batch size"),
        "lr": _number(lr, "learning rate"),
        "schedule": schedule,
        "warmup_iterations": whole_number(warmup_iterations, "warm-up iterations") or 0,
        "seed": whole_number(seed, "seed") or 0,
        "precision": precision,
        "device": device,
        "devices": whole_number(devices, "devices"),
        "log_every": whole_number(log_every, "log every") or None,
        "eval_every": whole_number(eval_every, "evaluate every") or None,
        "grad_norm_every": whole_number(grad_norm_every, "gradient norms every") or None,
    }
    if budget_unit == "iterations":
        data["iterations"] = whole_number(budget, "iterations")
    else:
        data["epochs"] = _number(budget, "epochs")
    return parse_spec(TrainSpec, {key: value for key, value in data.items() if value is not None})


FORM_FIELDS = (
    "dataset", "path", "download", "classes", "per_class_cap", "resolution", "validation_size", "synthetic_train",
    "synthetic_test", "budget_unit", "budget", "batch_size", "lr", "schedule", "warmup", "seed", "precision",
    "device", "devices", "log_every", "eval_every", "grad_norm_every",
)


def specs_from_form(
    *,
    dataset: str,
    path: str | None,
    download: bool,
    classes: str | None,
    per_class_cap: Any,
    resolution: Any,
    validation_size: Any,
    synthetic_train: Any,
    synthetic_test: Any,
    budget_unit: str,
    budget: Any,
    batch_size: Any,
    lr: Any,
    schedule: str,
    warmup: Any,
    seed: Any,
    precision: str,
    device: str,
    log_every: Any,
    eval_every: Any,
    devices: Any = 1,
    grad_norm_every: Any = None,
) -> tuple[DataSpec, TrainSpec]:
    """The DataSpec and TrainSpec of a launch form (fields as in FORM_FIELDS); one seed drives both."""
    data = data_spec_from_fields(
        name=dataset, path=path, download=download, classes=classes, per_class_cap=per_class_cap,
        resolution=resolution, validation_size=validation_size, synthetic_train=synthetic_train,
        synthetic_test=synthetic_test, seed=seed,
    )
    train = train_spec_from_fields(
        budget_unit=budget_unit, budget=budget, batch_size=batch_size, lr=lr, schedule=schedule,
        warmup_iterations=warmup, seed=seed, precision=precision, device=device, devices=devices,
        log_every=log_every, eval_every=eval_every, grad_norm_every=grad_norm_every,
    )
    return data, train


# ---------------------------------------------------------------- the Build form of the other families

#: Build-form fields of the non-ResNet families: form name -> (spec field, how the form holds it).
#: "ints"/"floats" are comma-separated text (empty: the family's default), "column" is 0 for all columns.
FAMILY_FORM_FIELDS: dict[str, tuple[str, str]] = {
    "net_family": ("family", "choice"),
    "family_size_by": ("", "size_by"),
    "family_depth": ("depth", "int"),
    "family_blocks": ("blocks", "ints"),
    "growth_rate": ("growth_rate", "int"),
    "bottleneck": ("bottleneck", "bool"),
    "compression": ("compression", "float"),
    "drop_rate": ("drop_rate", "float"),
    "widen_factor": ("widen_factor", "int"),
    "wrn_dropout": ("dropout", "float"),
    "cardinality": ("cardinality", "int"),
    "bottleneck_width": ("bottleneck_width", "int"),
    "family_widths": ("widths", "ints"),
    "fractal_blocks": ("blocks", "int"),
    "columns": ("columns", "int"),
    "fractal_dropout": ("dropout", "floats"),
    "drop_path": ("drop_path", "bool"),
    "local_drop_prob": ("local_drop_prob", "float"),
    "eval_column": ("eval_column", "column"),
    "layers_per_block": ("layers_per_block", "int"),
}
#: Which of FAMILY_FORM_FIELDS each family shows.
FAMILY_FORMS: dict[str, tuple[str, ...]] = {
    "densenet": ("net_family", "family_size_by", "family_depth", "family_blocks", "growth_rate", "bottleneck",
                 "compression", "drop_rate"),
    "wide_resnet": ("net_family", "family_size_by", "family_depth", "family_blocks", "widen_factor", "wrn_dropout"),
    "resnext": ("net_family", "family_size_by", "family_depth", "family_blocks", "cardinality", "bottleneck_width",
                "family_widths"),
    "fractalnet": ("fractal_blocks", "columns", "family_widths", "fractal_dropout", "drop_path", "local_drop_prob",
                   "eval_column"),
    "rir": ("family_size_by", "family_depth", "family_blocks", "family_widths", "layers_per_block"),
}


def _parse_floats(text: str, what: str) -> list[float]:
    parts = [part for part in str(text).strip().strip("[]()").replace(",", " ").split() if part]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise SpecError(f"{what}: {text!r} is not a list of numbers; write for example 0, 0.1, 0.2") from None


def _form_value(value: Any, how: str, what: str) -> Any:
    """A form value as the spec field takes it; None leaves the field to the family's default."""
    if how == "bool":
        return bool(value)
    if how == "choice":
        return value or None
    if value is None or str(value).strip() == "":
        return None
    if how == "int":
        return whole_number(value, what)
    if how == "column":
        column = whole_number(value, what)
        return column or None
    if how == "float":
        return float(value)
    if how == "ints":
        return parse_int_list(value, what)
    return _parse_floats(value, what)


def family_spec_from_fields(kind: str, *, name: str, num_classes: Any, input_size: Any, in_channels: Any,
                            **fields: Any) -> BaseModel:
    """The network spec of family `kind` a Build form describes (fields named as in FAMILY_FORM_FIELDS)."""
    if kind not in FAMILY_FORMS:
        raise SpecError(f"unknown network kind {kind!r}; choose one of resnet, {', '.join(FAMILY_FORMS)}")
    data: dict[str, Any] = {
        "kind": kind, "name": (name or "").strip() or "custom",
        "num_classes": whole_number(num_classes, "classes"), "input_size": whole_number(input_size, "input size"),
        "in_channels": whole_number(in_channels, "input channels"),
    }
    shown = FAMILY_FORMS[kind]
    size_by = fields.get("family_size_by") if "family_size_by" in shown else None
    for form_name in shown:
        field, how = FAMILY_FORM_FIELDS[form_name]
        if how == "size_by" or (size_by == "depth" and field == "blocks") or (size_by == "blocks" and field == "depth"):
            continue
        data[field] = _form_value(fields.get(form_name), how, form_name.replace("_", " "))
    if size_by == "depth" and data.get("depth") is None:
        raise SpecError("depth: give the number of weighted layers, for example 40 or 100")
    return parse_net({key: value for key, value in data.items() if value is not None})


def family_form_values(spec: BaseModel) -> dict[str, Any]:
    """The Build form's values (FAMILY_FORM_FIELDS names) that describe `spec`; sized by depth when depth alone
    gives its blocks."""
    values: dict[str, Any] = {}
    for form_name in FAMILY_FORMS[spec.kind]:
        field, how = FAMILY_FORM_FIELDS[form_name]
        if how == "size_by":
            continue
        value = getattr(spec, field)
        if how in ("ints", "floats"):
            value = ", ".join(f"{v:g}" for v in value)
        elif how == "column":
            value = value or 0
        values[form_name] = value
    if "family_size_by" in FAMILY_FORMS[spec.kind]:
        data = spec.model_dump(exclude={"blocks", "name"})
        try:
            by_depth = parse_net(data)
            values["family_size_by"] = "depth" if by_depth.blocks == spec.blocks else "blocks"
        except SpecError:
            values["family_size_by"] = "blocks"
    return values
