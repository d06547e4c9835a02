"""The checks across fields that every run passes before it is queued: the device exists, and the network
fits in it. Field bounds live in the specs (workbench/spec.py), data checks in `workbench.data.check_source`.

Costs are counted from the spec on PyTorch's meta device: the model is laid out without any weights being
allocated, so a network too big to train never takes memory in the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from workbench import layout_model, summarize
from workbench.errors import SpecError
from workbench.models.analysis import count_parameters
from workbench.spec import NetSpec, RunSpec
from workbench.training.distributed import check_devices

MAX_PARAMS = 500_000_000  # eight times the largest preset (ResNet-152, 60 M)
TRAINING_BYTES_PER_PARAM = 12  # fp32 weights, their gradients and SGD momentum
REVIEW_BATCH_SIZE = 128  # the batch the Build tab's summary counts activations for


@dataclass(frozen=True)
class NetworkCost:
    """What training a network costs, counted from its spec; `summary` is None when the parameters alone
    are over the limit (the rest is not counted then)."""

    params: int
    summary: dict | None
    batch_size: int
    memory_name: str
    memory_bytes: int

    @property
    def training_bytes(self) -> int:
        """Weights, gradients, momentum and the activations kept for backward at `batch_size`."""
        return TRAINING_BYTES_PER_PARAM * self.params + self.summary["activation_bytes"]

    def problem(self) -> str | None:
        """Why this network cannot be trained here, with the numbers; None when it can."""
        if self.summary is None:
            return (f"the network has {self.params:,} parameters; the limit is {MAX_PARAMS:,} (eight times "
                    "ResNet-152); use fewer units or narrower stages")
        if self.training_bytes > self.memory_bytes:
            return (f"training needs about {_gib(self.training_bytes)} at batch size {self.batch_size} (weights, "
                    f"gradients, momentum and activations), more than the {_gib(self.memory_bytes)} of "
                    f"{self.memory_name}; use a smaller batch size, input size or width")
        return None


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def check_device(device: str) -> None:
    """SpecError when the run asks for an accelerator this machine does not have."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("device: cuda was asked for, but this machine has no CUDA GPU that PyTorch can use; "
                        "choose auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SpecError("device: mps was asked for, but this machine has no Apple GPU; choose auto or cpu")


def device_memory(device: str) -> tuple[str, int]:
    """(what it is, bytes) of the memory a run on `device` trains in, on this machine."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"the GPU ({torch.cuda.get_device_name(0)})", torch.cuda.get_device_properties(0).total_memory
    return "this machine's memory", psutil.virtual_memory().total


def network_cost(net: NetSpec, batch_size: int = REVIEW_BATCH_SIZE, device: str = "auto") -> NetworkCost:
    """Parameters, multiply-adds, activations and training memory of `net`, counted on the meta device."""
    model = layout_model(net)
    params = count_parameters(model)[0]
    summary = summarize(model, batch_size=batch_size) if params <= MAX_PARAMS else None
    return NetworkCost(params, summary, batch_size, *device_memory(device))


def check_run(spec: RunSpec) -> None:
    """SpecError when the run's device is missing, it asks for more devices than this machine has, or its network
    does not fit one device at its share of the batch (see NetworkCost.problem)."""
    check_device(spec.train.device)
    check_devices(spec.train)
    problem = network_cost(spec.net, spec.train.batch_size // spec.train.devices, spec.train.device).problem()
    if problem:
        raise SpecError(f"{spec.net.name}: {problem}")
