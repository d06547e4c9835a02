"""What a network costs and how deep it is, counted from the built model (never from tables)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.models.network import Network


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _trace_shapes(model: Network, input_size: int) -> tuple[int, dict[str, tuple[int, ...]], int]:
    """One forward pass of a single image with hooks: multiply-adds, stage output shapes, activation elements."""
    macs = 0
    activations = 0
    stage_shapes: dict[str, tuple[int, ...]] = {}

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs, activations
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs += output.numel() * kernel
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        activations += output.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    for stage_name, stage in model.named_stages():
        handles.append(
            stage.register_forward_hook(
                lambda _m, _i, out, name=stage_name: stage_shapes.__setitem__(name, tuple(out.shape[1:]))
            )
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, model.spec.in_channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs, stage_shapes, activations


def weighted_depth(model: Network) -> int:
    """Conv and linear layers on the longest path: for a ResNet the stem, every branch conv, the classifier."""
    return model.weighted_depth()


def path_length_distribution(model: Network) -> list[float]:
    """P(a path through the network crosses k units), k = 0..n.

    Each residual unit offers two routes (branch or shortcut), so the lengths are Binomial(n, 1/2)
    (Veit et al. 2016); a plain net has a single path through all n units. A dense block's paths
    cross any subset of its layers (Binomial over dense layers); a FractalNet's k counts convs.
    """
    return model.path_lengths()


def summarize(model: Network, input_size: int | None = None, batch_size: int = 128) -> dict:
    """Parameters, multiply-adds per image, weighted depth, per-stage table, memory and path lengths."""
    size = input_size or model.spec.input_size
    total, trainable = count_parameters(model)
    macs, stage_shapes, activations = _trace_shapes(model, size)
    stages = []
    for (name, stage), units in zip(model.named_stages(), model.stage_units(), strict=True):
        stages.append(
            {
                "stage": name,
                "units": len(units),
                "output_shape": list(stage_shapes[name]),
                "params": sum(p.numel() for p in stage.parameters()),
            }
        )
    units = model.units()
    residual = getattr(model.spec, "residual", True)
    expected_depth = sum(1.0 - getattr(unit, "drop_prob", 0.0) for unit in units) if residual else None
    return {
        "name": model.spec.name,
        "kind": getattr(model.spec, "kind", "resnet"),
        "params": total,
        "trainable_params": trainable,
        "macs": macs,
        "depth": weighted_depth(model),
        "units": len(units),
        "input_size": size,
        "stages": stages,
        # fp32 activations kept for backward, a rough upper bound for training memory.
        "activation_bytes": activations * 4 * batch_size,
        "activation_batch_size": batch_size,
        "path_lengths": path_length_distribution(model),
        "expected_units": expected_depth,
    }
