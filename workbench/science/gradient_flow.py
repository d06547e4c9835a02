"""Gradient norm at each residual unit's input, recorded cheaply during training."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from workbench.models import Network, build_network
from workbench.spec import NetworkSpec
from workbench.training.probes import UnitInputGradients, gradient_norm  # noqa: F401  (gradient_norm re-exported for the bench)


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
