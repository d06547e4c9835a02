"""Assemble the workbench: open the store, start the executor, build the tabs, and say how to serve them."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from workbench.errors import WorkbenchError  # noqa: E402
from workbench.jobs import Executor  # noqa: E402
from workbench.jobs.dispatch import make_executor  # noqa: E402
from workbench.paths import database_url, home_dir  # noqa: E402
from workbench.service import RunStore, open_store  # noqa: E402
from workbench.ui.analysis_tab import build_analysis_tab  # noqa: E402
from workbench.ui.build_tab import build_tab  # noqa: E402
from workbench.ui.compare_tab import compare_tab  # noqa: E402
from workbench.ui.context import WorkbenchContext  # noqa: E402
from workbench.ui.export_tab import export_tab  # noqa: E402
from workbench.ui.finetune_tab import finetune_tab  # noqa: E402
from workbench.ui.launch_tab import launch_tab  # noqa: E402
from workbench.ui.runs_tab import runs_tab  # noqa: E402

logger = logging.getLogger(__name__)

CSS = """
.error-box { color: #b42318; border-left: 3px solid #b42318; padding-left: 8px; }
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

    def close(self) -> None:
        self.executor.shutdown()
        self.store.close()


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


def build_ui(ctx: WorkbenchContext) -> gr.Blocks:
    """The workbench's tabs, wired to the store and executor of `ctx`."""
    with gr.Blocks(title="ResNet Workbench") as demo:
        gr.Markdown("## ResNet Workbench\nBuild residual networks, train plain and residual twins in the "
                    "background, and compare their curves live.")
        with gr.Tabs():
            built = build_tab(ctx, demo)
            launched = launch_tab(ctx, built.spec_json).launched
            finetune_tab(ctx, demo)
            runs_tab(ctx, demo)
            compare_tab(ctx, demo, launched)
            export_tab(ctx, demo)
            build_analysis_tab(ctx, demo)
    return demo


def create_app(args: argparse.Namespace) -> WorkbenchApp:
    """Open (and migrate) the store, start the executor, and build the UI, as `python app.py` does."""
    home = home_dir(args.home)
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
        demo = build_ui(context)
    except BaseException:
        executor.shutdown()
        store.close()
        raise
    logger.info("workbench home %s, data folders %s", home, ", ".join(map(str, data_roots)))
    return WorkbenchApp(demo=demo, executor=executor, store=store, context=context)


def launch_options(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Keyword arguments for `demo.launch`: address, password, the home folder for downloads, styling."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "auth": parse_credentials(args.auth) if args.auth else None,
        "allowed_paths": [str(home)],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "run_history": False,
    }
