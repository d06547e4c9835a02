"""Gradient norm at each residual unit's input, recorded cheaply during training."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.models import Network, build_network
from workbench.spec import NetworkSpec


def gradient_norm(grad: torch.Tensor) -> torch.Tensor:
    """The L2 norm of a gradient, as a 0-d fp32 tensor left on its device.

    Reduced in the gradient's own dtype: the reduction accumulates in fp32 internally, so a bf16
    gradient loses only the result's rounding (about 0.4%), while a float() copy first would cost
    7x the time (it writes a full fp32 copy of every unit's input gradient).
    """
    return torch.linalg.vector_norm(grad.detach()).float()


class UnitInputGradients:
    """While active, the next backward pass records ||dL/dx|| at the input of every unit.

    Forward hooks register a tensor hook on each unit's input; the norms stay on the device
    until `norms()` is read, so recording costs one reduction per unit and no extra sync.
    """

    def __init__(self, model: Network) -> None:
        self.units = model.units()
        self._norms: list[torch.Tensor | None] = [None] * len(self.units)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _forward_hook(self, index: int):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            tensor = inputs[0]
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: self._record(index, grad))

        return hook

    def _record(self, index: int, grad: torch.Tensor) -> None:
        self._norms[index] = gradient_norm(grad)

    def __enter__(self) -> UnitInputGradients:
        self._norms = [None] * len(self.units)
        self._handles = [unit.register_forward_pre_hook(self._forward_hook(i)) for i, unit in enumerate(self.units)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def norms(self) -> list[float | None]:
        """The recorded norms, one per unit in forward order (None where no gradient reached it)."""
        values = [n for n in self._norms if n is not None]
        floats = iter(torch.stack(values).tolist()) if values else iter(())
        return [next(floats) if n is not None else None for n in self._norms]


def gradient_profile(model: Network, images: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """Per-unit input gradient norms for one training-mode batch, computed on a copy of the model."""
    probe = copy.deepcopy(model).train()
    recorder = UnitInputGradients(probe)
    with recorder:
        nn.functional.cross_entropy(probe(images), labels).backward()
    return recorder.norms()


UNIT_GRAD_PREFIX = "unit_grad/"


def unit_gradient_matrix(rows: Iterable[Any]) -> tuple[list[int], list[int], list[list[float | None]]]:
    """(iterations, unit numbers, norms[unit][iteration]) from a run's `unit_grad/<k>` metric rows.

    Rows are store rows or mappings with `name`, `iteration` and `value`; a unit with no value
    at an iteration gets None there.
    """
    values: dict[tuple[int, int], float | None] = {}
    iterations: set[int] = set()
    units: set[int] = set()
    for row in rows:
        name = row["name"] if isinstance(row, Mapping) else row.name
        if not name.startswith(UNIT_GRAD_PREFIX):
            continue
        iteration = int(row["iteration"] if isinstance(row, Mapping) else row.iteration)
        value = row["value"] if isinstance(row, Mapping) else row.value
        unit = int(name[len(UNIT_GRAD_PREFIX):])
        values[(unit, iteration)] = value
        iterations.add(iteration)
        units.add(unit)
    ordered_iterations, ordered_units = sorted(iterations), sorted(units)
    matrix = [[values.get((unit, it)) for it in ordered_iterations] for unit in ordered_units]
    return ordered_iterations, ordered_units, matrix


def initial_gradient_profile(
    net: NetworkSpec, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0
) -> list[float | None]:
    """Per-unit input gradient norms of `net` freshly initialised with `seed` (as `fit` does), on one batch."""
    torch.manual_seed(seed)
    return gradient_profile(build_network(net), images, labels)


def initial_profiles_of_runs(
    store: Any, run_ids: Sequence[int], *, batch_size: int = 128, allowed_roots: list[Path] | None = None
) -> list[tuple[int, list[float | None]]]:
    """(run id, per-unit input gradient norms at initialization) for stored runs.

    Each net is initialised with its run's seed, as `fit` does, and sees the first `batch_size`
    training images of its run's dataset, normalised without augmentation. Each distinct DataSpec
    is loaded once.
    """
    from workbench.data import eval_batches, load_dataset
    from workbench.spec import RunSpec
    from workbench.training.loop import adapt_net_to_data

    loaded: dict[str, tuple[Any, torch.Tensor, torch.Tensor]] = {}
    profiles = []
    for run_id in run_ids:
        spec = RunSpec.model_validate(store.get_run(run_id).spec)
        key = spec.data.model_dump_json()
        if key not in loaded:
            dataset = load_dataset(spec.data, home=store.home, allowed_roots=allowed_roots)
            images, labels = next(eval_batches(
                dataset.train_images[:batch_size], dataset.train_labels[:batch_size], batch_size,
                mean=dataset.info.mean, std=dataset.info.std, device="cpu",
            ))
            loaded[key] = (dataset, images, labels)
        dataset, images, labels = loaded[key]
        net = adapt_net_to_data(spec.net, dataset)
        profiles.append((run_id, initial_gradient_profile(net, images, labels, seed=spec.train.seed)))
    return profiles
