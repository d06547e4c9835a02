"""FractalNet's columns as an ensemble (Larsson et al. 2016, Sec. 4.3): the test error with every column
joined, and with each column alone, the deepest of which is a plain net of 2^(C-1) convs per block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.models import FractalNet
from workbench.training import evaluate


def check_fractal(model: Any) -> None:
    """WorkbenchError unless `model` (a network or a spec) is a FractalNet."""
    spec = getattr(model, "spec", model)
    if getattr(spec, "kind", "resnet") != "fractalnet":
        raise WorkbenchError(f"per-column evaluation takes a FractalNet's columns one at a time; {spec.name} is a "
                             f"{getattr(spec, 'kind', 'resnet')} network")


def column_errors(
    model: FractalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    on_progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """{"joined": error of all columns joined, "columns": [{"column", "convs", "error"}, ...]} in %."""
    check_fractal(model)
    chosen = model.eval_column
    columns = model.spec.columns
    rows = []
    try:
        for step, column in enumerate([None, *range(1, columns + 1)]):
            model.eval_column = column
            _, error = evaluate(model, images, labels, mean=mean, std=std, device=device)
            if column is None:
                joined = error
            else:
                rows.append({"column": column, "convs": model.spec.blocks * 2 ** (column - 1), "error": error})
            if on_progress is not None:
                on_progress((step + 1) / (columns + 1))
    finally:
        model.eval_column = chosen
    return {"joined": joined, "columns": rows, "images": len(labels)}
