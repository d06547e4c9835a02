"""Unit-input gradient norms: the recorder agrees with autograd, in fp32 and under bf16 autocast."""

import pytest
import torch
import torch.nn.functional as F

from workbench.models import ResNet
from workbench.science.gradient_flow import UnitInputGradients, gradient_profile
from workbench.spec import NetSpec


def batch(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def autograd_norms(model: ResNet, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """||dL/dx|| at each unit's input, from autograd.grad on the captured inputs."""
    inputs: list[torch.Tensor] = []
    handles = [unit.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for unit in model.units()]
    try:
        loss = F.cross_entropy(model(images), labels)
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(loss, inputs)
    return [float(torch.linalg.vector_norm(grad.double())) for grad in grads]


@pytest.mark.parametrize("shortcut", ["A", "none"])
def test_recorded_norms_equal_autograd_in_fp32(shortcut):
    torch.manual_seed(0)
    model = ResNet(NetSpec(depth=20, shortcut=shortcut)).train()
    images, labels = batch()
    expected = autograd_norms(model, images, labels)
    recorded = gradient_profile(model, images, labels)
    assert len(recorded) == 9
    assert recorded == pytest.approx(expected, rel=1e-4)


def test_recorded_norms_under_bf16_autocast_are_within_rounding_of_the_exact_norm():
    torch.manual_seed(0)
    model = ResNet(NetSpec(depth=20)).train().to(memory_format=torch.channels_last)
    images, labels = batch(32)
    images = images.contiguous(memory_format=torch.channels_last)
    exact: list[torch.Tensor] = []

    def keep(_module, args):
        args[0].register_hook(lambda grad: exact.append(torch.linalg.vector_norm(grad.double())))

    handles = [unit.register_forward_pre_hook(keep) for unit in model.units()]
    with UnitInputGradients(model) as recorder, torch.autocast("cpu", dtype=torch.bfloat16):
        F.cross_entropy(model(images).float(), labels).backward()
    for handle in handles:
        handle.remove()
    recorded = recorder.norms()
    assert all(value is not None and value > 0 for value in recorded)
    # Backward runs the units last to first.
    assert recorded == pytest.approx([float(norm) for norm in reversed(exact)], rel=0.01)
