"""What a sweep found: its trials with their parameters and objective, the best trial, and how much each
parameter mattered (Optuna's PED-ANOVA importance, which needs nothing beyond numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from storage import RunStore
from storage.status import COMPLETED
from workbench.errors import WorkbenchError
from workbench.jobs.sweeps import Trial, group_runs, study_of, sweep_spec_of, sweep_trials
from workbench.sweep_spec import SweepSpec

MIN_TRIALS_FOR_IMPORTANCE = 3
IMPORTANCE_METHOD = ("PED-ANOVA (Optuna): how much each parameter's distribution in the best 10% of completed "
                     "trials differs from its distribution over all of them; shares add up to 1")


@dataclass(frozen=True)
class SweepReport:
    """A sweep group's state: spec, trials (oldest first), the best completed trial, parameter importances (largest
    first, empty with `importance_note` saying why), and whether the sweep is still adding or running trials."""

    group: str
    sweep: SweepSpec
    trials: list[Trial]
    best: Trial | None
    importance: list[tuple[str, float]]
    importance_note: str
    finished: bool
    message: str | None

    @property
    def parameters(self) -> list[str]:
        return list(self.sweep.space)

    def as_dict(self) -> dict:
        """The report as JSON-ready data (what `sweep-report --json` prints)."""
        return {
            "group": self.group, "method": self.sweep.method, "objective": self.sweep.objective_label,
            "finished": self.finished, "message": self.message,
            "trials": [{"run_id": trial.run_id, "name": trial.name, "status": trial.status, "pruned": trial.pruned,
                        "params": trial.params, "value": trial.value} for trial in self.trials],
            "best": None if self.best is None else {"run_id": self.best.run_id, "name": self.best.name,
                                                    "params": self.best.params, "value": self.best.value},
            "importance": dict(self.importance), "importance_method": self.importance_note,
        }


def sweep_report(store: RunStore, group: str) -> SweepReport:
    """The report of the sweep behind `group`; WorkbenchError when the group is not a sweep."""
    record = store.get_sweep(group)
    if record is None:
        raise WorkbenchError(f"group {group!r} is not a sweep; launch one with `workbench sweep` or the Launch tab's "
                             "Sweep section, or pick a sweep group")
    sweep = sweep_spec_of(record)
    trials = sweep_trials(store, sweep, group_runs(store, group))
    completed = [trial for trial in trials if trial.status == COMPLETED and trial.value is not None]
    best = min(completed, key=lambda trial: trial.value, default=None)
    importance, note = parameter_importance(sweep, completed)
    return SweepReport(group, sweep, trials, best, importance, note, record.finished_at is not None,
                       record.error_message)


def parameter_importance(sweep: SweepSpec, completed: list[Trial]) -> tuple[list[tuple[str, float]], str]:
    """(parameter, share) largest first, and the method; no shares, and why, before enough trials completed."""
    varied = [name for name in sweep.space if len({repr(trial.params[name]) for trial in completed}) > 1]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE:
        return [], (f"parameter importance needs {MIN_TRIALS_FOR_IMPORTANCE} completed trials; "
                    f"{len(completed)} so far")
    if not varied:
        return [], "no parameter took more than one value in the completed trials"
    importances = optuna.importance.get_param_importances(
        study_of(sweep, completed), evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied)
    return sorted(importances.items(), key=lambda item: -item[1]), IMPORTANCE_METHOD
