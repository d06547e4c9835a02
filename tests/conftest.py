"""Shared fixtures: a real workbench server on a free port, Debian's Chromium driven by Playwright, a
throw-away PostgreSQL server for the store tests and a loopback Ray head for the cluster tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
POSTGRES_BIN = Path(os.environ.get("WORKBENCH_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
DATABASES = ("sqlite", "postgresql")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServedWorkbench:
    """A workbench app served on 127.0.0.1: its URL and the app (store, executor, context)."""

    url: str
    app: object

    @property
    def store(self):
        return self.app.store


@pytest.fixture(scope="module")
def serve_workbench() -> Iterator[Callable[..., ServedWorkbench]]:
    """Start workbenches the way `python app.py` does (same flags); they stop after the test module."""
    from app import parse_args
    from workbench.ui.app import create_app, launch_options

    started = []
    environment = pytest.MonkeyPatch()
    # One thread per worker: on a shared, busy CPU, torch's thread pool otherwise slows steps several-fold.
    environment.setenv("OMP_NUM_THREADS", "1")

    def start(home: Path, *flags: str) -> ServedWorkbench:
        args = parse_args(["--home", str(home), "--port", str(free_port()), *flags])
        app = create_app(args)
        started.append(app)
        app.demo.launch(**launch_options(args, app.context.home), prevent_thread_lock=True, quiet=True)
        return ServedWorkbench(f"http://127.0.0.1:{args.port}/", app)

    yield start
    for app in started:
        app.demo.close()
        app.close()
    environment.undo()


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium under Playwright (skipped when /usr/bin/chromium is absent)."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh browser page that may only reach 127.0.0.1."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1")
               else route.abort())
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots and other files worth looking at (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for this test session; yields its base URL (no database name).

    Skipped with the reason when the server binaries are missing. fsync is off: the data is thrown away.
    """
    missing = [name for name in ("initdb", "pg_ctl") if not (POSTGRES_BIN / name).is_file()]
    if missing:
        pytest.skip(f"PostgreSQL tests need the server binaries in {POSTGRES_BIN} (missing: {', '.join(missing)}); "
                    "install them with `apt-get install -y postgresql` or set WORKBENCH_POSTGRES_BIN")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    if os.geteuid() == 0:
        os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
    data, log, port = root / "data", root / "server.log", free_port()
    subprocess.run(_as_postgres_user([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                      "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = subprocess.run(_as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(log),
                                                "-o", options, "-w", "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr or started.stdout}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                          "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    """Create an empty database on the test server; returns its URL."""
    import psycopg

    name = f"wb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url.replace("postgresql+psycopg", "postgresql") + "/postgres",
                         autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


@pytest.fixture(params=DATABASES)
def db_url(request) -> str | None:
    """Each store test runs twice: on the home's SQLite file (None) and on a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return None
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 (2 CPUs, no GPU) for this test session; yields its dashboard URL.

    Started with `ray start --head --block` in its own process group and a private temp folder, and stopped
    through that process (SIGTERM: it stops the head's processes), then anything left of its group or naming
    its temp folder is killed, so Ray clusters of other programs on this machine are left alone.
    """
    ray = Path(sys.executable).with_name("ray")
    if not ray.is_file():
        pytest.skip(f"Ray tests need the `ray` command beside {sys.executable} (pip install 'ray[default]')")
    temp = Path(tempfile.mkdtemp(prefix="wbray-"))
    port, dashboard_port = free_port(), free_port()
    log = (temp / "head.log").open("w")
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--port", str(port), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard_port), "--num-cpus", "2", "--num-gpus", "0", "--disable-usage-stats",
         "--include-dashboard", "true", "--temp-dir", str(temp)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_job_server(address, head, temp / "head.log")
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        _kill_leftovers(temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_job_server(address: str, head: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"the Ray head exited with code {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Ray head's job server at {address} did not answer within {timeout:.0f} s")


def _kill_leftovers(temp: Path) -> None:
    """Ray processes of this head that left its process group (they name its temp folder on their command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(temp) in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
