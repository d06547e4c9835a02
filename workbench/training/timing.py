"""How long a run's training step and evaluation take: a few timed steps of the real training loop (the same
model, batches, augmentation, precision, channels_last and optimizer) on stand-in images of the run's shape.

`python -m workbench.training.timing` reads {"run", "shape", "batch_size"} as JSON on stdin and prints a
StepTiming as JSON: the service runs it in a short process with a worker's thread settings.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from workbench.data import Dataset, DatasetInfo
from workbench.data.base import AugmentKind
from workbench.paths import RunFolder
from workbench.spec import RunSpec
from workbench.training.distributed import Replica
from workbench.training.loop import MemorySink, _Trainer, evaluate, fresh_model, precision_name, resolve_device

WARM_UP_STEPS = 2  # the first steps allocate memory and warm caches: not timed
MAX_TIMED_STEPS = 5
TIMING_BUDGET_S = 1.0  # timed steps stop after this long (at least one is timed), so big nets take fewer


@dataclass(frozen=True)
class StepTiming:
    """Seconds per training step at `batch_size` and per evaluated image, and what they were measured on."""

    step_s: float
    eval_image_s: float
    batch_size: int
    steps: int
    device: str
    precision: str
    channels_last: bool
    threads: int


def _stand_in_data(batch_size: int, batches: int, image_size: int, classes: int, channels: int,
                   augment: AugmentKind | None) -> Dataset:
    """Random uint8 images of the run's shape: timing needs the tensors' sizes, not their content."""
    generator = torch.Generator().manual_seed(0)
    count = batch_size * batches
    images = torch.randint(0, 256, (count, channels, image_size, image_size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % classes
    info = DatasetInfo(name="timing", class_names=[str(c) for c in range(classes)], counts={"train": count},
                       class_counts={}, image_size=image_size, mean=(0.5,) * channels, std=(0.25,) * channels,
                       source="stand-in images", augment=augment)
    return Dataset(train_images=images, train_labels=labels, test_images=images[:batch_size],
                   test_labels=labels[:batch_size], info=info)


def time_steps(run: RunSpec, *, image_size: int, classes: int, augment: AugmentKind | None,
               batch_size: int | None = None) -> StepTiming:
    """Time WARM_UP_STEPS untimed steps, then up to MAX_TIMED_STEPS steps (within TIMING_BUDGET_S) and one
    evaluation pass, at `batch_size` (default the run's). The fastest timed step counts: on a shared machine the
    others carry other processes' interference. torch.compile is left off: its one-off compile would swamp a few
    steps."""
    batch_size = batch_size or run.train.batch_size
    timed = run.model_copy(update={"train": run.train.model_copy(update={"batch_size": batch_size, "compile": False}),
                                   "init_from": None, "finetune": None})
    data = _stand_in_data(batch_size, WARM_UP_STEPS + MAX_TIMED_STEPS, image_size, classes, run.net.in_channels,
                          augment)
    with tempfile.TemporaryDirectory() as folder:
        trainer = _Trainer(timed, RunFolder(folder), MemorySink(), data, fresh_model,
                           Replica(resolve_device(timed.train.device)))
    synchronize = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    times: list[float] = []
    spent = 0.0
    for images, labels in trainer.batches:
        start = time.perf_counter()
        trainer.step(images, labels, want_grad_norms=False)
        synchronize()
        elapsed = time.perf_counter() - start
        if trainer.iteration > WARM_UP_STEPS:
            times.append(elapsed)
            spent += elapsed
            if spent > TIMING_BUDGET_S:
                break
    start = time.perf_counter()
    evaluate(trainer.model, data.test_images, data.test_labels, mean=trainer.mean, std=trainer.std,
             device=trainer.device, autocast_dtype=trainer.autocast_dtype, channels_last=trainer.channels_last)
    synchronize()
    eval_s = time.perf_counter() - start
    return StepTiming(
        step_s=min(times), eval_image_s=eval_s / batch_size, batch_size=batch_size, steps=len(times),
        device=str(trainer.device), precision=precision_name(trainer.autocast_dtype),
        channels_last=trainer.channels_last, threads=torch.get_num_threads(),
    )


def main() -> None:
    request = json.load(sys.stdin)
    shape = request["shape"]
    timing = time_steps(RunSpec.model_validate(request["run"]), image_size=shape["image_size"],
                        classes=shape["classes"], augment=shape["augment"], batch_size=request["batch_size"])
    json.dump(asdict(timing), sys.stdout)


if __name__ == "__main__":
    main()
