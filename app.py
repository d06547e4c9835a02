"""Start the ResNet Workbench in the browser: `python app.py [--host H] [--port P] [--home DIR] ...`.

Opens (and migrates) the run store, starts the executor (local worker processes, or Ray jobs with
`--executor ray --ray-address URL`), builds the UI and serves it until interrupted; local workers then
checkpoint and stop, and their runs can be resumed later; Ray jobs go on and are reattached next time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from workbench.threads import server_threads, use_threads

# Before torch is imported: OpenMP reads its wait policy once, when it starts.
use_threads(server_threads())

from workbench.errors import WorkbenchError  # noqa: E402
from workbench.paths import file_max_age_hours  # noqa: E402
from workbench.ui.app import check_exposure, create_app, launch_options, parse_credentials  # noqa: E402

logger = logging.getLogger("workbench.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ResNet Workbench: build, train and compare residual networks")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--home", default=None, help="home folder (default $WORKBENCH_HOME or ./.workbench)")
    parser.add_argument("--db", default=None, help="database URL (default SQLite in the home folder)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default one per GPU, one on a CPU-only machine; 0 for none)")
    parser.add_argument("--data-root", action="append", default=[],
                        help="a folder datasets may be read from, besides <home>/datasets (repeatable)")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login")
    parser.add_argument("--no-auth", action="store_true",
                        help="allow a non-loopback --host without --auth (only on a trusted network)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where runs execute: local worker processes (default) or one Ray job per run")
    parser.add_argument("--ray-address", default=None, metavar="URL",
                        help="the Ray head's dashboard address (http://HOST:8265), for --executor ray")
    parser.add_argument("--file-max-age", type=float, default=None, metavar="HOURS",
                        help="delete uploads and exports older than this (default $WORKBENCH_FILE_MAX_AGE_HOURS or "
                             "168, a week); checked at start and every hour")
    parser.add_argument("--auto-resume", action="store_true",
                        help="queue interrupted runs again automatically (they continue from their checkpoints)")
    return parser.parse_args(argv)


def _stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_exposure(args.host, args.auth, args.no_auth)
        if args.auth:
            parse_credentials(args.auth)
        file_max_age_hours(args.file_max_age)
    except WorkbenchError as exc:
        logger.error("%s", exc)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    app = create_app(args)
    try:
        app.demo.launch(**launch_options(args, app.context.home))
    finally:
        logger.info("stopping the workers; their runs can be resumed later")
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
