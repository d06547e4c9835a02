"""Bad input through the named API of a real server (`python app.py` in its own process, no workers).

Every input of issue 13 is answered with the workbench's own message, next to the field, in under a
second; nothing is queued; a zip bomb and a giant network leave the server's memory as it was.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import psutil
import pytest
import torch
from conftest import free_port
from PIL import Image
from test_ui_api import BUILD_FIELDS, LAUNCH_DEFAULTS, TINY

from workbench.service import open_store

ROOT = Path(__file__).resolve().parents[1]
SECOND = 1.0
MEMORY_GROWTH = 100 * 2**20
DAY = 24 * 3600

pytestmark = pytest.mark.serial  # every answer must come within a second of a real server process


def _images(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(folder / f"{index}.png")


def write_bomb(path: Path, inflated: int = 256 * 2**20) -> Path:
    """A bundle of about 250 KB whose weights inflate to `inflated` bytes of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("spec.json", TINY.model_dump_json())
        with archive.open("weights.safetensors", "w", force_zip64=True) as member:
            for _ in range(inflated // 2**24):
                member.write(bytes(2**24))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A workbench served by `python app.py` in its own process; a week-old export is there before it starts."""
    home, data = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("data")
    (data / "README.txt").write_text("CIFAR-10 is a set of 60,000 images.\n")
    _images(data / "flat")
    _images(data / "pets" / "cat")
    _images(data / "pets" / "dog")
    write_bomb(data / "bomb.zip")
    exports = home / "exports"
    exports.mkdir()
    for name, age in (("old.zip", 10 * DAY), ("new.zip", 0)):
        (exports / name).write_bytes(b"export")
        os.utime(exports / name, (time.time() - age, time.time() - age))
    port = free_port()
    log = open(home / "server.log", "w")  # noqa: SIM115 - open for the life of the server
    process = subprocess.Popen(
        [sys.executable, "app.py", "--home", str(home), "--port", str(port), "--workers", "0",
         "--data-root", str(data), "--file-max-age", "72"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
             "GRADIO_TEMP_DIR": str(home.parent / f"{home.name}-gradio")},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    from gradio_client import Client

    client = Client(url, verbose=False)
    # Warm up the imports of a review and a launch (the run stays queued: there are no workers).
    client.predict(*BUILD_FIELDS.values(), api_name="/review_network")
    client.predict(TINY.model_dump_json(), *LAUNCH_DEFAULTS.values(), api_name="/launch_run")
    store = open_store(home)
    yield type("Server", (), {"url": url, "home": home, "data": data, "client": client, "store": store,
                              "process": process})
    store.close()
    process.terminate()
    process.wait(30)
    log.close()


def answered(call, *args, api_name: str):
    """The API's answer to one call, asserted to come within a second."""
    start = time.monotonic()
    result = call.predict(*args, api_name=api_name)
    elapsed = time.monotonic() - start
    assert elapsed < SECOND, f"{api_name} took {elapsed:.2f} s: {result}"
    return result


def launch(server, spec_json: str = TINY.model_dump_json(), **changes) -> str:
    before = len(server.store.list_runs())
    message = answered(server.client, spec_json, *{**LAUNCH_DEFAULTS, **changes}.values(), api_name="/launch_run")
    assert message.startswith("**Nothing launched:**"), message
    assert len(server.store.list_runs()) == before
    return message


def review(server, **changes):
    error, summary, *_, spec_json = answered(server.client, *{**BUILD_FIELDS, **changes}.values(),
                                             api_name="/review_network")
    assert error["visible"] and spec_json == "" and "Fix" in summary
    return error["value"]


class PeakMemory:
    """How far the server's resident memory rose above where it stood, at its peak, while the block ran.

    Linux keeps the peak (VmHWM) and resets it to the current size on request (clear_refs 5), so memory
    taken and given back inside the request still counts.
    """

    def __init__(self, server) -> None:
        self.pid = server.process.pid

    def _peak(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024

    def __enter__(self) -> "PeakMemory":
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = psutil.Process(self.pid).memory_info().rss
        return self

    def __exit__(self, *exc) -> None:
        self.growth = self._peak() - self.before


@pytest.mark.parametrize(("changes", "expected"), [
    ({"budget": 1e30}, "epochs must be above 0 and at most 10,000"),
    ({"budget_unit": "iterations", "budget": 1e19}, "iterations must be between 1 and 10,000,000"),
    ({"synthetic_train": 0}, "synthetic_train must be between 1 and 200,000"),
    ({"synthetic_test": -5}, "synthetic_test must be between 1 and 200,000"),
    ({"validation_size": 1000}, "validation_size 1,000 leaves no training images: the synthetic training set has 256"),
    ({"classes": "999"}, "asked for the first 999 classes but the synthetic dataset has only 10"),
    ({"seed": 2**70}, "seed must be between 0 and 9,223,372,036,854,775,807"),
    ({"batch_size": 10**6}, "batch_size must be between 1 and 65,536"),
    ({"dataset": "cifar10", "path": "README.txt"}, "README.txt is not a tar archive; give cifar-10-python.tar.gz"),
    ({"dataset": "folder", "path": "flat"}, "has no class sub-folders: found 3 file(s)"),
    ({"dataset": "folder", "path": "pets", "classes": "cat, wolf"}, "unknown class name(s) wolf"),
    ({"dataset": "folder", "path": "pe\0ts"}, "path contains a NUL byte"),
    ({"lr": "abc"}, "learning rate: 'abc' is not a number"),
])
def test_launch_values_that_could_only_fail_in_the_worker_are_refused(server, changes, expected):
    assert expected in launch(server, **changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(server):
    assert "device: cuda was asked for, but this machine has no CUDA GPU" in launch(server, device="cuda")


@pytest.mark.parametrize(("net", "expected"), [
    ({"blocks": [50000] * 3}, "at most 1,000 residual units in all stages"),
    ({"widths": [100000] * 3}, "widths must be between 1 and 4,096 channels per stage"),
    ({"widths": [4096] * 3, "blocks": [10] * 3}, "the limit is 500,000,000"),
    ({"widths": [64, 128, 256], "blocks": [2] * 3, "input_size": 1024}, "at batch size 65536"),
])
def test_giant_networks_are_refused_with_their_numbers(server, net, expected):
    spec = {**json.loads(TINY.model_dump_json()), **net}
    spec.pop("depth")
    with PeakMemory(server) as memory:
        assert expected in launch(server, json.dumps(spec), batch_size=65536)
    assert memory.growth < MEMORY_GROWTH


def test_a_bad_network_json_launches_nothing(server):
    assert "not valid JSON" in launch(server, "{not json")


@pytest.mark.parametrize(("changes", "expected"), [
    ({"depth": 30002}, "at most 1,000 residual units in all stages (ResNet-1202"),
    ({"depth": "abc"}, "depth: 'abc' is not a number"),
    ({"input_size": 1e9}, "input_size must be between 4 and 1,024"),
    ({"widths": "100000, 100000, 100000"}, "widths must be between 1 and 4,096"),
    ({"size_by": "blocks", "blocks": "50000, 50000, 50000"}, "these blocks give 150,000"),
    ({"num_classes": 10**7}, "num_classes must be between 1 and 100,000"),
])
def test_review_answers_giant_or_unreadable_networks_without_building_them(server, changes, expected):
    with PeakMemory(server) as memory:
        assert expected in review(server, **changes)
    assert memory.growth < MEMORY_GROWTH


def test_review_counts_a_deep_network_without_allocating_it(server):
    with PeakMemory(server) as memory:
        _, summary, *_ = server.client.predict(*{**BUILD_FIELDS, "depth": 1202}.values(),
                                               api_name="/review_network")
    assert "Parameters:** 19,421,274" in summary and "training needs about" in summary
    assert memory.growth < MEMORY_GROWTH


def test_save_preset_with_bad_json_says_so(server):
    message, _ = answered(server.client, "mine", "{'depth': 20", api_name="/save_preset")
    assert message.startswith("**Not saved:**") and "not valid JSON" in message


@pytest.mark.parametrize("api_name", ["/cancel_run", "/resume_run", "/delete_run"])
def test_a_run_id_beyond_64_bits_is_a_message(server, api_name):
    message, *_ = answered(server.client, 2**70, api_name=api_name)
    assert "run id must be a whole number from 1 to 9,223,372,036,854,775,807" in message


def test_run_details_and_fine_tune_sources_of_a_huge_run_id(server):
    details, *_ = answered(server.client, 2**70, api_name="/run_details")
    assert "run id must be a whole number" in details
    _, summary, _ = answered(server.client, 2**70, "best", api_name="/finetune_inspect_run")
    assert "**Not usable:**" in summary and "run id must be a whole number" in summary


def test_a_nul_byte_in_a_model_path_is_a_message(server):
    _, summary, _ = answered(server.client, "bomb\0.zip", api_name="/finetune_inspect_path")
    assert "**Not usable:**" in summary and "contains a NUL byte" in summary


def _imports(server) -> list[str]:
    folder = server.home / "imports"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def _gradio_copies(server, name: str) -> list[Path]:
    """Gradio's own copies of an uploaded file (it keeps uploads in GRADIO_TEMP_DIR)."""
    return list(server.home.parent.joinpath(f"{server.home.name}-gradio").rglob(name))


def test_a_zip_bomb_on_the_server_is_refused_unread(server):
    with PeakMemory(server) as memory:
        _, summary, _ = answered(server.client, "bomb.zip", api_name="/finetune_inspect_path")
    assert memory.growth < MEMORY_GROWTH
    assert "**Not usable:**" in summary and "would inflate" in summary and "refused unread" in summary


def test_an_uploaded_zip_bomb_is_refused_unread_and_deleted(server):
    from gradio_client import handle_file

    bomb = server.data / "bomb.zip"
    assert bomb.stat().st_size < 2**20 and zipfile.ZipFile(bomb).getinfo("weights.safetensors").file_size == 2**28
    with PeakMemory(server) as memory:
        _, summary, _ = answered(server.client, handle_file(str(bomb)), api_name="/finetune_upload")
    assert memory.growth < MEMORY_GROWTH
    assert "**Not usable:**" in summary and "weights.safetensors in the upload bomb.zip would inflate" in summary
    assert _imports(server) == [] and _gradio_copies(server, "bomb.zip") == []


def test_an_uploaded_bundle_of_pickled_weights_is_refused_and_deleted(server, tmp_path):
    from gradio_client import handle_file

    bundle = tmp_path / "pickled.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("spec.json", TINY.model_dump_json())
        archive.writestr("weights.safetensors", b"\x80\x04\x95" + b"\x00" * 64)
    _, summary, _ = answered(server.client, handle_file(str(bundle)), api_name="/finetune_upload")
    assert "**Not usable:**" in summary and "must be a safetensors file" in summary
    assert _imports(server) == [] and _gradio_copies(server, "pickled.zip") == []


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_exports_are_served(server):
    (server.home / "imports").mkdir(exist_ok=True)
    (server.home / "imports" / "upload.pt").write_bytes(b"private")
    for private in ("workbench.db", "workbench.db-wal", "imports/upload.pt", "presets.yaml"):
        assert _status(f"{server.url}gradio_api/file={server.home / private}") in (403, 404), private
    assert _status(f"{server.url}gradio_api/file={server.home / 'exports' / 'new.zip'}") == 200


def test_old_exports_are_cleaned_when_the_app_starts(server):
    assert sorted(path.name for path in (server.home / "exports").iterdir()) == ["new.zip"]
