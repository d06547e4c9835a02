"""Invalid specs are refused with messages that say what is wrong and what to do."""

import pytest

from workbench import build_model, load_preset
from workbench.errors import PresetNotFound, SpecError, WorkbenchError
from workbench.presets import get_preset, list_presets, save_preset
from workbench.spec import NetSpec, parse_spec


def spec_error(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(NetSpec, data)
    return str(info.value)


def test_cifar_depth_that_is_not_6n_plus_2_names_the_nearest_valid_depths():
    message = spec_error({"family": "cifar", "depth": 21})
    assert "6n+2" in message and "21 is not one" in message and "20 and 26" in message


def test_bottleneck_cifar_depth_uses_9n_plus_2():
    assert parse_spec(NetSpec, {"unit": "bottleneck", "depth": 164}).blocks == [18, 18, 18]
    assert "9n+2" in spec_error({"unit": "bottleneck", "depth": 60})


def test_imagenet_depth_must_be_a_known_one_and_match_the_unit():
    assert "18, 34, 50, 101, 152" in spec_error({"family": "imagenet", "depth": 42})
    assert "set unit: bottleneck" in spec_error({"family": "imagenet", "depth": 50, "unit": "basic"})


def test_blocks_and_widths_must_agree():
    assert "one width per stage" in spec_error({"blocks": [3, 3], "widths": [16, 32, 64]})
    assert "does not match" in spec_error({"blocks": [3, 3, 3], "depth": 56})
    assert "at least one unit" in spec_error({"blocks": [3, 0, 3]})


def test_custom_blocks_and_widths_build():
    spec = parse_spec(NetSpec, {"blocks": [1, 2, 3, 1], "widths": [8, 16, 32, 64]})
    assert spec.depth == 2 + 2 * 7
    assert build_model(spec).fc.in_features == 64


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"depth": 20, "shortcut": "none", "stochastic_depth": 0.2}, "needs shortcuts"),
        ({"depth": 20, "shortcut": "none", "zero_init_residual": True}, "plain net"),
        ({"depth": 20, "placement": "bn_after_add", "zero_init_residual": True}, "no BN on the residual branch"),
        ({"depth": 20, "stochastic_depth": 1.0}, "[0, 1)"),
        ({"depth": 20, "widths": [64, 32, 16]}, "use shortcut B or C"),
        ({"depth": 20, "input_size": 2}, "total stride"),
        ({"depth": 20, "num_classes": 0}, "num_classes"),
        ({"depth": 20, "shortcut": "D"}, "shortcut"),
        ({"depth": 20, "colour": "red"}, "colour"),
        ({}, "give either depth"),
    ],
)
def test_invalid_combinations_explain_themselves(data, fragment):
    assert fragment in spec_error(data)


def test_spec_errors_are_workbench_errors():
    with pytest.raises(WorkbenchError):
        build_model({"depth": 21})


def test_unknown_preset_lists_the_valid_ones_and_close_matches():
    with pytest.raises(PresetNotFound) as info:
        load_preset("resnet57")
    message = str(info.value)
    assert "resnet56" in message and "preact-resnet164" in message and "Did you mean" in message


def test_preset_lookup_ignores_case_and_dashes():
    assert load_preset("Plain-56") == load_preset("plain56")
    assert get_preset("PREACT_RESNET164").name == "preact-resnet164"


def test_every_preset_records_its_source_and_required_presets_exist():
    presets = {p.name: p for p in list_presets()}
    required = [f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)] + [f"plain{d}" for d in (20, 32, 44, 56, 110)]
    required += ["preact-resnet110", "preact-resnet164", "preact-resnet1001", "plain18", "plain34"]
    required += [f"resnet{d}" for d in (18, 34, 50, 101, 152)] + ["resnet34-A", "resnet34-C", "resnet110-sd"]
    assert set(required) <= set(presets)
    assert all(p.source for p in presets.values())
    assert presets["resnet56"].reference_error == 6.97
    assert presets["resnet34-A"].spec.shortcut == "A" and presets["resnet34-C"].spec.shortcut == "C"


def test_saved_user_preset_round_trips_and_cannot_shadow_a_builtin(tmp_path):
    spec = parse_spec(NetSpec, {"depth": 32, "shortcut": "B", "zero_init_residual": True})
    saved = save_preset("my-net", spec, tmp_path)
    assert not saved.builtin
    assert load_preset("my-net", tmp_path) == spec.model_copy(update={"name": "my-net"})
    with pytest.raises(SpecError, match="built-in"):
        save_preset("ResNet-20", spec, tmp_path)
    with pytest.raises(SpecError, match="letters, digits"):
        save_preset("../evil", spec, tmp_path)


def test_spec_round_trips_through_json():
    spec = load_preset("preact-resnet164")
    assert parse_spec(NetSpec, spec.model_dump(mode="json")) == spec
