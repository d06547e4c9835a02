"""Assemble the workbench: open the store, start the executor, build the tabs, and say how to serve them."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from workbench.errors import WorkbenchError  # noqa: E402
from workbench.jobs import Executor  # noqa: E402
from workbench.jobs.dispatch import make_executor  # noqa: E402
from workbench.paths import (  # noqa: E402
    cache_dir,
    database_file,
    database_url,
    exports_dir,
    file_max_age_hours,
    home_dir,
    imports_dir,
    runs_dir,
)
from workbench.service import RunStore, open_store  # noqa: E402
from workbench.ui.address import remember_tab  # noqa: E402
from workbench.ui.analysis_tab import build_analysis_tab  # noqa: E402
from workbench.ui.build_tab import build_tab  # noqa: E402
from workbench.ui.compare_tab import compare_tab  # noqa: E402
from workbench.ui.context import WorkbenchContext  # noqa: E402
from workbench.ui.export_tab import export_tab  # noqa: E402
from workbench.ui.finetune_tab import finetune_tab  # noqa: E402
from workbench.ui.launch_tab import launch_tab  # noqa: E402
from workbench.ui.runs_tab import runs_tab  # noqa: E402
from workbench.weights.limits import MAX_MODEL_BYTES  # noqa: E402

logger = logging.getLogger(__name__)

CSS = """
.error-box { color: #b42318; border-left: 3px solid #b42318; padding-left: 8px; }
#runs-table .table-wrap * { font-family: var(--font) !important; font-size: var(--text-sm); }
"""


class ExposureRefused(WorkbenchError):
    """The server would be reachable from other machines without a password."""


@dataclass
class WorkbenchApp:
    """A built app and the services it runs on; `close` stops the workers and the store."""

    demo: gr.Blocks
    executor: Executor
    store: RunStore
    context: WorkbenchContext
    stop_cleaning: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.stop_cleaning.set()
        self.executor.shutdown()
        self.store.close()


def clean_files_periodically(context: WorkbenchContext, max_age_hours: float, stop: threading.Event) -> None:
    """Remove old uploads and exports now and then every hour (more often for short ages) until `stop`."""
    interval = min(3600.0, max_age_hours * 3600 / 4)

    def loop() -> None:
        while True:
            try:
                context.clean_old_files(max_age_hours)
            except (OSError, WorkbenchError) as exc:
                logger.warning("could not clean old uploads and exports: %s", exc)
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="workbench-file-cleaner", daemon=True).start()


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: str | None, no_auth: bool) -> None:
    """Refuse to serve on a non-loopback address without a password, unless the user insisted with --no-auth."""
    if is_loopback(host) or auth or no_auth:
        return
    raise ExposureRefused(
        f"refusing to listen on {host} without a password: anyone who can reach this machine could then start "
        "training jobs, read and delete your runs and download your models, and dataset paths under the data "
        "folders become readable. Add --auth USER:PASSWORD, or --no-auth if the network is trusted."
    )


def parse_credentials(text: str) -> tuple[str, str]:
    """"user:password" as (user, password)."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise WorkbenchError("--auth takes USER:PASSWORD, both non-empty")
    return user, password


def build_ui(ctx: WorkbenchContext, file_max_age_hours: float) -> gr.Blocks:
    """The workbench's tabs, wired to the store and executor of `ctx`; Gradio's own copies of uploads and
    downloads are deleted after `file_max_age_hours`, like the workbench's."""
    age = max(1, round(file_max_age_hours * 3600))
    with gr.Blocks(title="ResNet Workbench", delete_cache=(min(3600, age), age)) as demo:
        gr.Markdown("## ResNet Workbench\nBuild residual networks, train plain and residual twins in the "
                    "background, and compare their curves live.")
        with gr.Tabs() as tabs:
            built = build_tab(ctx, demo)
            launched = launch_tab(ctx, built.spec_json).launched
            finetune_tab(ctx, demo)
            runs_tab(ctx, demo)
            compare_tab(ctx, demo, launched)
            export_tab(ctx, demo)
            build_analysis_tab(ctx, demo)
        remember_tab(tabs, demo)
    return demo


def create_app(args: argparse.Namespace) -> WorkbenchApp:
    """Open (and migrate) the store, start the executor, and build the UI, as `python app.py` does."""
    home = home_dir(args.home)
    max_age = file_max_age_hours(args.file_max_age)
    datasets = home / "datasets"
    datasets.mkdir(exist_ok=True)
    data_roots = [datasets, *(Path(root).expanduser().resolve() for root in args.data_root or [])]
    store = open_store(home, args.db)
    try:
        executor = make_executor(args.executor, store, db_url=database_url(home, args.db), ray_address=args.ray_address,
                                 workers=args.workers, auto_resume=args.auto_resume, data_roots=data_roots)
        executor.start()
    except BaseException:
        store.close()
        raise
    context = WorkbenchContext(store, executor, data_roots)
    try:
        demo = build_ui(context, max_age)
    except BaseException:
        executor.shutdown()
        store.close()
        raise
    logger.info("workbench home %s, data folders %s", home, ", ".join(map(str, data_roots)))
    app = WorkbenchApp(demo=demo, executor=executor, store=store, context=context)
    clean_files_periodically(context, max_age, app.stop_cleaning)
    return app


def served_paths(home: Path) -> tuple[list[str], list[str]]:
    """(allowed, blocked) paths of Gradio's file route: only the exports are served; the database, imports,
    run folders, datasets and caches are blocked even if a future allowed path should cover them."""
    database = database_file(home)
    blocked = [database, database.with_name("workbench.db-wal"), database.with_name("workbench.db-shm"),
               imports_dir(home), runs_dir(home), cache_dir(home), home / "datasets", home / "presets.yaml"]
    return [str(exports_dir(home))], [str(path) for path in blocked]


def launch_options(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Keyword arguments for `demo.launch`: address, password, what is served and uploaded, styling."""
    allowed, blocked = served_paths(home)
    return {
        "server_name": args.host,
        "server_port": args.port,
        "auth": parse_credentials(args.auth) if args.auth else None,
        "allowed_paths": allowed,
        "blocked_paths": blocked,
        "max_file_size": MAX_MODEL_BYTES,
        "css": CSS,
        "theme": gr.themes.Soft(),
        "run_history": False,
    }
