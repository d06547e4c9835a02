"""Run-time estimates before launching, and expected finish times of the queue.

A few training steps of the run's network, batch, precision and channels_last are timed on its device in a
short process started with a worker's thread settings (`workbench.training.timing`), so the estimate is for
the threads a worker trains with, not the UI server's one. The measured step time times the budget's
iterations, plus a timed forward pass times the images of every evaluation, gives the estimate (data
loading and checkpoints are left out: they are small beside the steps). Step times are cached per network,
batch, device, precision, channels_last, threads and machine in the home's cache folder; the estimate of a
whole run is cached too, so the queue can show when a queued run should finish without timing anything.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from storage import RunRecord
from storage.status import QUEUED, RUNNING
from workbench.data import DatasetShape
from workbench.errors import WorkbenchError
from workbench.jobs.executor import PROJECT_ROOT
from workbench.paths import step_times_file
from workbench.service.checks import network_cost
from workbench.spec import RunSpec
from workbench.threads import child_env
from workbench.training.loop import resolve_device
from workbench.training.timing import StepTiming

TIMING_TIMEOUT_S = 120.0
# On a CPU a step is timed at a batch small enough to stay within these multiply-adds (forward and backward,
# about 3x the forward's), then scaled to the run's batch: a ResNet-110 at batch 128 is timed as it is, a
# ResNet-50 at 224 px at batch 8.
MAX_TIMED_STEP_MACS_CPU = 100e9


@dataclass(frozen=True)
class RunEstimate:
    """How long a run should take: its steps and evaluations, and the timing they are computed from."""

    seconds: float
    iterations: int
    evaluations: int
    eval_images: int
    batch_size: int
    timing: StepTiming
    cached: bool

    @property
    def step_s(self) -> float:
        """Seconds per step at the run's batch (scaled linearly when the timing used a smaller batch)."""
        return _step_s_at(self.timing, self.batch_size)

    def text(self) -> str:
        """"about 12 minutes (measured: 153 ms/step at batch 128 on cpu, 2 threads; ...)"."""
        timing = self.timing
        threads = f"{timing.threads} thread{'s' if timing.threads != 1 else ''}"
        scaled = (f", timed at batch {timing.batch_size} and scaled" if timing.batch_size != self.batch_size else "")
        evaluations = f"{self.evaluations:,} evaluation{'s' if self.evaluations != 1 else ''}"
        return (f"{duration_words(self.seconds)} (measured: {1000 * self.step_s:,.0f} ms/step at batch "
                f"{self.batch_size} on {timing.device}, {threads}, {timing.precision}{scaled}; "
                f"{self.iterations:,} iterations and {evaluations} of {self.eval_images:,} images"
                f"{'; cached' if self.cached else ''})")


def _step_s_at(timing: StepTiming, batch_size: int) -> float:
    """Seconds per step at `batch_size`, scaled linearly from the timed batch."""
    return timing.step_s * batch_size / timing.batch_size


def duration_words(seconds: float) -> str:
    """"under a minute", "about 12 minutes", "about 3.5 hours"."""
    minutes = seconds / 60
    if minutes < 1:
        return "under a minute"
    if minutes < 120:
        return f"about {round(minutes)} minute{'s' if round(minutes) != 1 else ''}"
    return f"about {minutes / 60:.1f} hours"


def _key(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def _run_key(spec: Mapping[str, Any], threads: int) -> str:
    """Runs that differ only by name or seed take as long: one key for them."""
    net = {k: v for k, v in spec.get("net", {}).items() if k != "name"}
    train = {k: v for k, v in spec.get("train", {}).items() if k != "seed"}
    data = {k: v for k, v in spec.get("data", {}).items() if k != "seed"}
    return _key({"net": net, "data": data, "train": train, "threads": threads, "host": socket.gethostname()})


class StepTimeCache:
    """Measured step times and whole-run estimates in one small JSON file under the home's cache folder."""

    def __init__(self, home: Path) -> None:
        self.path = step_times_file(home)

    def read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"steps": {}, "runs": {}}
        return {"steps": data.get("steps", {}), "runs": data.get("runs", {})}

    def write(self, data: dict[str, dict]) -> None:
        """Atomically (temp file + rename): a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".step-times.", suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(data, out)
        os.replace(temp, self.path)


def timed_batch(spec: RunSpec, image_size: int, device: str) -> int:
    """The batch a step is timed at: the run's, or on a CPU a smaller one within MAX_TIMED_STEP_MACS_CPU."""
    if device == "cuda":
        return spec.train.batch_size
    net = type(spec.net).model_validate({**spec.net.model_dump(), "input_size": image_size})
    macs = network_cost(net, 1, spec.train.device).summary["macs"]
    return max(1, min(spec.train.batch_size, math.floor(MAX_TIMED_STEP_MACS_CPU / (3 * macs))))


def _measure(spec: RunSpec, shape: DatasetShape, batch_size: int, threads: int) -> StepTiming:
    """Time the steps in a fresh process with `threads` threads, as a worker would train."""
    request = json.dumps({"run": spec.model_dump(mode="json"), "batch_size": batch_size,
                          "shape": {"image_size": shape.image_size, "classes": shape.classes,
                                    "augment": shape.augment}})
    python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-m", "workbench.training.timing"], input=request, text=True,
                              capture_output=True, timeout=TIMING_TIMEOUT_S, cwd=PROJECT_ROOT,
                              env={**child_env(threads), "PYTHONPATH": python_path})
    except subprocess.TimeoutExpired:
        raise WorkbenchError(f"timing a few steps of {spec.net.name} took over {TIMING_TIMEOUT_S:.0f} s, so the run "
                             "would take very long here; use a smaller network or batch, or a GPU") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise WorkbenchError(f"timing a few steps of {spec.net.name} failed: {last}")
    return StepTiming(**json.loads(done.stdout))


def estimate_run(spec: RunSpec, shape: DatasetShape, home: Path, threads: int) -> RunEstimate:
    """The run's expected duration from timed steps (cached per network, batch, device, precision, threads).

    The caller has checked the run (`check_run`), so a network too big for the machine never gets here.
    """
    batch = timed_batch(spec, shape.image_size, resolve_device(spec.train.device).type)
    net = {k: v for k, v in spec.net.model_dump(mode="json").items() if k != "name"}
    step_key = _key({"net": net, "batch": batch, "device": spec.train.device, "precision": spec.train.precision,
                     "channels_last": spec.train.channels_last, "threads": threads, "image_size": shape.image_size,
                     "classes": shape.classes, "augment": shape.augment, "host": socket.gethostname()})
    cache = StepTimeCache(home)
    stored = cache.read()["steps"].get(step_key)
    timing = StepTiming(**stored) if stored else _measure(spec, shape, batch, threads)
    estimate = _estimate(spec, shape, timing, cached=stored is not None)
    data = cache.read()
    data["steps"][step_key] = asdict(timing)
    data["runs"][_run_key(spec.model_dump(mode="json"), threads)] = estimate.seconds
    cache.write(data)
    return estimate


def _evaluations(iterations: int, per_epoch: int, every: int | None) -> int:
    """Evaluations the loop makes: at each epoch end, at the end of the budget, and every `every` iterations
    where that is not an epoch end."""
    count = iterations // per_epoch
    if every:
        count += iterations // every - iterations // math.lcm(per_epoch, every)
    ends_on_one = iterations % per_epoch == 0 or (every and iterations % every == 0)
    return count + (0 if ends_on_one else 1)


def _estimate(spec: RunSpec, shape: DatasetShape, timing: StepTiming, *, cached: bool) -> RunEstimate:
    train = spec.train
    val = spec.data.validation_size
    per_epoch = max(1, (shape.train - val) // train.batch_size)
    iterations = train.total_iterations(per_epoch)
    evaluations = _evaluations(iterations, per_epoch, train.eval_every)
    eval_images = shape.test + val
    seconds = iterations * _step_s_at(timing, train.batch_size) + evaluations * eval_images * timing.eval_image_s
    return RunEstimate(seconds=seconds, iterations=iterations, evaluations=evaluations, eval_images=eval_images,
                       batch_size=train.batch_size, timing=timing, cached=cached)


def expected_finishes(runs: Sequence[RunRecord], cache: StepTimeCache, workers: int, threads: int,
                      now: datetime, trained_seconds: Mapping[int, float]) -> dict[int, datetime]:
    """When running runs should finish (from the seconds they have trained, across resumes, and their progress)
    and, where an estimate of their spec is cached, when queued runs should: in queue order, each on the first of
    `workers` workers to be free."""
    finishes: dict[int, datetime] = {}
    for run in runs:
        if run.status == RUNNING and run.started_at and run.iteration and run.total_iterations:
            # A resumed run's start time is its latest start; its iterations count from the first.
            trained = trained_seconds.get(run.id) or (now - run.started_at).total_seconds()
            left = trained * (run.total_iterations - run.iteration) / run.iteration
            finishes[run.id] = now + timedelta(seconds=left)
    free = sorted(finishes.values())[:workers]
    free += [now] * (workers - len(free))
    known = cache.read()["runs"]
    for run in sorted((run for run in runs if run.status == QUEUED), key=lambda run: run.id):
        seconds = known.get(_run_key(run.spec, threads))
        if seconds is None:
            break  # later runs wait behind one of unknown length
        start = free.pop(free.index(min(free)))
        finishes[run.id] = start + timedelta(seconds=seconds)
        free.append(finishes[run.id])
    return finishes
