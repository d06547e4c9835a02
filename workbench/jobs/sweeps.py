"""Sweeps as jobs: Optuna's TPE asks for the next trial and learns the results, and bad trials are pruned.

Nothing of a study is kept between steps: each step rebuilds it from the sweep's stored runs (their specs hold the
parameters, their metrics the errors), with the sampler seeded by the sweep's seed and the number of trials so far.
So the run table stays the one record: a crash, a restart, a deleted or resumed trial leaves nothing to reconcile,
and any worker can step any sweep. A trial is added in one transaction that first counts the group's runs, so two
processes stepping at once never add the same trial twice.

Every worker steps the unfinished sweeps when it looks for work (right after a trial ends, too), and the worker
training a trial checks it against the median at each epoch's evaluation (`TrialPruner`).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState, create_trial

from storage import RunRecord, RunStore, SweepRecord
from storage.status import CANCELLED, COMPLETED, INTERRUPTED, QUEUED, RUNNING, SWEEP
from workbench.errors import SpecError
from workbench.sweep_spec import (
    MAX_TRIALS,
    SWEEP_PARAMETERS,
    SweepSpec,
    params_of,
    rounded,
    trial_name,
    trial_preset,
    trial_spec,
)

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNED = "pruned"
IN_FLIGHT = (QUEUED, RUNNING, INTERRUPTED)
MAX_STARTUP_TRIALS = 10  # Optuna's default number of random trials before TPE models the results


@dataclass(frozen=True)
class Trial:
    """A stored trial: its run, parameters, the objective split's error at each epoch's end, and its objective
    (completed trials; a pruned one keeps its last error)."""

    run_id: int
    name: str
    status: str
    params: dict[str, Any]
    epoch_errors: dict[int, float]
    value: float | None
    pruned: bool


def sweep_spec_of(record: SweepRecord) -> SweepSpec:
    return SweepSpec.model_validate(record.spec)


def is_pruned(run: RunRecord) -> bool:
    return run.status == CANCELLED and (run.error_message or "").startswith(PRUNED)


def group_runs(store: RunStore, group_name: str) -> list[RunRecord]:
    """A sweep's runs, oldest first."""
    return sorted(store.list_runs(group_name=group_name, limit=2 * MAX_TRIALS), key=lambda run: run.id)


def sweep_trials(store: RunStore, sweep: SweepSpec, runs: Sequence[RunRecord]) -> list[Trial]:
    """The trials of these runs of a sweep, with the errors their stored metrics hold."""
    batches = store.fetch_metrics_since({run.id: 0 for run in runs}, names=["error"], splits=[sweep.objective_split])
    trials = []
    for run in runs:
        evaluations = [(row.epoch, row.value) for row in batches[run.id].rows if row.value is not None]
        pruned = is_pruned(run)
        value = None
        if evaluations and (run.status == COMPLETED or pruned):
            value = evaluations[-1][1] if sweep.objective == "final" or pruned else min(v for _, v in evaluations)
        trials.append(Trial(run.id, run.name, run.status, params_of(run.spec, list(sweep.space)),
                            {round(epoch): error for epoch, error in evaluations if _is_epoch_end(epoch)},
                            value, pruned))
    return trials


def _is_epoch_end(epoch: float | None) -> bool:
    return epoch is not None and epoch >= 1 and math.isclose(epoch, round(epoch), abs_tol=1e-9)


# -- Optuna ---------------------------------------------------------------------------------------


def distributions(sweep: SweepSpec) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions: a list is a categorical choice, a range a float or int range."""
    result: dict[str, BaseDistribution] = {}
    for name, dimension in sweep.space.items():
        if not dimension.is_range:
            result[name] = CategoricalDistribution(dimension.values)
        elif SWEEP_PARAMETERS[name].kind is int:
            result[name] = IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log)
        else:
            result[name] = FloatDistribution(dimension.low, dimension.high, log=dimension.log)
    return result


def study_of(sweep: SweepSpec, trials: Sequence[Trial], sampler: optuna.samplers.BaseSampler | None = None
             ) -> optuna.Study:
    """An in-memory study holding the stored trials: completed with their objective, pruned with their epoch errors,
    failed or cancelled as failed, the others as running. Trials whose parameters left the space are left out."""
    study = optuna.create_study(direction="minimize", sampler=sampler)
    space = distributions(sweep)
    for trial in trials:
        if trial.status == COMPLETED and trial.value is not None:
            state, value = TrialState.COMPLETE, trial.value
        elif trial.pruned:
            state, value = TrialState.PRUNED, None
        elif trial.status in IN_FLIGHT:
            state, value = TrialState.RUNNING, None
        else:
            state, value = TrialState.FAIL, None
        try:
            study.add_trial(create_trial(state=state, value=value, params=trial.params, distributions=space,
                                         intermediate_values=trial.epoch_errors))
        except ValueError as exc:
            logger.debug("trial %s is left out of the study: %s", trial.name, exc)
    return study


def next_params(sweep: SweepSpec, trials: Sequence[Trial]) -> dict[str, Any]:
    """What TPE suggests next, given the stored trials; the same trials always give the same suggestion."""
    startup = min(MAX_STARTUP_TRIALS, max(1, sweep.trials // 2))
    sampler = TPESampler(seed=sweep.seed + len(trials), n_startup_trials=startup)
    asked = study_of(sweep, trials, sampler).ask(distributions(sweep))
    return {name: rounded(value, sweep.space[name].low, sweep.space[name].high)
            if isinstance(value, float) and sweep.space[name].is_range else value
            for name, value in asked.params.items()}


# -- stepping -------------------------------------------------------------------------------------


def step_sweep(store: RunStore, record: SweepRecord) -> list[int]:
    """Queue the trials a TPE sweep may add now (up to `parallel` in flight, `trials` in all), and finish any sweep
    whose trials have all ended; returns the new run ids."""
    sweep = sweep_spec_of(record)
    runs = group_runs(store, record.group_name)
    in_flight = sum(run.status in IN_FLIGHT for run in runs)
    if len(runs) >= sweep.trial_count and not in_flight:
        store.finish_sweep(record.id)
        return []
    added: list[int] = []
    while sweep.method == "tpe" and len(runs) < sweep.trials and in_flight < sweep.parallel:
        params = next_params(sweep, sweep_trials(store, sweep, runs))
        try:
            spec = trial_spec(sweep.base, params)
        except SpecError as exc:
            store.finish_sweep(record.id, f"stopped: TPE asked for {trial_name(len(runs) + 1, params)}, which "
                                          f"makes no valid run: {exc}")
            break
        run_id = store.add_sweep_trial(record.id, spec, name=trial_name(len(runs) + 1, params),
                                       preset=trial_preset(sweep, params), expected_trials=len(runs),
                                       max_in_flight=sweep.parallel)
        if run_id is None:
            break
        added.append(run_id)
        runs = group_runs(store, record.group_name)
        in_flight += 1
    if added:
        logger.info("sweep %s: queued trials %s", record.group_name, added)
    return added


def step_sweeps(store: RunStore) -> list[int]:
    """Step every unfinished sweep; a sweep that fails to step is logged and left for the next step. Never raises,
    so a broken sweep never keeps a worker from training."""
    added: list[int] = []
    try:
        records = store.unfinished_sweeps()
    except Exception as exc:
        logger.warning("could not read the unfinished sweeps: %s", exc)
        return added
    for record in records:
        try:
            added += step_sweep(store, record)
        except Exception:
            logger.exception("sweep %s could not be stepped; trying again later", record.group_name)
    return added


# -- pruning --------------------------------------------------------------------------------------


class TrialPruner:
    """Optuna's median rule for one running trial: at the end of each epoch (not the last), a trial whose error on
    the objective split is worse than the median of the completed trials' errors at that epoch is pruned, once at
    least `prune_after` trials have completed. Called by the worker's sink with each batch of metric rows."""

    def __init__(self, store: RunStore, run: RunRecord, sweep: SweepSpec) -> None:
        self.store, self.run, self.sweep = store, run, sweep

    def __call__(self, rows: Sequence[Mapping[str, Any]], total_iterations: int | None) -> str | None:
        """Why the trial should stop now ("pruned: ..."), or None to let it go on."""
        ends = [row for row in rows if row["split"] == self.sweep.objective_split and row["name"] == "error"
                and _is_epoch_end(row.get("epoch"))]
        if not ends or total_iterations is None or ends[-1]["iteration"] >= total_iterations:
            return None
        row = ends[-1]
        epoch = round(row["epoch"])
        completed = [run for run in group_runs(self.store, self.run.group_name)
                     if run.status == COMPLETED and run.id != self.run.id]
        errors = [trial.epoch_errors[epoch] for trial in sweep_trials(self.store, self.sweep, completed)
                  if epoch in trial.epoch_errors]
        if len(errors) < self.sweep.prune_after:
            return None
        median = statistics.median(errors)
        if row["value"] <= median:
            return None
        split = "validation" if self.sweep.objective_split == "val" else "test"
        return (f"{PRUNED}: {split} error {row['value']:.2f}% at epoch {epoch} is worse than the median "
                f"{median:.2f}% of {len(errors)} completed trials")


def trial_pruner(store: RunStore, run: RunRecord) -> TrialPruner | None:
    """The pruner of a run that is a trial of a sweep with pruning on; None for any other run."""
    if run.group_kind != SWEEP or run.group_name is None:
        return None
    record = store.get_sweep(run.group_name)
    if record is None:
        return None
    sweep = sweep_spec_of(record)
    return TrialPruner(store, run, sweep) if sweep.pruning else None
