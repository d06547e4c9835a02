"""One run over several devices (torch.distributed): the process group, the collectives the training loop needs,
and the launcher that makes this process rank 0 and spawns the other ranks.

A data-parallel run keeps the curve of one process at the same global batch: each rank takes batch/N of every
global batch (the global order split across ranks, `TrainBatches(shard=...)`), and gradients and BN running
statistics are averaged across ranks before the optimizer steps (so the running mean is the one of one process).
Rank 0 reports and writes; a cancel is rank 0's decision broadcast to every rank, so all stop at the same step.
With one rank every collective is a no-op, so the loop has one code path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.errors import SpecError, WorkbenchError
from workbench.spec import TrainSpec
from workbench.threads import available_cores, use_threads

logger = logging.getLogger(__name__)

# Ranks wait in a collective while rank 0 writes checkpoints and metrics; a rank gone for longer is taken as dead.
GROUP_TIMEOUT = timedelta(minutes=10)
# Starting a rank is a fresh interpreter importing torch: seconds, a minute on a loaded machine.
START_TIMEOUT_S = 120.0
STARTED_POLL_S = 0.1
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
PARENT_CHECK_S = 0.5
HELPER_EXIT_S = 10.0


@dataclass(frozen=True)
class Replica:
    """This process's place in a run: rank `rank` of `world_size`, training on `device`; rank 0 reports and writes."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of `tensor` along its first dimension (evaluation shards)."""
        return tensor.tensor_split(self.world_size)[self.rank]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all ranks, in place."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor`, stacked in rank order."""
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    def agree(self, decision: bool) -> bool:
        """Rank 0's `decision` on every rank (a cancel stops all ranks at the same step)."""
        if self.world_size == 1:
            return decision
        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def average_step(self, model: nn.Module) -> None:
        """Average the gradients and the floating-point buffers (BN running statistics) over the ranks, in one
        collective: every rank then holds the same model, so rank 0's checkpoint is every rank's."""
        tensors = [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [b for b in model.buffers() if b.is_floating_point()]
        if self.world_size == 1 or not tensors:
            return
        flat = self.sum(torch.cat([t.reshape(-1) for t in tensors])).div_(self.world_size)
        torch._foreach_copy_(tensors, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]),
                                                                          tensors, strict=True)])


def data_parallel_device(device: str) -> str:
    """Where the ranks of a run over several devices train: CUDA for 'cuda', and for 'auto' when a GPU is present;
    CPU processes otherwise."""
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def check_devices(train: TrainSpec) -> None:
    """SpecError when this machine has fewer GPUs (or CPU cores) than the run's `devices`."""
    if train.devices == 1:
        return
    if data_parallel_device(train.device) == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise SpecError(f"devices: {train.devices} GPUs asked for, but PyTorch sees no CUDA GPU here; choose "
                            "device cpu for CPU processes")
        if train.devices > count:
            raise SpecError(f"devices: {train.devices} GPUs asked for, but this machine has {count}; use 1 to "
                            f"{count}, or device cpu for CPU processes")
        return
    cores = available_cores()
    if train.devices > cores:
        raise SpecError(f"devices: {train.devices} CPU processes asked for, but this machine has {cores} core"
                        f"{'s' if cores > 1 else ''}; use 1 to {cores}")


def rank_threads(world_size: int) -> int:
    """Torch threads of each rank: this process's share of the cores, split between the ranks."""
    return max(1, torch.get_num_threads() // world_size)


class _GlobalSum(torch.autograd.Function):
    """A sum over all ranks that gradients flow through (each rank's input feeds every rank's output)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm(_BatchNorm):
    """Batch normalization with the statistics of the whole global batch, on any backend (torch's SyncBatchNorm
    runs on GPUs only). Same parameters and buffers as the BatchNorm it replaces, so checkpoints stay plain."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean = _GlobalSum.apply(x.sum(dims)) / count
        centered = x - mean.view(shape)
        var = _GlobalSum.apply(centered.square().sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), momentum)
        return out.to(input.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm replaced by a SyncBatchNorm holding the same parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        for parameter, original in zip(synced.parameters(), module.parameters(), strict=True):
            parameter.requires_grad_(original.requires_grad)
        return synced
    for name, child in module.named_children():
        replaced = sync_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


# -- the launcher ----------------------------------------------------------------------------------------------


def _exit_with(parent_pid: int) -> None:
    """End this helper rank when the process that started it (rank 0) is gone, even killed."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="rank0-watch", daemon=True).start()


def _init_group(rank: int, world_size: int, store: dist.Store, device_type: str) -> Replica:
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(BACKENDS[device_type], store=store, rank=rank,
                            world_size=world_size, timeout=GROUP_TIMEOUT)
    return Replica(device, rank, world_size)


def _helper(index: int, target: Callable[..., Any], args: tuple, world_size: int, port: int, device_type: str,
            threads: int, parent_pid: int) -> None:
    """Rank index + 1: rank 0 decides when to stop, so signals to the whole process group are left to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with(parent_pid)
    use_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, world_size, False, timeout=GROUP_TIMEOUT)
    store.set(f"started/{index + 1}", "yes")
    replica = _init_group(index + 1, world_size, store, device_type)
    target(replica, *args)
    dist.barrier()
    dist.destroy_process_group()
    # A completed rank skips interpreter teardown: now and then a C++ thread of the process group or the store
    # is destroyed still joinable there ("terminate called without an active exception", SIGABRT), which would
    # turn a finished run into a failed one. A rank that raised leaves through spawn's error reporting instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop_helpers(context: mp.ProcessContext) -> str | None:
    """Wait a little for the other ranks to end (their collectives fail once rank 0 left), kill those that do not;
    the error a rank raised, if any."""
    deadline = time.monotonic() + HELPER_EXIT_S
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    for rank, path in enumerate(context.error_files, start=1):
        with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError), open(path, "rb") as file:
            return f"rank {rank}: {pickle.load(file).strip().splitlines()[-1]}"
    return None


def _wait_for_ranks(store: dist.Store, context: mp.ProcessContext) -> None:
    """Return once every other rank has started; a clear error as soon as one died (or after START_TIMEOUT_S)."""
    keys = [f"started/{rank}" for rank in range(1, len(context.processes) + 1)]
    deadline = time.monotonic() + START_TIMEOUT_S
    while not store.check(keys):
        time.sleep(STARTED_POLL_S)
        if not all(process.is_alive() for process in context.processes):
            reason = _stop_helpers(context) or "it exited without a message"
            raise WorkbenchError(f"a data-parallel rank ended before the run started: {reason}")
        if time.monotonic() > deadline:
            raise WorkbenchError(f"the data-parallel ranks did not start within {START_TIMEOUT_S:.0f} s; the machine "
                                 "may be overloaded: try again, or use fewer devices")


@contextlib.contextmanager
def data_parallel(train: TrainSpec, target: Callable[..., Any], helper_args: tuple) -> Iterator[Replica]:
    """This process as rank 0 of `train.devices` ranks; the others run `target(replica, *helper_args)` in spawned
    processes. Yields rank 0's Replica; on leaving, waits for the other ranks (and raises their failure), or, when
    rank 0 failed, stops them."""
    check_devices(train)
    device_type = data_parallel_device(train.device)
    world_size = train.devices
    threads_before = torch.get_num_threads()
    threads = rank_threads(world_size)
    store = dist.TCPStore("127.0.0.1", 0, world_size, True, timeout=GROUP_TIMEOUT, wait_for_workers=False)
    context = mp.start_processes(
        _helper, args=(target, helper_args, world_size, store.port, device_type, threads, os.getpid()),
        nprocs=world_size - 1, join=False, start_method="spawn",
    )
    logger.info("data-parallel run over %d %s processes (%s), %d thread(s) each", world_size, device_type,
                BACKENDS[device_type], threads)
    torch.set_num_threads(threads)
    try:
        _wait_for_ranks(store, context)
        replica = _init_group(0, world_size, store, device_type)
        try:
            yield replica
            dist.barrier()  # no rank tears its pairs down while another is still in a collective
        finally:
            dist.destroy_process_group()
    except BaseException as exc:
        helper_error = _stop_helpers(context)
        if helper_error is not None and not isinstance(exc, WorkbenchError | KeyboardInterrupt | SystemExit):
            raise WorkbenchError(f"a data-parallel rank failed: {helper_error}") from exc
        raise
    else:
        try:
            context.join()
        except ProcessException as exc:
            raise WorkbenchError(f"a data-parallel rank failed: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        torch.set_num_threads(threads_before)
