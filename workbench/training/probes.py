"""Probes the training loop can switch on: the gradient norm at each residual unit's input."""

from __future__ import annotations

import torch
from torch import nn

from workbench.models import Network


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
