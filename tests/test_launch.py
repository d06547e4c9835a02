"""Launch planning: form parsing, twins with identical data and seed, depth ladders, data-path checks."""

from pathlib import Path

import pytest
from PIL import Image

from workbench.data import check_source as check_data_source
from workbench.errors import DataError, SpecError, WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.presets import get_preset, list_presets
from workbench.service import Workbench, open_store
from workbench.service.forms import (
    data_spec_from_fields,
    net_spec_from_fields,
    parse_classes,
    parse_int_list,
    train_spec_from_fields,
)
from workbench.service.plans import (
    at_depth,
    edited_name,
    placement_variants,
    plain_counterpart,
    plan_ladder,
    plan_placements,
    plan_single,
    plan_stochastic_depth,
    plan_twin,
    residual_counterpart,
    unique_group_name,
)
from workbench.spec import DataSpec, NetSpec, TrainSpec

PRESETS = list_presets()
TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])


def form(**changes) -> dict:
    fields = dict(
        name="net", family="cifar", unit="basic", size_by="depth", depth=20, blocks="3, 3, 3", widths="16, 32, 64",
        bottleneck_stride="3x3", placement="post", shortcut="A", zero_init_residual=False, stochastic_depth=0,
        num_classes=10, input_size=32, in_channels=3,
    )
    return {**fields, **changes}


@pytest.mark.parametrize("text", ["3, 3, 3", "3 3 3", "[3,3,3]", " 3,3 ,3 "])
def test_parse_int_list_accepts_common_spellings(text):
    assert parse_int_list(text, "blocks") == [3, 3, 3]


@pytest.mark.parametrize("text", ["", "3, x", "3.5"])
def test_parse_int_list_names_the_field_when_it_fails(text):
    with pytest.raises(SpecError, match="^blocks"):
        parse_int_list(text, "blocks")


def test_parse_classes():
    assert parse_classes("") is None and parse_classes(None) is None
    assert parse_classes("5") == 5
    assert parse_classes("cat, dog ,") == ["cat", "dog"]


def test_net_spec_from_depth_or_blocks():
    by_depth = net_spec_from_fields(**form())
    assert by_depth.blocks == [3, 3, 3] and by_depth.depth == 20
    by_blocks = net_spec_from_fields(**form(size_by="blocks", blocks="1, 2, 3", depth=999))
    assert by_blocks.blocks == [1, 2, 3] and by_blocks.depth == 14


def test_net_spec_from_fields_reports_the_builders_message():
    with pytest.raises(SpecError, match="21 is not one; the nearest are 20 and 26"):
        net_spec_from_fields(**form(depth=21))
    with pytest.raises(SpecError, match="widths"):
        net_spec_from_fields(**form(widths="sixteen"))
    with pytest.raises(SpecError, match="whole number"):
        net_spec_from_fields(**form(depth=20.5))


def test_data_spec_keeps_only_fields_that_apply():
    synthetic = data_spec_from_fields(name="synthetic", path="/ignored", synthetic_train=256, synthetic_test=64,
                                      per_class_cap=0, seed=3)
    assert synthetic.path is None and synthetic.synthetic_train == 256 and synthetic.per_class_cap is None
    assert synthetic.seed == 3
    folder = data_spec_from_fields(name="folder", path=" pets ", resolution=64, classes="cat, dog", per_class_cap=10)
    assert (folder.path, folder.resolution, folder.classes, folder.per_class_cap) == ("pets", 64, ["cat", "dog"], 10)
    cifar = data_spec_from_fields(name="cifar10", download=True, resolution=64)
    assert cifar.download and cifar.resolution is None


def test_train_spec_budget_in_epochs_or_iterations():
    epochs = train_spec_from_fields(budget_unit="epochs", budget=2.5, batch_size=32, lr=0.1, schedule="step",
                                    log_every=0, eval_every=0)
    assert epochs.epochs == 2.5 and epochs.iterations is None and epochs.log_every == 20 and epochs.eval_every is None
    iterations = train_spec_from_fields(budget_unit="iterations", budget=64000, batch_size=128, lr=0.1,
                                        schedule="cosine", warmup_iterations=400, precision="fp32", device="cpu")
    assert iterations.iterations == 64000 and iterations.epochs is None and iterations.warmup_iterations == 400
    with pytest.raises(SpecError, match="lr"):
        train_spec_from_fields(budget_unit="epochs", budget=1, batch_size=32, lr=50, schedule="step")


def test_counterparts_match_presets_by_network_not_name():
    resnet56 = get_preset("resnet56").spec
    assert plain_counterpart(resnet56, PRESETS).name == "plain56"
    assert residual_counterpart(get_preset("plain20").spec, PRESETS) == get_preset("resnet20").spec
    assert residual_counterpart(get_preset("plain34").spec, PRESETS).name == "resnet34"
    assert residual_counterpart(get_preset("plain34").spec, PRESETS).shortcut == "B"
    plain_sd = plain_counterpart(get_preset("resnet110-sd").spec, PRESETS)
    assert plain_sd.stochastic_depth == 0 and plain_sd.shortcut == "none" and plain_sd.name == "plain110"


def test_counterparts_of_custom_networks():
    plain = plain_counterpart(TINY)
    assert plain.name == "plain-tiny" and plain.blocks == [1, 1, 1] and plain.widths == [4, 8, 16]
    assert residual_counterpart(plain) == TINY
    assert residual_counterpart(NetSpec(name="deep", depth=20, shortcut="none")).name == "res-deep"
    shrinking = NetSpec(name="plain-odd", blocks=[1, 1], widths=[32, 16], shortcut="none")
    assert residual_counterpart(shrinking).shortcut == "B"


def test_twin_has_identical_data_order_and_seed():
    data, train = DataSpec(synthetic_train=256, seed=7), TrainSpec(epochs=2, seed=7)
    plain, residual = plan_twin(get_preset("resnet20").spec, data, train, PRESETS, group="g")
    assert (plain.name, residual.name) == ("plain20", "resnet20")
    assert (plain.preset, residual.preset) == ("plain20", "resnet20")
    assert plain.spec.net.shortcut == "none" and residual.spec.net.shortcut == "A"
    assert plain.spec.data == residual.spec.data == data and plain.spec.train == residual.spec.train == train
    assert {plain.group_kind, residual.group_kind} == {"twin"} and {plain.group_name, residual.group_name} == {"g"}


def test_single_run_has_no_group():
    (run,) = plan_single(TINY, DataSpec(), TrainSpec(), PRESETS)
    assert run.group_name is None and run.preset is None and run.name == "tiny"


def test_ladder_is_a_twin_per_depth_in_one_group():
    plan = plan_ladder(get_preset("resnet20").spec, [56, 20, 32, 44], DataSpec(), TrainSpec(), PRESETS, group="L")
    assert [run.name for run in plan] == [
        "plain20", "resnet20", "plain32", "resnet32", "plain44", "resnet44", "plain56", "resnet56"]
    assert {run.group_kind for run in plan} == {"ladder"} and {run.group_name for run in plan} == {"L"}
    assert [run.spec.net.depth for run in plan] == [20, 20, 32, 32, 44, 44, 56, 56]


def test_ladder_rejects_impossible_depths_with_the_builders_message():
    with pytest.raises(SpecError, match="ladder depth 21: .*nearest are 20 and 26"):
        plan_ladder(TINY, [8, 21], DataSpec(), TrainSpec(), group="L")
    with pytest.raises(SpecError, match="at least two"):
        plan_ladder(TINY, [8, 8], DataSpec(), TrainSpec(), group="L")


def test_placements_are_the_five_he2016_units_named_after_their_presets():
    data, train = DataSpec(seed=3), TrainSpec(iterations=10, seed=3)
    plan = plan_placements(get_preset("resnet110-full-preact").spec, data, train, PRESETS, group="P")
    assert [run.name for run in plan] == [
        "resnet110-original", "resnet110-bn-after-add", "resnet110-relu-before-add", "resnet110-relu-only-preact",
        "resnet110-full-preact"]
    assert [run.preset for run in plan] == [run.name for run in plan]
    assert [run.spec.net.placement for run in plan] == [
        "post", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"]
    assert {run.spec.net.shortcut for run in plan} == {"B"} and {run.spec.net.depth for run in plan} == {110}
    assert all(run.spec.data == data and run.spec.train == train for run in plan)
    assert {(run.group_name, run.group_kind) for run in plan} == {("P", "sweep")}
    assert [net.name for net in placement_variants(TINY)][1:3] == ["tiny-bn-after-add", "tiny-relu-before-add"]
    with pytest.raises(SpecError, match="a plain net has none; pick shortcut A, B or C"):
        placement_variants(get_preset("plain20").spec)


def test_stochastic_depth_pair_differs_only_in_the_drop_probability():
    without, with_sd = plan_stochastic_depth(get_preset("resnet110").spec, "0.5", DataSpec(), TrainSpec(), PRESETS,
                                             group="S")
    assert (without.name, with_sd.name) == ("resnet110", "resnet110-sd0.5")
    assert (without.preset, with_sd.preset) == ("resnet110", "resnet110-sd")
    assert (without.spec.net.stochastic_depth, with_sd.spec.net.stochastic_depth) == (0.0, 0.5)
    assert without.spec.net.model_dump(exclude={"name", "stochastic_depth"}) == \
        with_sd.spec.net.model_dump(exclude={"name", "stochastic_depth"})
    with pytest.raises(SpecError, match="drop probability is a number"):
        plan_stochastic_depth(TINY, "half", DataSpec(), TrainSpec(), group="S")
    with pytest.raises(WorkbenchError, match=r"in \(0, 1\); got 1.5"):
        plan_stochastic_depth(TINY, 1.5, DataSpec(), TrainSpec(), group="S")
    with pytest.raises(WorkbenchError, match="plain net"):
        plan_stochastic_depth(get_preset("plain20").spec, 0.5, DataSpec(), TrainSpec(), group="S")


def test_at_depth_renames_and_rebuilds():
    deeper = at_depth(TINY, 14)
    assert deeper.name == "tiny14" and deeper.blocks == [2, 2, 2] and deeper.widths == [4, 8, 16]


def test_an_edited_preset_is_named_after_the_preset_it_matches_or_says_it_is_custom():
    resnet20, densenet = get_preset("resnet20"), get_preset("densenet-bc-100")
    assert edited_name(at_depth(resnet20.spec, 32), resnet20, PRESETS) == "resnet32"
    assert edited_name(at_depth(resnet20.spec, 38), resnet20, PRESETS) == "resnet38-custom"
    wider = resnet20.spec.model_copy(update={"widths": [16, 32, 48]})
    assert edited_name(wider, resnet20, PRESETS) == "resnet20-custom"
    assert edited_name(densenet.spec.model_copy(update={"growth_rate": 16}), densenet, PRESETS) == \
        "densenet-bc-100-custom"


def test_unique_group_name():
    assert unique_group_name("twin a", []) == "twin a"
    assert unique_group_name("twin a", ["twin a", "twin a (2)"]) == "twin a (3)"


def test_the_service_queues_every_planned_run_in_order(tmp_path):
    with open_store(tmp_path) as store:
        service = Workbench(store, QueueExecutor(store))
        ids = service.submit(plan_twin(TINY, DataSpec(), TrainSpec(), group="g"))
        runs = [store.get_run(run_id) for run_id in ids]
    assert ids == sorted(ids) and [run.name for run in runs] == ["plain-tiny", "tiny"]
    assert all(run.group_name == "g" and run.group_kind == "twin" and run.status == "queued" for run in runs)


def test_data_paths_outside_the_data_roots_are_refused(tmp_path):
    home, root, outside = tmp_path / "home", tmp_path / "data", tmp_path / "elsewhere"
    for folder in (home / "datasets", root / "pets" / "cat", outside / "pets"):
        folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "pets" / "cat" / "a.png")
    roots = [home / "datasets", root]
    with pytest.raises(DataError, match="outside the allowed data roots"):
        check_data_source(DataSpec(name="folder", path=str(outside / "pets")), home, roots)
    check_data_source(DataSpec(name="folder", path=str(root / "pets")), home, roots)
    check_data_source(DataSpec(name="folder", path="pets"), home, roots)
    with pytest.raises(DataError, match="does not exist"):
        check_data_source(DataSpec(name="folder", path=str(root / "missing")), home, roots)
    with pytest.raises(DataError, match="outside the allowed data roots"):
        check_data_source(DataSpec(name="cifar10", path=str(outside)), home, roots)


def test_data_source_checks_skip_synthetic_and_downloads(tmp_path):
    check_data_source(DataSpec(), tmp_path, [])
    check_data_source(DataSpec(name="cifar10", download=True), tmp_path, [tmp_path / "datasets"])
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        check_data_source(DataSpec(name="cifar10"), tmp_path, [tmp_path / "datasets"])


def test_check_data_source_finds_shared_cifar_when_its_folder_is_a_root():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (shared / "cifar-10-python.tar.gz").exists():
        pytest.skip("../shared/data/cifar-10-python.tar.gz is absent")
    check_data_source(DataSpec(name="cifar10"), shared.parent, [shared])
