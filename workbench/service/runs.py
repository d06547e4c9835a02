"""The one API the UI tabs and the CLI call for everything that touches runs.

`Workbench` plans and submits groups, cancels, resumes, deletes, renames and annotates runs,
exports their models (recording the artifact), hands out fine-tune sources and queues or runs
analyses. It owns no state of its own: the store is the record, the executor runs the jobs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage import AnalysisRecord, RunRecord, RunStore
from storage.status import CANCELLED, COMPLETED, QUEUED, RUNNING, sources_of
from workbench.data import DatasetShape, check_source
from workbench.errors import IllegalTransition, WorkbenchError
from workbench.jobs.analyses import ANALYSIS_KINDS, FRACTAL_COLUMNS, LESION, execute_analysis
from workbench.jobs.executor import Executor
from workbench.jobs.sweeps import step_sweep
from workbench.jobs.worker import default_worker_id
from workbench.paths import RunFolder, exports_dir
from workbench.presets import Preset, list_presets
from workbench.science.fractal import check_fractal
from workbench.science.lesion import check_lesionable
from workbench.service.checks import check_run
from workbench.service.estimates import RunEstimate, StepTimeCache, estimate_run, expected_finishes
from workbench.service.files import clean_old_files
from workbench.service.finetune import with_copied_source
from workbench.service.forms import FORM_FIELDS, parse_id, specs_from_form
from workbench.service.plans import PlannedRun, default_group_name, plan_sweep, unique_group_name
from workbench.service.results import write_metrics_csv, write_tensorboard
from workbench.service.sweeps import SweepReport, sweep_report
from workbench.spec import DataSpec, RunSpec, TrainSpec, parse_net
from workbench.sweep_spec import SweepSpec
from workbench.threads import worker_threads
from workbench.training.loop import RUN_SECONDS
from workbench.weights.export import EXPORT_FORMATS, export_model
from workbench.weights.loader import load_model_file

logger = logging.getLogger(__name__)

CURVE_FORMATS = ("csv", "tensorboard")


CANCEL, RESUME, DELETE = "cancel", "resume", "delete"


def possible_actions(run: RunRecord) -> frozenset[str]:
    """What `run` allows in its status, by the store's transitions: cancel while queued or running, resume
    once it stopped early (interrupted, cancelled, failed), delete unless it is running."""
    allowed = {CANCEL: run.status in sources_of(CANCELLED), RESUME: run.status in sources_of(QUEUED),
               DELETE: run.status != RUNNING}
    return frozenset(action for action, possible in allowed.items() if possible)


def export_file_name(run: RunRecord, which: str, fmt: str) -> str:
    """A file name that says what the file holds: "run12-resnet20-best.onnx"."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-") or "run"
    return f"run{run.id}-{slug}-{which}{EXPORT_FORMATS[fmt].suffix}"


class Workbench:
    """Runs, groups, exports and analyses of one home folder, through one store and one executor."""

    def __init__(self, store: RunStore, executor: Executor, data_roots: Sequence[Path] | None = None) -> None:
        """`data_roots`: the folders datasets may be read from (besides the home's), None for any folder."""
        self.store = store
        self.executor = executor
        self.data_roots = None if data_roots is None else [Path(root) for root in data_roots]

    @property
    def home(self) -> Path:
        return self.store.home

    def presets(self) -> list[Preset]:
        """Built-in presets and the ones saved in this home folder."""
        return list_presets(self.home)

    def folder(self, run_id: int) -> RunFolder:
        return RunFolder.of(self.home, run_id)

    # -- reading -------------------------------------------------------------------------------

    def list_runs(self, **filters: Any) -> list[RunRecord]:
        return self.store.list_runs(**filters)

    def get_run(self, run_id: int) -> RunRecord:
        return self.store.get_run(parse_id(run_id))

    def list_groups(self) -> list[tuple[str, str | None]]:
        return self.store.list_groups()

    # -- planning and submitting ---------------------------------------------------------------

    def check_data(self, data: DataSpec) -> DatasetShape | None:
        """Fail before queueing, with the loader's message, when a dataset path is outside the data roots or missing;
        else the sizes it selects (None when unknown before it is read)."""
        return check_source(data, self.home, self.data_roots)

    def group_name(self, kind: str, net_name: str, data: DataSpec) -> str:
        """A readable group name not used yet ("twin resnet20 on synthetic, 2026-12-01 14:03")."""
        taken = [name for name, _ in self.store.list_groups()]
        return unique_group_name(default_group_name(kind, net_name, data), taken)

    def specs_from_form(self, form: Mapping[str, Any]) -> tuple[DataSpec, TrainSpec]:
        """The DataSpec and TrainSpec of a launch form's FORM_FIELDS (other keys ignored); `submit` checks the data."""
        return specs_from_form(**{name: form[name] for name in FORM_FIELDS})

    def launch_finetune(self, plan: PlannedRun) -> int:
        """Queue a fine-tune; a run checkpoint source is first copied into the imports folder. Returns the run id."""
        return self.submit([with_copied_source(plan, self.home)])[0]

    def check(self, plan: Sequence[PlannedRun]) -> None:
        """The one validation before anything is queued: devices, network costs and data sources."""
        if not plan:
            raise WorkbenchError("nothing to launch: the plan has no runs")
        for spec in {run.spec.model_dump_json(include={"net", "train"}): run.spec for run in plan}.values():
            check_run(spec)
        for data in {run.spec.data.model_dump_json(): run.spec.data for run in plan}.values():
            self.check_data(data)

    def submit(self, plan: Sequence[PlannedRun]) -> list[int]:
        """Queue every planned run through the executor once the whole plan passed `check`; ids in plan order."""
        self.check(plan)
        ids = [
            self.executor.submit(run.spec, name=run.name, preset=run.preset, group_name=run.group_name,
                                 group_kind=run.group_kind, parent_run_id=run.parent_run_id)
            for run in plan
        ]
        logger.info("queued runs %s (%s)", ids, plan[0].group_name or "no group")
        return ids

    def launch_sweep(self, sweep: SweepSpec, group: str | None = None) -> tuple[str, list[int]]:
        """Record a sweep and queue its trials as one "sweep" group: every trial of a grid or random search, the
        first `parallel` trials of a TPE search (workers ask for the others as results come in).
        Returns (group name, queued run ids)."""
        group = group or self.group_name(f"{sweep.method} sweep", sweep.base.net.name, sweep.base.data)
        plan = plan_sweep(sweep, group=group)
        self.check(plan or [PlannedRun(sweep.base.net.name, sweep.base, sweep.base_preset)])
        self.store.create_sweep(group, sweep.method, sweep)
        if plan:
            return group, self.submit(plan)
        return group, step_sweep(self.store, self.store.get_sweep(group))

    def sweep_report(self, group: str) -> SweepReport:
        """A sweep's trials, best trial and parameter importances."""
        return sweep_report(self.store, group)

    # -- how long runs take --------------------------------------------------------------------

    @property
    def threads_per_worker(self) -> int:
        """The torch threads each of the executor's workers trains with on this machine."""
        return worker_threads(self.executor.worker_count)

    def estimate(self, spec: RunSpec) -> RunEstimate:
        """How long the run should take on a worker here, from a few timed steps; refused, like a launch, when the
        network does not fit or the data is missing."""
        check_run(spec)
        shape = self.check_data(spec.data)
        if shape is None:
            raise WorkbenchError(f"the size of {spec.data.name} is not known before it is downloaded or read; give "
                                 "the path of the archive to estimate the run time")
        return estimate_run(spec, shape, self.home, self.threads_per_worker)

    def expected_finishes(self, runs: Sequence[RunRecord], now: datetime | None = None,
                          trained_seconds: Mapping[int, float] | None = None) -> dict[int, datetime]:
        """When running runs (and queued runs with a cached estimate) should finish; see `expected_finishes`.
        `trained_seconds` is `run_seconds` of these runs, when the caller has it already."""
        if trained_seconds is None:
            trained_seconds = self.run_seconds([run.id for run in runs if run.status == RUNNING])
        return expected_finishes(runs, StepTimeCache(self.home), self.executor.worker_count,
                                 self.threads_per_worker, now or datetime.now(UTC), trained_seconds)

    def latest_values(self, run_id: int, names: Sequence[str]) -> dict[str, float]:
        """The last stored value of each of these metrics that the run has logged."""
        batch = self.store.fetch_metrics_since({run_id: 0}, names=list(names)).get(run_id)
        return {row.name: row.value for row in batch.rows if row.value is not None} if batch else {}

    def run_seconds(self, run_ids: Sequence[int]) -> dict[int, float]:
        """Seconds each run has trained so far, across resumes (as its training loop last logged them)."""
        return self.store.latest_metric_values(run_ids, RUN_SECONDS)

    # -- the life of a run ---------------------------------------------------------------------

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run now or ask a running one to stop; returns what happens, in words."""
        run_id = parse_id(run_id)
        status = self.executor.cancel(run_id)
        if status == RUNNING:
            return f"Run #{run_id}: cancel requested; it stops after the current step and keeps a checkpoint."
        return f"Run #{run_id} is {status}."

    def resume(self, run_id: int) -> str:
        """Queue an interrupted, cancelled or failed run again (or a running one whose worker is gone);
        says whether it continues from its checkpoint or restarts from the beginning."""
        run_id = parse_id(run_id)
        try:
            self.executor.resume(run_id)
        except IllegalTransition:
            raise WorkbenchError(self._not_resumable(self.store.get_run(run_id))) from None
        if self.folder(run_id).last.is_file():
            return f"Run #{run_id} queued again; it continues from its last checkpoint."
        return (f"Run #{run_id} queued again; it has no checkpoint yet, so it restarts from the beginning "
                "(the rows it logged are replaced).")

    def _not_resumable(self, run: RunRecord) -> str:
        if run.status == QUEUED:
            return f"Run #{run.id} is already queued; a worker takes it when one is free."
        if run.status == RUNNING:
            return (f"Run #{run.id} is running and its worker is alive; cancel it first (it keeps a checkpoint), "
                    f"or wait: a run whose worker is silent for {self.executor.stale_after_s:.0f} s can be resumed.")
        if run.status == COMPLETED:
            return (f"Run #{run.id} has completed its budget; to train it further, fine-tune from it "
                    "or launch it again with a larger budget.")
        return f"Run #{run.id} is {run.status} and cannot be resumed."

    def job_log(self, run_id: int) -> str:
        """The log of the cluster job executing the run, or a sentence saying why there is none."""
        run = self.store.get_run(run_id)
        if run.job_id is None:
            return f"Run #{run_id} has no cluster job; it runs (or ran) on a local worker."
        log = self.executor.job_log(run)
        if log is None:
            return (f"Run #{run_id} ran as cluster job {run.job_id}; start the workbench with --executor ray "
                    "to read its log.")
        return log

    def delete(self, run_id: int) -> str:
        run_id = parse_id(run_id)
        self.store.delete_run(run_id)
        return f"Run #{run_id} deleted with its metrics and checkpoints."

    def rename(self, run_id: int, name: str) -> str:
        run_id = parse_id(run_id)
        self.store.rename_run(run_id, name)
        return f"Run #{run_id} renamed to {name.strip()!r}."

    def tag(self, run_id: int, tags: str, remove: bool = False) -> str:
        """Add (or remove) comma-separated tags of a run."""
        run_id = parse_id(run_id)
        wanted = [tag.strip() for tag in tags.split(",") if tag.strip()]
        if not wanted:
            raise WorkbenchError("type one or more tags, separated by commas")
        current = self.store.get_run(run_id).tags
        kept = [tag for tag in current if tag not in wanted] if remove else [*current, *wanted]
        self.store.set_tags(run_id, kept)
        return f"Tags of run #{run_id}: {', '.join(dict.fromkeys(kept)) or 'none'}."

    def annotate(self, run_id: int, notes: str) -> str:
        run_id = parse_id(run_id)
        self.store.set_notes(run_id, notes)
        return f"Notes of run #{run_id} saved."

    # -- checkpoints and exports ---------------------------------------------------------------

    def checkpoint(self, run_id: int, which: str = "best") -> Path:
        """The run's `which` checkpoint; WorkbenchError when it has none yet (exact: no fallback)."""
        run_id = parse_id(run_id)
        path = self.folder(run_id).checkpoint(which)
        if not path.is_file():
            run = self.store.get_run(run_id)
            raise WorkbenchError(f"run #{run_id} ({run.status}) has no {which} checkpoint yet; it is written after "
                                 "the first evaluation")
        return path

    def exportable_runs(self) -> list[RunRecord]:
        """Runs that have at least a last checkpoint, newest first."""
        return [run for run in self.store.list_runs() if self.folder(run.id).last.is_file()]

    def export(self, run_id: int, fmt: str, which: str = "best", out_path: Path | None = None) -> Path:
        """Export a run's best or last checkpoint in `fmt` (default into the exports folder) and record it."""
        if fmt not in EXPORT_FORMATS:
            raise WorkbenchError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        run = self.get_run(run_id)
        model = load_model_file(self.checkpoint(run_id, which))
        metadata = {
            **model.metadata, "run_id": run.id, "run_name": run.name, "preset": run.preset, "checkpoint": which,
            "best_test_error": run.best_test_error, "last_test_error": run.last_test_error,
            "best_val_error": run.best_val_error, "test_error_at_best": run.test_error_at_best,
            "last_train_error": run.last_train_error, "iterations": run.iteration,
        }
        metadata.pop("run_spec", None)
        target = Path(out_path) if out_path is not None else exports_dir(self.home) / export_file_name(run, which, fmt)
        written = export_model(model, model.spec, metadata, fmt, target)
        self.store.add_artifact(run_id, "export", written)
        return written

    def clean_old_files(self, max_age_hours: float) -> list[Path]:
        """Delete uploads and exports older than `max_age_hours`, keeping imports that a stored run starts from."""
        in_use = [Path(run.spec["init_from"]) for run in self.store.list_runs() if run.spec.get("init_from")]
        return clean_old_files(self.home, max_age_hours * 3600, in_use)

    def export_curves(self, run_ids: Sequence[int], fmt: str, out_path: Path | None = None,
                      names: Sequence[str] | None = None) -> Path:
        """The runs' stored curves (metrics `names`, or all) as a long CSV file or a folder of TensorBoard event
        files (one subfolder per run); by default in the exports folder."""
        if fmt not in CURVE_FORMATS:
            raise WorkbenchError(f"unknown curve format {fmt!r}; choose one of {', '.join(CURVE_FORMATS)}")
        stem = "curves-" + "-".join(f"run{run_id}" for run_id in list(run_ids)[:8])
        if fmt == "csv":
            return write_metrics_csv(self.store, run_ids, out_path or exports_dir(self.home) / f"{stem}.csv", names)
        folder = Path(out_path or exports_dir(self.home) / f"{stem}-tensorboard")
        write_tensorboard(self.store, run_ids, folder, names)
        return folder

    # -- analyses ------------------------------------------------------------------------------

    def queue_analysis(self, run_id: int, kind: str, params: dict[str, Any] | None = None) -> int:
        """Queue an analysis of a run for the workers; returns its id."""
        if kind not in ANALYSIS_KINDS:
            raise WorkbenchError(f"analysis kind {kind!r} is unknown; choose one of {', '.join(ANALYSIS_KINDS)}")
        run = self.get_run(run_id)
        if kind == LESION:
            check_lesionable(parse_net(run.spec["net"]))
        if kind == FRACTAL_COLUMNS:
            check_fractal(parse_net(run.spec["net"]))
        run_id = run.id
        return self.store.create_analysis(run_id, kind, params or {})

    def run_analysis(self, run_id: int, kind: str, params: dict[str, Any] | None = None) -> AnalysisRecord:
        """Run an analysis in this process (stored as a job like any other, so it is listed); returns it finished."""
        analysis_id = self.queue_analysis(run_id, kind, params)
        worker_id = f"{default_worker_id()}-foreground"
        claimed = self.store.claim_analysis(analysis_id, worker_id)
        execute_analysis(self.store, claimed, worker_id, allowed_roots=self.data_roots,
                         shutdown=threading.Event())
        return self.store.get_analysis(analysis_id)

    def analyses(self, run_id: int | None = None, kind: str | None = None,
                 status: str | Sequence[str] | None = None) -> list[AnalysisRecord]:
        return self.store.list_analyses(run_id, kind, status)

    def cancel_analysis(self, analysis_id: int) -> str:
        analysis_id = parse_id(analysis_id, "analysis id")
        status = self.store.request_analysis_cancel(analysis_id)
        if status == RUNNING:
            return f"Analysis #{analysis_id}: cancel requested; it stops within a second."
        return f"Analysis #{analysis_id} is {status}."

    def latest_result(self, run_id: int, kind: str, params: dict[str, Any] | None = None) -> Any | None:
        """The result of the newest completed analysis of this kind (and these params, when given)."""
        for analysis in reversed(self.store.list_analyses(run_id, kind, "completed")):
            if params is None or all(analysis.params.get(k) == v for k, v in params.items()):
                return analysis.result
        return None
