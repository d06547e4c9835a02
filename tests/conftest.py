"""Shared fixtures: a real workbench server on a free port, Debian's Chromium driven by Playwright, a
throw-away PostgreSQL server for the store tests and a loopback Ray head for the cluster tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import clusters
import pytest
from clusters import free_port, new_postgres_database

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DATABASES = ("sqlite", "postgresql")

# Tests compare numbers across runs (exact resume, one process against two); a thread count that follows
# the machine's load would make them depend on it. tests/test_threads.py turns the governor on where it is tested.
os.environ.setdefault("WORKBENCH_ADAPT_THREADS", "0")


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for this test session; yields its base URL. Skipped, saying what to install, when
    the server binaries are missing."""
    try:
        with clusters.postgres_server() as url:
            yield url
    except clusters.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=DATABASES)
def db_url(request) -> str | None:
    """Each store test runs twice: on the home's SQLite file (None) and on a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return None
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 (2 CPUs, no GPU) for this test session; yields its dashboard URL.
    Skipped, saying what to install, when the `ray` command is missing."""
    try:
        with clusters.ray_head() as address:
            yield address
    except clusters.Unavailable as exc:
        pytest.skip(str(exc))
