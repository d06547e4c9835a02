"""Fine-tuning from an imported model or another run's checkpoint: find the file, say what it holds, plan the run.

A source is always a file: an upload (copied into `<home>/imports` under a safe, unique name),
a file on the server inside the home or data folders, or a run's best or last checkpoint
(copied into `<home>/imports` when the fine-tune is launched, so deleting the source run later
does not affect it). `inspect_source` reads the file safely (see `workbench.importers`) and
reports its format, the network it holds (its own spec, or a preset checked key by key), its
head, normalization and class names; `plan_finetune` turns that report and the launch form
into a RunSpec with `init_from` and the fine-tuning mode.
"""

from __future__ import annotations

import filecmp
import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from workbench.data.base import check_allowed, resolve_user_path
from workbench.errors import DataError, SpecError, WorkbenchError
from workbench.paths import RunFolder, imports_dir
from workbench.presets import Preset
from workbench.service.forms import whole_number
from workbench.service.plans import PlannedRun, matching_preset
from workbench.spec import DataSpec, NetSpec, NetworkSpec, RunSpec, TrainSpec, parse_spec
from workbench.weights.importers import IMPORT_FORMATS, read_weights
from workbench.weights.loader import fitting_presets, network_mismatches
from workbench.weights.transfer import FINETUNE_MODES, HEAD_PREFIXES, Mismatches, infer_head_hidden

logger = logging.getLogger(__name__)

MODE_LABELS = {
    "all": "all layers",
    "last_stages": "last stage(s) + head",
    "head": "new head only",
}
_SHOWN_CLASSES = 12


# ---------------------------------------------------------------- where the file comes from


def store_upload(upload: Path, home: Path) -> Path:
    """Copy an uploaded file into `<home>/imports` under a safe, unique name; returns the copy."""
    upload = Path(upload)
    stem = re.sub(r"[^A-Za-z0-9_]+", "-", upload.stem).strip("-")[:60] or "model"
    suffix = re.sub(r"[^A-Za-z0-9]", "", upload.suffix)[:10]
    target = imports_dir(home) / f"{stem}-{uuid.uuid4().hex[:8]}{'.' + suffix if suffix else ''}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(upload, target)
    logger.info("stored upload %s as %s", upload.name, target)
    return target


def import_upload(upload: Path, home: Path, presets: Sequence[Preset]) -> SourceReport:
    """Keep a copy of an upload in `<home>/imports` and report what it holds; a copy that cannot be used is
    deleted at once, whatever the reason, and the message names the upload rather than the copy."""
    upload = Path(upload)
    stored = store_upload(upload, home)
    try:
        return inspect_source(stored, presets)
    except WorkbenchError as exc:
        stored.unlink(missing_ok=True)
        raise type(exc)(str(exc).replace(str(stored), f"the upload {upload.name}")) from None
    except BaseException:
        stored.unlink(missing_ok=True)
        raise


def locate_model_file(text: str | None, home: Path, data_roots: Sequence[Path]) -> Path:
    """The model file `text` names (relative paths are looked up under the home and data folders).

    DataError when it lies outside the home folder and the data folders, or is not a file.
    """
    cleaned = (text or "").strip()
    if not cleaned:
        raise WorkbenchError("no model file given: upload one, give its path on the server, or pick a run")
    allowed = [Path(home), *data_roots]
    path = check_allowed(resolve_user_path(cleaned, allowed), allowed, "model file")
    if not path.is_file():
        raise DataError(f"model file {path} does not exist or is not a file")
    return path


def checkpoint_source(path: Path, home: Path) -> tuple[int, str] | None:
    """(run id, "best" or "last") when `path` is a run's checkpoint in this home folder, else None."""
    return RunFolder.parse(path, home)


def copy_run_checkpoint(path: Path, run_id: int, which: str, home: Path) -> Path:
    """Copy a run's checkpoint to `<home>/imports/run<ID>-<which>.pt`, kept apart from later, different copies.

    An identical earlier copy is reused; a different one keeps its name and this copy gets `-2`, `-3`...
    """
    folder = imports_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        target = folder / f"run{run_id}-{which}{'' if number == 1 else f'-{number}'}.pt"
        if not target.exists():
            shutil.copyfile(path, target)
            logger.info("copied the %s checkpoint of run %d to %s", which, run_id, target)
            return target
        if filecmp.cmp(path, target, shallow=False):
            return target
        number += 1


# ---------------------------------------------------------------- what the file holds


@dataclass
class SourceReport:
    """What a model file holds and whether a fine-tune can start from it.

    `spec` is the network the fine-tune will build: the file's own spec, or the preset the user
    chose (or the first that fits, when none was chosen). `mismatches` lists the backbone keys
    and shapes that do not fit `spec` (the head is replaced whenever it does not fit).
    """

    path: Path
    format: str
    spec: NetworkSpec | None
    spec_from_file: bool
    preset: str | None
    guessed: bool = False
    other_fits: list[str] = field(default_factory=list)
    mismatches: Mismatches | None = None
    head_outputs: int | None = None
    head_hidden: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    source_run: tuple[int, str] | None = None

    @property
    def problem(self) -> str | None:
        """Why no fine-tune can start from this file as it stands, or None when one can."""
        if self.spec is None:
            return ("the file does not say which network it holds and no preset takes its weights; "
                    "pick the preset it was trained as")
        if self.mismatches:
            return f"the weights do not fit {self.spec.name}: {self.mismatches.describe()}"
        return None


def _head_shape(state_dict: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(outputs, hidden width) of the head stored in a state_dict."""
    hidden = infer_head_hidden(state_dict)
    names = [f"{prefix}{'2.' if hidden is not None else ''}weight" for prefix in HEAD_PREFIXES]
    last = next((state_dict[name] for name in names if name in state_dict), None)
    return (int(last.shape[0]) if last is not None else None), hidden


def inspect_source(
    path: Path, presets: Sequence[Preset], preset: str | None = None, source_run: tuple[int, str] | None = None,
) -> SourceReport:
    """Read `path` safely and report what it holds; `preset` names the network when the file has no spec.

    Raises UnsafeFileError for pickles that would run code and WorkbenchError for unreadable files.
    """
    imported = read_weights(Path(path))
    outputs, hidden = _head_shape(imported.state_dict)
    metadata = imported.metadata
    report = SourceReport(
        path=Path(path), format=imported.format, spec=imported.spec, spec_from_file=imported.spec is not None,
        preset=None, head_outputs=outputs, head_hidden=hidden, mean=metadata.get("mean"), std=metadata.get("std"),
        class_names=list(metadata.get("class_names") or []), metadata=metadata, source_run=source_run,
    )
    if report.spec is None:
        by_name = {entry.name: entry for entry in presets}
        if preset:
            if preset not in by_name:
                raise SpecError(f"unknown preset {preset!r}; pick one from the list")
            report.preset, report.spec = preset, by_name[preset].spec
            report.other_fits = [name for name in fitting_presets(imported.state_dict, presets) if name != preset]
        else:
            fits = fitting_presets(imported.state_dict, presets)
            if fits:
                report.preset, report.spec, report.guessed = fits[0], by_name[fits[0]].spec, True
                report.other_fits = fits[1:]
    else:
        found = matching_preset(report.spec, presets)
        report.preset = found.name if found else None
    if report.spec is not None:
        report.mismatches = network_mismatches(imported.state_dict, report.spec)[0]
    return report


def _network_line(spec: NetworkSpec) -> str:
    if not isinstance(spec, NetSpec):
        return spec.outline()
    return (f"{spec.family}-style, {spec.unit} units, blocks {spec.blocks}, widths {spec.widths}, "
            f"shortcut {spec.shortcut}, placement {spec.placement}")


def _numbers(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.4g}" for value in values)


def describe_source(report: SourceReport) -> str:
    """Markdown that tells the user what was detected and what the fine-tune will do with it."""
    lines = [f"- **Format:** {IMPORT_FORMATS[report.format]}", f"- **File:** `{report.path}`"]
    if report.source_run is not None:
        run_id, which = report.source_run
        lines.append(f"- **Source run:** #{run_id}, {which} checkpoint; it is copied into the imports folder at "
                     "launch, so deleting the run later does not affect the fine-tune")
    spec = report.spec
    if spec is None:
        lines.append("- **Network:** not recorded in the file, and no preset takes these weights; pick the preset "
                     "it was trained as")
    elif report.spec_from_file:
        preset = f" (same as preset {report.preset})" if report.preset else ""
        lines.append(f"- **Network (from the file):** {spec.name}{preset}: {_network_line(spec)}")
    else:
        how = "first preset that takes these weights" if report.guessed else "chosen preset"
        lines.append(f"- **Network ({how}; the file does not say):** {spec.name}: {_network_line(spec)}")
        if report.other_fits and report.mismatches:
            lines.append(f"- **Presets that take these weights:** {', '.join(report.other_fits)}")
        elif report.other_fits:
            lines.append(f"- **Also fits:** {', '.join(report.other_fits)}; pick the one it was trained as")
    if report.mismatches:
        lines.append(f"- **Keys and shapes do not fit {spec.name}:** {report.mismatches.describe()}")
    elif spec is not None:
        lines.append(f"- **Keys and shapes:** every backbone tensor fits {spec.name}")
    if report.head_outputs is not None:
        layers = f"one hidden layer of {report.head_hidden} units" if report.head_hidden else "one linear layer"
        lines.append(f"- **Head:** {report.head_outputs} outputs ({layers}); replaced when the dataset has another "
                     "number of classes, and always in mode \"new head only\"")
    if report.mean and report.std and report.metadata.get("normalization_assumed"):
        lines.append(f"- **Normalization:** not recorded in the file; ImageNet's mean ({_numbers(report.mean)}) and "
                     f"std ({_numbers(report.std)}) are assumed, as torchvision's pretrained weights expect, and "
                     "carried over to the fine-tune")
    elif report.mean and report.std:
        lines.append(f"- **Normalization:** mean ({_numbers(report.mean)}), std ({_numbers(report.std)}); "
                     "carried over to the fine-tune")
    else:
        lines.append("- **Normalization:** not recorded in the file; the fine-tune uses the training dataset's "
                     "own mean and std")
    if report.class_names:
        names = report.class_names
        more = f" and {len(names) - _SHOWN_CLASSES} more" if len(names) > _SHOWN_CLASSES else ""
        lines.append(f"- **Classes ({len(names)}):** {', '.join(names[:_SHOWN_CLASSES])}{more}")
    else:
        lines.append("- **Classes:** not recorded in the file")
    if report.metadata.get("dataset"):
        lines.append(f"- **Trained on:** {report.metadata['dataset']}")
    reported = [f"{name} {value:.2f}" for name, value in report.metadata.get("best_metrics", {}).items()]
    if report.metadata.get("best_error") is not None:
        split = report.metadata.get("best_split", "test")
        reported.append(f"best {split} error {report.metadata['best_error']:.2f}%")
    if reported:
        lines.append(f"- **Reported:** {', '.join(reported)}")
    if spec is None:
        lines.append("\n**Nothing can be launched yet:** pick the preset the weights were trained as.")
    elif report.mismatches:
        lines.append(f"\n**Nothing can be launched with {spec.name}:** pick the preset the weights were trained as.")
    return "\n".join(lines)


# ---------------------------------------------------------------- planning and queueing


def plan_finetune(
    report: SourceReport,
    *,
    mode: str,
    data: DataSpec,
    train: TrainSpec,
    presets: Sequence[Preset] = (),
    stages: Any = 1,
    head_hidden: Any = None,
) -> PlannedRun:
    """The run that fine-tunes `report`'s model in `mode` (see FINETUNE_MODES) on `data` with `train`.

    `stages` counts only for "last_stages" and `head_hidden` (0 or empty: none) only for "head".
    """
    if report.problem:
        raise WorkbenchError(report.problem)
    if mode not in FINETUNE_MODES:
        raise SpecError(f"fine-tuning mode is one of {', '.join(FINETUNE_MODES)}; got {mode!r}")
    spec = report.spec
    changes: dict[str, Any] = {}
    if mode == "last_stages":
        try:
            count = whole_number(stages, "stages to train") or 0
        except SpecError:
            count = 0  # not a whole number: the message below says what is
        if not 1 <= count <= spec.stage_count:
            raise SpecError(f"stages to train: a whole number from 1 to {spec.stage_count} for {spec.name}")
        changes["finetune_stages"] = count
    if mode == "head" and head_hidden not in (None, "", 0):
        width = whole_number(head_hidden, "hidden width of the new head")
        if width < 1:
            raise SpecError(f"hidden width of the new head: a positive whole number, or 0 for none; got {head_hidden}")
        changes["head_hidden"] = width
    run = parse_spec(RunSpec, {
        "net": spec.model_dump(), "data": data.model_dump(), "train": train.model_dump(),
        "init_from": str(report.path), "finetune": mode, **changes,
    })
    preset = matching_preset(spec, presets)
    parent = report.source_run[0] if report.source_run is not None else None
    return PlannedRun(f"{spec.name} fine-tuned ({MODE_LABELS[mode]})", run, preset.name if preset else None,
                      parent_run_id=parent)


def with_copied_source(plan: PlannedRun, home: Path) -> PlannedRun:
    """The plan with a run checkpoint source copied into the imports folder (so deleting that run later
    does not matter); other sources are left as they are."""
    source = RunFolder.parse(Path(plan.spec.init_from), home)
    if source is None:
        return plan
    run_id, which = source
    copy = copy_run_checkpoint(Path(plan.spec.init_from), run_id, which, home)
    return replace(plan, spec=plan.spec.model_copy(update={"init_from": str(copy)}))
