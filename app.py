"""Start the ResNet Workbench: `python app.py [--host H] [--port P] [--home DIR]`."""

from __future__ import annotations

import argparse
import logging

from workbench.paths import home_dir
from workbench.ui.app import build_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ResNet Workbench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--home", default=None, help="home folder (default $WORKBENCH_HOME or ./.workbench)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = home_dir(args.home)
    build_app().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(home)])


if __name__ == "__main__":
    main()
