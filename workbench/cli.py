"""`python -m workbench ...`: headless use of the workbench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from workbench import build_model, summarize
from workbench.errors import WorkbenchError
from workbench.presets import list_presets
from workbench.spec import NetSpec, parse_spec


def _spec_from_arg(value: str) -> NetSpec:
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise WorkbenchError(f"spec file {path} does not exist")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise WorkbenchError(f"spec file {path} must hold a mapping of NetSpec fields")
        return parse_spec(NetSpec, data.get("spec", data))
    return build_model(value).spec


def _format_int(value: int) -> str:
    return f"{value:,}"


def cmd_presets(args: argparse.Namespace) -> int:
    presets = list_presets(args.home)
    if args.json:
        print(json.dumps([{"name": p.name, "source": p.source, "reference_error": p.reference_error,
                           "spec": p.spec.model_dump()} for p in presets], indent=2))
        return 0
    width = max(len(p.name) for p in presets)
    for preset in presets:
        spec = preset.spec
        ref = f"{preset.reference_error:.2f}%" if preset.reference_error is not None else "-"
        print(f"{preset.name:<{width}}  {spec.family:<8} {spec.unit:<10} depth {spec.depth:<5} "
              f"shortcut {spec.shortcut:<4} {spec.placement:<16} paper error {ref}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    spec = _spec_from_arg(args.net)
    summary = summarize(spec, input_size=args.input_size, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['name']}: {spec.family} {spec.unit}, placement {spec.placement}, shortcut {spec.shortcut}")
    print(f"  parameters       {_format_int(summary['params'])} ({_format_int(summary['trainable_params'])} trainable)")
    print(f"  multiply-adds    {_format_int(summary['macs'])} per {summary['input_size']}x{summary['input_size']} image")
    print(f"  weighted depth   {summary['depth']} ({summary['units']} units)")
    print(f"  activations      {summary['activation_bytes'] / 2**20:.1f} MiB at batch {summary['activation_batch_size']}")
    for stage in summary["stages"]:
        shape = "x".join(str(d) for d in stage["output_shape"])
        print(f"  {stage['stage']:<8} {stage['units']:>4} units  out {shape:<12} {_format_int(stage['params'])} params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="home folder (default $WORKBENCH_HOME or ./.workbench)")
    parser.add_argument("--db", default=None, help="database URL (default SQLite in the home folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    presets = commands.add_parser("presets", help="list the network presets")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(handler=cmd_presets)

    summary = commands.add_parser("summary", help="parameters, multiply-adds and depth of a network")
    summary.add_argument("net", help="a preset name or a YAML/JSON spec file")
    summary.add_argument("--input-size", type=int, default=None)
    summary.add_argument("--batch-size", type=int, default=128, help="batch size for the activation memory estimate")
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(handler=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
