"""fit/evaluate: the paper's training recipe, reporting through a small sink interface.

Nothing here knows about the store or the UI: a worker connects a sink to the store, the CLI
to a progress bar, tests to a list.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from workbench.data import Dataset, TrainBatches, eval_batches, load_dataset
from workbench.errors import WorkbenchError
from workbench.models import Network, build_network
from workbench.paths import RunFolder
from workbench.spec import NetworkSpec, RunSpec
from workbench.threads import ThreadGovernor
from workbench.training.checkpoint import load_checkpoint, save_checkpoint
from workbench.training.distributed import Replica, data_parallel, sync_batchnorm
from workbench.training.probes import UnitInputGradients
from workbench.training.schedule import LearningRateSchedule

logger = logging.getLogger(__name__)

GRAD_NORM_PREFIX = "grad_norm/"

#: The train metric holding the seconds a run has trained so far, across resumes.
RUN_SECONDS = "run_seconds"


class TrainingDiverged(WorkbenchError):
    """The loss became NaN or infinite."""


class TrainingSink(Protocol):
    """Where a training loop reports. Every method must be cheap: it is called from the hot loop."""

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rows of {iteration, epoch, split, name, value, wall_time}."""

    def progress(self, state: dict[str, Any]) -> None:
        """iteration, total_iterations, epoch, images_per_s (over the whole run), train_error, test_error; after
        an evaluation also best_split, best_error (on best_split) and test_error_at_best (the test error of the
        best checkpoint)."""

    def should_stop(self) -> bool:
        """True when the user asked to cancel; the loop checkpoints and returns."""

    def rewind(self, iteration: int) -> None:
        """Forget metrics logged after `iteration` (called on resume, before training continues)."""

    def checkpoint_saved(self, path: Path, kind: str) -> None:
        """A checkpoint ('last' or 'best') was written."""


class MemorySink:
    """A sink that keeps every metric row in memory; for scripts and tests."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.last_progress: dict[str, Any] = {}

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def progress(self, state: dict[str, Any]) -> None:
        self.last_progress = state

    def should_stop(self) -> bool:
        return False

    def rewind(self, iteration: int) -> None:
        self.rows = [row for row in self.rows if row["iteration"] <= iteration]

    def checkpoint_saved(self, path: Path, kind: str) -> None:
        pass


class _Silent(MemorySink):
    """The sink of the ranks other than 0 of a data-parallel run: they report nothing."""

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        pass


@dataclass
class StartingModel:
    """The network a run starts from, and the normalization its weights expect (None: the dataset's)."""

    model: nn.Module
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ModelFactory(Protocol):
    """Builds the network of a run for `net` (the spec adapted to the data); `resuming` when a checkpoint follows."""

    def __call__(self, net: NetworkSpec, *, resuming: bool) -> StartingModel: ...


def fresh_model(net: NetworkSpec, *, resuming: bool) -> StartingModel:
    """A newly initialised network: the factory of every run that does not start from other weights."""
    return StartingModel(build_network(net))


@dataclass
class FitResult:
    """How a call to `fit` ended. `best_error` and `last_error` are on `best_split`: the validation split when the
    data has one (the honest choice), else the test split; `test_error_at_best` is the best checkpoint's test error."""

    status: str
    iteration: int
    total_iterations: int
    best_error: float | None
    last_error: float | None
    net: NetworkSpec
    device: str
    precision: str
    info: dict = field(default_factory=dict)
    best_split: str = "test"
    test_error: float | None = None
    test_error_at_best: float | None = None
    world_size: int = 1


def resolve_device(choice: str) -> torch.device:
    """CUDA if available, else MPS, else CPU ('auto'); an explicit choice must exist."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise WorkbenchError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(choice)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. 'auto': bf16 on CUDA and on CPUs with native bf16."""
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """The name of the precision a run computes in: "fp32", "bfloat16" or "float16"."""
    return str(autocast_dtype or "fp32").removeprefix("torch.")


def resolve_channels_last(choice: str, device: torch.device, autocast_dtype: torch.dtype | None) -> bool:
    if choice == "auto":
        return device.type == "cuda" or autocast_dtype is not None
    return choice == "on"


def adapt_net_to_data(net: NetworkSpec, dataset: Dataset) -> NetworkSpec:
    """The net (of any family) with as many outputs as the dataset has classes, and its image size as input size."""
    updates: dict[str, Any] = {}
    if net.num_classes != dataset.info.num_classes:
        logger.info("network output %d -> %d classes of %s",
                    net.num_classes, dataset.info.num_classes, dataset.info.name)
        updates["num_classes"] = dataset.info.num_classes
    if net.input_size != dataset.info.image_size:
        updates["input_size"] = dataset.info.image_size
    return type(net).model_validate({**net.model_dump(), **updates}) if updates else net


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    batch_size: int = 500,
    replica: Replica | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, error in %) of `model` on a held-out split; with a `replica` of a data-parallel run,
    `images` are this rank's share and the result is the whole split's."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)
    with torch.no_grad(), autocast:
        for batch, target in eval_batches(
            images, labels, batch_size, mean=mean, std=std, device=device, channels_last=channels_last
        ):
            logits = model(batch).float()
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            wrong += (logits.argmax(1) != target).sum()
    model.train(was_training)
    sums = torch.stack([loss_sum.double(), wrong.double(), torch.tensor(len(labels), dtype=torch.float64,
                                                                         device=device)])
    loss_sum, wrong, count = (sums if replica is None else replica.sum(sums)).tolist()
    return loss_sum / count, 100.0 * wrong / count


def _stage_gradient_norms(model: Network) -> dict[str, float]:
    """`grad_norm/<stage>` for every stage of any family (layer1.., denseblock1.., block1..)."""
    norms = {}
    for name, stage in model.named_stages():
        grads = [p.grad for p in stage.parameters() if p.grad is not None]
        if grads:
            norms[f"{GRAD_NORM_PREFIX}{name}"] = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(grads))
            ).item()
    return norms


class _Trainer:
    """State of one training run between `fit` calls' setup and its end."""

    def __init__(
        self, run: RunSpec, folder: RunFolder, sink: TrainingSink, dataset: Dataset, model_factory: ModelFactory,
        replica: Replica,
    ) -> None:
        self.run = run
        self.train = run.train
        self.folder = folder
        self.sink = sink
        self.dataset = dataset
        self.replica = replica
        self.device = replica.device
        self.autocast_dtype = resolve_precision(self.train.precision, self.device)
        self.channels_last = resolve_channels_last(self.train.channels_last, self.device, self.autocast_dtype)
        self.net = adapt_net_to_data(run.net, dataset)
        info = dataset.info
        self.mean, self.std = tuple(info.mean), tuple(info.std)

        torch.manual_seed(self.train.seed)
        starting = model_factory(self.net, resuming=folder.last.exists())
        if starting.mean is not None and starting.std is not None:
            self.mean, self.std = tuple(starting.mean), tuple(starting.std)
            logger.info("using the source model's normalization mean %s std %s", self.mean, self.std)
        model = sync_batchnorm(starting.model) if self.train.sync_batchnorm and replica.world_size > 1 else (
            starting.model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_model = torch.compile(self.model) if self.train.compile else self.model
        self.threads = ThreadGovernor.for_this_process(torch.get_num_threads()) if self.device.type == "cpu" else None
        self.batches = TrainBatches(
            dataset.train_images,
            dataset.train_labels,
            self.train.batch_size,
            augment=info.augment,
            mean=self.mean,
            std=self.std,
            device=self.device,
            channels_last=self.channels_last,
            seed=self.train.seed,
            shard=(replica.rank, replica.world_size),
        )
        self.total = self.train.total_iterations(len(self.batches))
        self.schedule = LearningRateSchedule(self.train, self.total)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.schedule.lr(0),
            momentum=self.train.momentum,
            nesterov=self.train.nesterov,
            weight_decay=self.train.weight_decay,
        )
        self.iteration = 0
        self.eval_splits = self._eval_splits()
        # The split the best checkpoint is chosen on: validation when there is one, so test stays unseen.
        self.best_split = self.eval_splits[0][0]
        self.best_error: float | None = None
        self.last_error: float | None = None
        self.test_error: float | None = None
        self.test_error_at_best: float | None = None
        # Images trained and seconds spent training them, over the whole run (checkpointed, so across resumes).
        self.run_images, self.run_seconds = 0, 0.0
        self._reset_interval()

    def _eval_splits(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Each split's share of this rank (all of it in one process)."""
        splits = []
        if self.dataset.val_images is not None and len(self.dataset.val_labels):
            splits.append(("val", self.dataset.val_images, self.dataset.val_labels))
        splits.append(("test", self.dataset.test_images, self.dataset.test_labels))
        return [(name, self.replica.share(images), self.replica.share(labels)) for name, images, labels in splits]

    @property
    def epoch(self) -> float:
        return self.iteration / len(self.batches)

    def _reset_interval(self) -> None:
        self.interval_loss = torch.zeros((), device=self.device)
        self.interval_wrong = torch.zeros((), device=self.device, dtype=torch.long)
        self.interval_images = 0
        self.interval_steps = 0
        self.interval_start = time.perf_counter()

    # -- checkpoints ------------------------------------------------------------------------

    def _run_spec_data(self) -> dict:
        return self.run.model_copy(update={"net": self.net}).model_dump(mode="json")

    def _interval_sums(self) -> torch.Tensor:
        """[loss sum, wrong predictions, images] of this rank's unfinished logging interval, in float64."""
        return torch.stack([self.interval_loss.double(), self.interval_wrong.double(),
                            torch.tensor(float(self.interval_images), dtype=torch.float64, device=self.device)])

    def save(self, kind: str) -> None:
        """Write a checkpoint from rank 0; every rank calls it (the last one holds each rank's unfinished interval)."""
        ranks_intervals = None
        if kind == "last" and self.replica.world_size > 1:
            ranks_intervals = self.replica.gather(self._interval_sums()).cpu()
        if not self.replica.main:
            return
        path = self.folder.checkpoint(kind)
        state: dict[str, Any] = {
            "run_spec": self._run_spec_data(),
            "dataset": self.dataset.info.to_dict(),
            "metadata": {
                "dataset": self.dataset.info.name,
                "class_names": list(self.dataset.info.class_names),
                "mean": list(self.mean),
                "std": list(self.std),
                "input_size": self.net.input_size,
                "best_error": self.best_error,
                "last_error": self.last_error,
                "best_split": self.best_split,
                "test_error_at_best": self.test_error_at_best,
            },
            "model": self.model.state_dict(),
            "iteration": self.iteration,
            "best_error": self.best_error,
            "last_error": self.last_error,
            "test_error": self.test_error,
            "test_error_at_best": self.test_error_at_best,
            "run_totals": {"images": self.run_images, "seconds": self.run_seconds},
        }
        if kind == "last":
            state.update(
                optimizer=self.optimizer.state_dict(),
                schedule=self.schedule.state_dict(),
                loader=self.batches.state_dict(),
                rng_cpu=torch.get_rng_state(),
                rng_cuda=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                interval={
                    "loss": self.interval_loss.cpu(),
                    "wrong": self.interval_wrong.cpu(),
                    "images": self.interval_images,
                    "steps": self.interval_steps,
                    "seconds": time.perf_counter() - self.interval_start,
                    **({} if ranks_intervals is None else {"ranks": ranks_intervals}),
                },
            )
        save_checkpoint(path, state)
        self.sink.checkpoint_saved(path, kind)

    def restore(self) -> bool:
        """Continue from the last checkpoint in the run folder, if there is one.

        Either way the sink forgets the metrics logged after the point training continues from: a run
        that was stopped before its first checkpoint starts over, and logs those iterations again.
        """
        path = self.folder.last
        if not path.exists():
            self.sink.rewind(0)
            logger.info("no checkpoint in %s; training starts from the beginning", path.parent)
            return False
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.iteration = int(state["iteration"])
        self.best_error, self.last_error = state["best_error"], state["last_error"]
        # Checkpoints from before validation-based selection chose on test, where both errors are the same.
        self.test_error = state.get("test_error", self.last_error)
        self.test_error_at_best = state.get("test_error_at_best", self.best_error)
        interval = state["interval"]
        self.interval_steps = interval["steps"]
        if "ranks" in interval:  # a data-parallel run: each rank goes on with its own share of the interval
            loss, wrong, images = interval["ranks"][self.replica.rank].tolist()
            self.interval_loss = torch.tensor(loss, dtype=torch.float32, device=self.device)
            self.interval_wrong = torch.tensor(int(wrong), device=self.device)
            self.interval_images = int(images)
        else:
            self.interval_loss = interval["loss"].to(self.device)
            self.interval_wrong = interval["wrong"].to(self.device)
            self.interval_images = interval["images"]
        self.interval_start = time.perf_counter() - interval.get("seconds", 0.0)
        totals = state.get("run_totals", {})
        self.run_images, self.run_seconds = totals.get("images", 0), totals.get("seconds", 0.0)
        self.sink.rewind(self.iteration)
        logger.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total)
        return True

    # -- reporting --------------------------------------------------------------------------

    def _row(self, split: str, name: str, value: float, now: float) -> dict[str, Any]:
        return {"iteration": self.iteration, "epoch": self.epoch, "split": split, "name": name,
                "value": value, "wall_time": now}

    def flush_train_metrics(self, grad_norms: dict[str, float]) -> None:
        if self.interval_steps == 0:
            return
        elapsed = time.perf_counter() - self.interval_start
        loss_sum, wrong, images = self.replica.sum(self._interval_sums()).tolist()
        loss = loss_sum / images
        error = 100.0 * wrong / images
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at iteration {self.iteration} (learning rate "
                f"{self.optimizer.param_groups[0]['lr']:g}); lower the learning rate or add warm-up"
            )
        images_per_s = images / elapsed if elapsed > 0 else 0.0
        self.run_images += images
        self.run_seconds += elapsed
        self.schedule.observe_train_error(error)
        now = time.time()
        rows = [
            self._row("train", "loss", loss, now),
            self._row("train", "error", error, now),
            self._row("train", "lr", self.optimizer.param_groups[0]["lr"], now),
            self._row("train", "images_per_s", images_per_s, now),
            self._row("train", RUN_SECONDS, self.run_seconds, now),
        ]
        rows += [self._row("train", name, value, now) for name, value in grad_norms.items()]
        self.sink.metrics(rows)
        self.sink.progress({
            "iteration": self.iteration, "total_iterations": self.total, "epoch": self.epoch,
            "images_per_s": self.run_images / self.run_seconds if self.run_seconds > 0 else 0.0,
            "train_error": error, "test_error": self.test_error,
        })
        self._reset_interval()

    def evaluate_and_report(self, epoch_time: float | None = None) -> None:
        now = time.time()
        rows = []
        for split, images, labels in self.eval_splits:
            loss, error = evaluate(
                self.model, images, labels, mean=self.mean, std=self.std, device=self.device,
                autocast_dtype=self.autocast_dtype, channels_last=self.channels_last, replica=self.replica,
            )
            rows += [self._row(split, "loss", loss, now), self._row(split, "error", error, now)]
            if split == self.best_split:
                self.last_error = error
            if split == "test":
                self.test_error = error
        if epoch_time is not None:
            rows.append(self._row("train", "epoch_time", epoch_time, now))
        self.sink.metrics(rows)
        if self.best_error is None or self.last_error < self.best_error:
            self.best_error, self.test_error_at_best = self.last_error, self.test_error
            self.save("best")
        self.sink.progress({
            "iteration": self.iteration, "total_iterations": self.total, "epoch": self.epoch,
            "test_error": self.test_error, "best_split": self.best_split, "best_error": self.best_error,
            "test_error_at_best": self.test_error_at_best,
        })
        self.interval_start = time.perf_counter()

    # -- the loop ---------------------------------------------------------------------------

    def step(self, images: torch.Tensor, labels: torch.Tensor, want_grad_norms: bool) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.iteration)
        every = self.train.grad_norm_every
        record_units = every > 0 and (self.iteration + 1) % every == 0
        with contextlib.ExitStack() as stack:
            recorder = stack.enter_context(UnitInputGradients(self.model)) if record_units else None
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                logits = self.step_model(images)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.replica.average_step(self.model)
        grad_norms = _stage_gradient_norms(self.model) if want_grad_norms else {}
        self.optimizer.step()
        self.iteration += 1
        count = labels.shape[0]
        self.interval_loss += loss.detach() * count
        self.interval_wrong += (logits.detach().argmax(1) != labels).sum()
        self.interval_images += count
        self.interval_steps += 1
        if recorder is not None:
            now = time.time()
            self.sink.metrics([
                self._row("train", f"unit_grad/{index}", value, now)
                for index, value in enumerate(recorder.norms(), start=1) if value is not None
            ])
        return grad_norms

    def loop(self) -> str:
        log_every, eval_every = self.train.log_every, self.train.eval_every
        self.model.train()
        epoch_start = time.perf_counter()
        if self.iteration >= self.total:
            return "completed"
        while True:
            for images, labels in self.batches:
                want_norms = (self.iteration + 1) % log_every == 0
                started = time.perf_counter()
                grad_norms = self.step(images, labels, want_norms)
                if self.threads is not None:
                    self.threads.observe(time.perf_counter() - started)
                if self.iteration % log_every == 0:
                    self.flush_train_metrics(grad_norms)
                epoch_end = self.batches.position >= len(self.batches)
                finished = self.iteration >= self.total
                if epoch_end or finished:
                    self.flush_train_metrics({})
                    self.evaluate_and_report(epoch_time=time.perf_counter() - epoch_start)
                    self.save("last")
                    epoch_start = time.perf_counter()
                elif eval_every and self.iteration % eval_every == 0:
                    self.evaluate_and_report()
                if finished:
                    return "completed"
                if self.replica.agree(self.sink.should_stop()):
                    if not epoch_end:
                        # The unfinished logging interval is saved and continues after resume.
                        self.save("last")
                    return "cancelled"


def fit(
    run: RunSpec,
    run_dir: Path,
    sink: TrainingSink | None = None,
    *,
    home: Path | None = None,
    allowed_roots: list[Path] | None = None,
    dataset: Dataset | None = None,
    resume: bool = True,
    model_factory: ModelFactory = fresh_model,
) -> FitResult:
    """Train `run` to its budget, checkpointing into `run_dir`; continue from its last checkpoint if any.

    `model_factory` builds the starting network (a fine-tune's comes from `workbench.weights`).
    """
    if run.init_from is not None and model_factory is fresh_model:
        raise WorkbenchError("this run starts from init_from; pass model_factory=workbench.weights.model_factory(run)")
    sink = sink or MemorySink()
    dataset = dataset if dataset is not None else load_dataset(run.data, home=home, allowed_roots=allowed_roots)
    if run.train.devices > 1:
        others = (run, run_dir, _Silent(), dataset, model_factory, resume)
        with data_parallel(run.train, _fit_replica, others) as replica:
            return _fit_replica(replica, run, run_dir, sink, dataset, model_factory, resume)
    return _fit_replica(Replica(resolve_device(run.train.device)), run, run_dir, sink, dataset, model_factory, resume)


def _fit_replica(replica: Replica, run: RunSpec, run_dir: Path, sink: TrainingSink, dataset: Dataset,
                 model_factory: ModelFactory, resume: bool) -> FitResult:
    """`fit` on one rank of a run (the only one, or one of a data-parallel run's)."""
    trainer = _Trainer(run, RunFolder(run_dir), sink, dataset, model_factory, replica)
    if resume:
        trainer.restore()
    if replica.main:
        logger.info(
            "training %s on %s: %d iterations, device %s x %d, precision %s, channels_last %s",
            trainer.net.name, dataset.info.name, trainer.total, trainer.device, replica.world_size,
            trainer.autocast_dtype or "fp32", trainer.channels_last,
        )
    status = trainer.loop()
    return FitResult(
        status=status,
        iteration=trainer.iteration,
        total_iterations=trainer.total,
        best_error=trainer.best_error,
        last_error=trainer.last_error,
        net=trainer.net,
        device=str(trainer.device),
        precision=precision_name(trainer.autocast_dtype),
        info=dataset.info.to_dict(),
        best_split=trainer.best_split,
        test_error=trainer.test_error,
        test_error_at_best=trainer.test_error_at_best,
        world_size=replica.world_size,
    )
