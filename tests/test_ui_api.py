"""The workbench's API through `gradio_client`, against a real server with no workers (runs stay queued)."""

import json

import pytest

from app import main, parse_args
from workbench.errors import WorkbenchError
from workbench.jobs.worker import execute_run
from workbench.presets import get_preset
from workbench.service.forms import FAMILY_FORM_FIELDS
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.app import ExposureRefused, check_exposure, is_loopback, parse_credentials

TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
LAUNCH_DEFAULTS = dict(
    dataset="synthetic", path="", download=False, classes="", per_class_cap=0, resolution=0, validation_size=0,
    synthetic_train=256, synthetic_test=64, budget_unit="epochs", budget=1, batch_size=32, lr=0.1,
    schedule="step", warmup=0, seed=0, precision="fp32", device="cpu", devices=1, log_every=4, eval_every=0,
    grad_norm_every=0,
    ladder_depths="8, 14", drop_prob=0.5, seeds=1, architectures=[],
)
BUILD_FIELDS = dict(
    kind="resnet", name="net", family="cifar", unit="basic", size_by="depth", depth=20, blocks="3, 3, 3",
    widths="16, 32, 64",
    bottleneck_stride="3x3", placement="post", shortcut="A", zero_init_residual=False, stochastic_depth=0,
    num_classes=10, input_size=32, in_channels=3,
    **{name: None for name in FAMILY_FORM_FIELDS},
)


@pytest.fixture(scope="module")
def served(serve_workbench, tmp_path_factory):
    home = tmp_path_factory.mktemp("api-home")
    (tmp_path_factory.mktemp("outside") / "pets").mkdir()
    return serve_workbench(home, "--workers", "0")


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served.url, verbose=False)


def launch(client, kind: str, spec_json: str, **changes) -> str:
    return client.predict(spec_json, *{**LAUNCH_DEFAULTS, **changes}.values(), api_name=f"/launch_{kind}")


def test_review_network_gives_the_summary_or_the_builders_message(client):
    error, summary, stages, _, _, spec_json = client.predict(*BUILD_FIELDS.values(), api_name="/review_network")
    assert "Parameters:** 269,722" in summary and json.loads(spec_json)["blocks"] == [3, 3, 3]
    assert [row[0] for row in stages["data"]] == ["layer1", "layer2", "layer3"]
    error, summary, *_, spec_json = client.predict(*{**BUILD_FIELDS, "depth": 21}.values(),
                                                   api_name="/review_network")
    assert error["visible"] and "21 is not one; the nearest are 20 and 26" in error["value"]
    assert "Fix" in summary and spec_json == ""


def test_invalid_network_launches_nothing(client, served):
    before = len(served.store.list_runs())
    assert "Nothing launched" in launch(client, "twin", "")
    assert len(served.store.list_runs()) == before


def test_twin_is_queued_as_one_group_with_identical_data_and_seed(client, served):
    message = launch(client, "twin", TINY.model_dump_json(), seed=5)
    assert message.startswith("Queued")
    plain, residual = sorted(served.store.list_runs()[:2], key=lambda run: run.id)
    assert (plain.name, residual.name) == ("plain-tiny", "tiny")
    assert plain.group_name == residual.group_name and plain.group_kind == "twin"
    assert plain.spec["data"] == residual.spec["data"] and plain.spec["train"] == residual.spec["train"]
    assert plain.spec["train"]["seed"] == plain.spec["data"]["seed"] == 5
    assert (plain.spec["net"]["shortcut"], residual.spec["net"]["shortcut"]) == ("none", "A")


def test_a_twin_over_three_seeds_is_one_twin_group_of_two_seed_groups(client, served):
    from workbench.service.plans import seed_group_key

    assert launch(client, "twin", TINY.model_dump_json(), seed=5, seeds=3).startswith("Queued")
    runs = sorted(served.store.list_runs()[:6], key=lambda run: run.id)
    assert {run.group_kind for run in runs} == {"twin"} and len({run.group_name for run in runs}) == 1
    assert [run.spec["train"]["seed"] for run in runs] == [5, 6, 7, 5, 6, 7]
    assert [run.name for run in runs[:3]] == ["plain-tiny seed 5", "plain-tiny seed 6", "plain-tiny seed 7"]
    assert len({seed_group_key(run.spec) for run in runs}) == 2
    message = launch(client, "run", TINY.model_dump_json(), seeds=2)
    single = served.store.list_runs()[:2]
    assert message.startswith("Queued") and {run.group_kind for run in single} == {"seeds"}
    assert single[0].group_name.startswith("seeds tiny on synthetic")


def test_a_launch_records_gradient_norms_every_n_iterations_when_asked(client, served):
    assert launch(client, "run", TINY.model_dump_json(), grad_norm_every=5).startswith("Queued")
    assert served.store.list_runs()[0].spec["train"]["grad_norm_every"] == 5
    assert "Nothing launched" in launch(client, "run", TINY.model_dump_json(), grad_norm_every=-1)


def test_ladder_is_queued_as_twins_at_each_depth(client, served):
    assert launch(client, "ladder", TINY.model_dump_json()).startswith("Queued")
    ladder = served.store.list_runs()[:4]
    assert {run.group_kind for run in ladder} == {"ladder"} and len({run.group_name for run in ladder}) == 1
    assert sorted(run.spec["net"]["depth"] for run in ladder) == [8, 8, 14, 14]
    assert "nearest" in launch(client, "ladder", TINY.model_dump_json(), ladder_depths="8, 9")


def test_placements_and_stochastic_depth_are_queued_as_variant_groups(client, served):
    before = len(served.store.list_runs())
    assert launch(client, "placements", TINY.model_dump_json()).startswith("Queued")
    placements = served.store.list_runs()[:5]
    assert sorted(run.spec["net"]["placement"] for run in placements) == sorted(
        ["post", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"])
    assert {run.group_kind for run in placements} == {"sweep"} and len({r.group_name for r in placements}) == 1
    assert placements[0].group_name.startswith("placements tiny on synthetic")
    message = launch(client, "stochastic_depth", TINY.model_dump_json(), drop_prob=0.2)
    assert message.startswith("Queued") and "tiny-sd0.2" in message
    pair = served.store.list_runs()[:2]
    assert sorted(run.spec["net"]["stochastic_depth"] for run in pair) == [0.0, 0.2]
    plain = NetSpec(name="plain-tiny", blocks=[1, 1, 1], widths=[4, 8, 16], shortcut="none")
    assert "Nothing launched" in launch(client, "placements", plain.model_dump_json())
    assert len(served.store.list_runs()) == before + 7


def test_family_networks_review_and_refuse_resnet_only_launches(client, served):
    fields = {**BUILD_FIELDS, "kind": "densenet", "net_family": "cifar", "family_size_by": "depth",
              "family_depth": 40, "growth_rate": 12, "bottleneck": True, "compression": 0.5, "drop_rate": 0}
    error, summary, stages, _, _, spec_json = client.predict(*fields.values(), api_name="/review_network")
    assert "DenseNet-BC" in summary and "Parameters:** 176,122" in summary
    assert [row[0] for row in stages["data"]] == ["denseblock1", "denseblock2", "denseblock3"]
    error, *_ = client.predict(*{**fields, "family_depth": 41}.values(), api_name="/review_network")
    assert "6n+4 layers; 41 is not one; the nearest are 40 and 46" in error["value"]
    before = len(served.store.list_runs())
    assert "twin is a ResNet setting" in launch(client, "twin", spec_json)
    assert "FractalNet" in launch(client, "drop_path", spec_json)
    assert len(served.store.list_runs()) == before


def test_architectures_and_drop_path_pairs_are_queued_as_groups(client, served):
    before = len(served.store.list_runs())
    message = launch(client, "architectures", "", architectures=["resnet20", "densenet-40", "wrn-16-4"], seed=3)
    assert message.startswith("Queued") and "densenet-40" in message
    group = served.store.list_runs()[:3]
    assert {run.group_kind for run in group} == {"architectures"} and len({r.group_name for r in group}) == 1
    assert sorted(run.spec["net"].get("kind", "resnet") for run in group) == ["densenet", "resnet", "wide_resnet"]
    assert len({json.dumps(run.spec["data"]) for run in group}) == 1
    assert len({json.dumps(run.spec["train"]) for run in group}) == 1 and group[0].spec["train"]["seed"] == 3
    assert "at least two networks" in launch(client, "architectures", "", architectures=["resnet20"])
    fractal = get_preset("fractalnet-20").spec.model_copy(update={"name": "fractal"})
    message = launch(client, "drop_path", fractal.model_dump_json())
    assert message.startswith("Queued") and "fractal-droppath" in message
    pair = served.store.list_runs()[:2]
    assert sorted(run.spec["net"]["drop_path"] for run in pair) == [False, True]
    assert len(served.store.list_runs()) == before + 5


def test_paths_outside_the_data_roots_are_refused_before_queueing(client, served, tmp_path_factory):
    before = len(served.store.list_runs())
    outside = next(tmp_path_factory.getbasetemp().glob("outside*")) / "pets"
    message = launch(client, "run", TINY.model_dump_json(), dataset="folder", path=str(outside))
    assert "Nothing launched" in message and "outside the allowed data roots" in message
    assert len(served.store.list_runs()) == before


def test_launch_over_two_devices_stores_them_in_the_spec_or_says_what_to_change(client, served):
    message = launch(client, "run", TINY.model_dump_json(), devices=2)
    assert message.startswith("Queued"), message
    assert served.store.list_runs()[0].spec["train"]["devices"] == 2
    before = len(served.store.list_runs())
    message = launch(client, "run", TINY.model_dump_json(), devices=3)
    assert "Nothing launched" in message and "batch_size 32 does not split over 3 devices" in message
    assert len(served.store.list_runs()) == before


def test_run_actions_cancel_resume_rename_notes_delete(client, served):
    launch(client, "run", TINY.model_dump_json())
    run_id = served.store.list_runs()[0].id
    message, table, _ = client.predict(run_id, api_name="/cancel_run")
    assert message == f"Run #{run_id} is cancelled."
    assert [row[4] for row in table["data"] if row[0] == run_id] == ["cancelled"]
    assert "queued again" in client.predict(run_id, api_name="/resume_run")[0]
    assert served.store.get_run(run_id).status == "queued"
    assert "renamed" in client.predict(run_id, "tiny again", api_name="/rename_run")[0]
    client.predict(run_id, "lr too high?", api_name="/save_notes")
    details, _, spec_json, name, notes, *_ = client.predict(run_id, api_name="/run_details")
    assert "Status:** queued" in details and (name, notes) == ("tiny again", "lr too high?")
    assert json.loads(spec_json)["net"]["blocks"] == [1, 1, 1]
    assert client.predict(run_id, api_name="/job_log") == f"Run #{run_id} has no cluster job; it runs (or ran) on " \
                                                          "a local worker."
    assert "deleted" in client.predict(run_id, api_name="/delete_run")[0]
    assert "Not done" in client.predict(run_id, api_name="/cancel_run")[0]
    assert all(run.id != run_id for run in served.store.list_runs())


def test_save_preset_then_it_is_listed(client, served):
    spec_json = TINY.model_copy(update={"name": "saved-tiny"}).model_dump_json()
    message, _ = client.predict("saved-tiny", spec_json, api_name="/save_preset")
    assert "Saved as preset" in message
    assert get_preset("saved-tiny", served.app.context.home).spec.blocks == [1, 1, 1]
    assert "built-in" in client.predict("resnet20", spec_json, api_name="/save_preset")[0]


def test_export_downloads_a_bundle_that_loads(client, served):
    import workbench

    store = served.store
    spec = RunSpec(net=TINY, data=DataSpec(synthetic_train=64, synthetic_test=32),
                   train=TrainSpec(epochs=1, batch_size=32, precision="fp32", device="cpu"))
    run_id = store.create_run(spec, name="exported", dataset="synthetic")
    store.claim_run(run_id, "test-worker")
    assert execute_run(store, run_id, "test-worker") == "completed"
    assert "no best checkpoint" not in client.predict(run_id, "best", "bundle", api_name="/export")[0]
    message, button = client.predict(run_id, "last", "bundle", api_name="/export")
    assert message.startswith("Ready") and button["visible"]
    assert button["value"].endswith(f"run{run_id}-exported-last.zip")
    model = workbench.load_model(button["value"])
    assert model.spec.blocks == [1, 1, 1]
    queued = store.create_run(spec, name="queued")
    assert "no last checkpoint" in client.predict(queued, "last", "onnx", api_name="/export")[0]


def test_loopback_hosts_need_no_password():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "u:p", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ExposureRefused, match="anyone who can reach this machine"):
        check_exposure("0.0.0.0", None, False)


def test_credentials_need_user_and_password():
    assert parse_credentials("ada:love:lace") == ("ada", "love:lace")
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(WorkbenchError, match="USER:PASSWORD"):
            parse_credentials(bad)


def test_app_refuses_an_exposed_host_without_auth_before_opening_anything(tmp_path, caplog):
    assert main(["--host", "0.0.0.0", "--home", str(tmp_path / "home")]) == 2
    assert "--auth USER:PASSWORD" in caplog.text
    assert not (tmp_path / "home").exists()


def test_app_flags():
    args = parse_args(["--data-root", "/a", "--data-root", "/b", "--workers", "0", "--auto-resume"])
    assert args.data_root == ["/a", "/b"] and args.workers == 0 and args.auto_resume
    assert (args.host, args.port, args.auth, args.no_auth) == ("127.0.0.1", 7860, None, False)
    assert (args.executor, args.ray_address) == ("local", None)
    args = parse_args(["--executor", "ray", "--ray-address", "http://head:8265"])
    assert (args.executor, args.ray_address) == ("ray", "http://head:8265")
