"""The builder against the papers and torchvision: exact counts, keys, outputs, every preset trains a step."""

import itertools

import pytest
import torch
import torchvision
from torch import nn

from workbench import build_model, summarize
from workbench.models import PadShortcut
from workbench.presets import list_presets

CIFAR_OPTION_A_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
IMAGENET_OPTION_B_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "expected"), CIFAR_OPTION_A_PARAMS.items())
def test_cifar_resnet_parameter_counts(name, expected):
    assert n_params(build_model(name)) == expected


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_the_same_parameters_as_its_option_a_resnet(depth):
    assert n_params(build_model(f"plain{depth}")) == CIFAR_OPTION_A_PARAMS[f"resnet{depth}"]


def test_option_b_adds_projections_only_where_the_shape_changes():
    model = build_model({"family": "cifar", "depth": 20, "shortcut": "B"})
    assert n_params(model) == 272_474
    projected = [name for name, m in model.named_modules() if name.endswith("downsample")]
    assert projected == ["layer2.0.downsample", "layer3.0.downsample"]


def test_option_c_projects_every_unit():
    model = build_model({"family": "cifar", "depth": 20, "shortcut": "C"})
    units = model.units()
    assert all(isinstance(u.downsample, nn.Sequential) for u in units)


@pytest.mark.parametrize(("name", "expected"), [("preact-resnet164", 1_703_258), ("preact-resnet1001", 10_327_706)])
def test_preact_bottleneck_parameter_counts(name, expected):
    assert n_params(build_model(name)) == expected


@pytest.mark.parametrize(("name", "expected"), IMAGENET_OPTION_B_PARAMS.items())
def test_imagenet_parameter_counts(name, expected):
    assert n_params(build_model(name)) == expected


def test_multiply_adds_match_the_papers():
    assert summarize("resnet20")["macs"] == 40_551_040
    assert summarize("resnet18")["macs"] == pytest.approx(1.814e9, rel=0.01)
    assert summarize("resnet50")["macs"] == pytest.approx(4.089e9, rel=0.01)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_interchanges_with_torchvision(name):
    torch.manual_seed(0)
    ours = build_model(name).eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)

    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)

    reference = getattr(torchvision.models, name)(weights=None).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_paper_bottleneck_puts_the_stride_on_the_first_1x1():
    paper = build_model({"family": "imagenet", "unit": "bottleneck", "depth": 50, "shortcut": "B",
                         "bottleneck_stride": "1x1"})
    unit = paper.layer2[0]
    assert unit.conv1.stride == (2, 2) and unit.conv2.stride == (1, 1)
    v15 = build_model("resnet50").layer2[0]
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)


def test_option_a_subsamples_and_pads_channels_equally_on_both_sides():
    shortcut = PadShortcut(16, 32, stride=2)
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).reshape(2, 16, 4, 4)
    out = shortcut(x)
    assert out.shape == (2, 32, 2, 2)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_plain_net_has_no_shortcuts_and_its_output_ignores_them():
    model = build_model("plain20")
    assert all(not u.residual and u.downsample is None for u in model.units())


PLACEMENT_FORMULAS = {
    "post": lambda u, x: torch.relu(u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(x))))) + x),
    "bn_after_add": lambda u, x: torch.relu(u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(x)))) + x)),
    "relu_before_add": lambda u, x: torch.relu(u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(x)))))) + x,
    "relu_only_preact": lambda u, x: u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(torch.relu(x)))))) + x,
    "full_preact": lambda u, x: u.conv2(torch.relu(u.bn2(u.conv1(torch.relu(u.bn1(x)))))) + x,
}


@pytest.mark.parametrize("placement", PLACEMENT_FORMULAS)
def test_each_placement_orders_bn_relu_and_addition_as_in_he_2016_figure_4(placement):
    torch.manual_seed(0)
    model = build_model({"family": "cifar", "depth": 20, "placement": placement, "shortcut": "B"})
    unit = model.layer1[1].eval()
    for bn in (unit.bn1, unit.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = PLACEMENT_FORMULAS[placement](unit, x.clone())
        torch.testing.assert_close(unit(x), expected)


@pytest.mark.parametrize("placement", PLACEMENT_FORMULAS)
@pytest.mark.parametrize("shortcut", ["A", "B", "C", "none"])
def test_every_bottleneck_variant_builds_and_trains(placement, shortcut):
    spec = {"family": "cifar", "unit": "bottleneck", "depth": 29, "placement": placement, "shortcut": shortcut}
    model = build_model(spec)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters())


def test_zero_init_residual_makes_each_unit_start_as_identity():
    model = build_model({"family": "cifar", "depth": 20, "zero_init_residual": True, "shortcut": "B"})
    assert all(torch.count_nonzero(u.bn2.weight) == 0 for u in model.units())
    unit = model.layer1[1].eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), x)


def test_stochastic_depth_decays_linearly_and_rescales_at_test_time():
    model = build_model("resnet110-sd")
    probs = [u.drop_prob for u in model.units()]
    assert probs[-1] == pytest.approx(0.5)
    assert probs[0] == pytest.approx(0.5 / 54)
    assert all(b > a for a, b in itertools.pairwise(probs))
    summary = summarize(model)
    assert summary["expected_units"] == pytest.approx(sum(1 - p for p in probs))
    unit = model.layer3[-1]
    x = torch.randn(2, 64, 8, 8)
    unit.eval()
    with torch.no_grad():
        branch, _ = unit._branch(x)
        torch.testing.assert_close(unit(x), torch.relu(0.5 * branch + x))
    unit.train()
    torch.manual_seed(0)
    outputs = {bool(torch.equal(unit(x), torch.relu(x))) for _ in range(40)}
    assert outputs == {True, False}, "a unit with drop probability 0.5 must be both dropped and kept over 40 steps"


# The other families' presets train a step in tests/test_models_families.py.
@pytest.mark.parametrize("preset", [p.name for p in list_presets() if p.spec.kind == "resnet"])
def test_every_preset_runs_forward_and_backward(preset):
    torch.manual_seed(0)
    model = build_model(preset)
    size = 32 if model.spec.family == "cifar" else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1]))
    loss.backward()
    assert out.shape == (2, model.spec.num_classes)
    assert torch.isfinite(loss)
    # Units dropped by stochastic depth in this step get no gradient; everything else must.
    dropped_free = [p for name, p in model.named_parameters()
                    if model.spec.stochastic_depth == 0 or "layer" not in name]
    assert all(p.grad is not None for p in dropped_free)


def test_summary_reports_depth_stages_and_path_lengths():
    summary = summarize("resnet56")
    assert summary["depth"] == 56
    assert [s["output_shape"] for s in summary["stages"]] == [[16, 32, 32], [32, 16, 16], [64, 8, 8]]
    assert sum(s["params"] for s in summary["stages"]) < summary["params"]
    paths = summary["path_lengths"]
    n = summary["units"]
    assert len(paths) == n + 1
    assert sum(paths) == pytest.approx(1.0)
    assert sum(k * p for k, p in enumerate(paths)) == pytest.approx(n / 2)
    plain = summarize("plain56")["path_lengths"]
    assert plain[-1] == 1.0 and sum(plain) == 1.0
    assert summarize("resnet56", batch_size=256)["activation_bytes"] == 2 * summary["activation_bytes"]


def test_a_dropped_preact_projection_unit_projects_the_pre_activated_input_as_when_kept():
    model = build_model({"family": "cifar", "depth": 20, "placement": "full_preact", "shortcut": "C",
                         "stochastic_depth": 0.9})
    unit = model.layer3[-1].train()
    unit.drop_prob = 1.0 - 1e-9  # dropped on every training step
    unit.bn1.eval()  # running statistics, so both sides see the same normalisation
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit.downsample(torch.relu(unit.bn1(x))))
