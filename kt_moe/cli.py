"""The `kt-moe` command: validate a config file, print the config's JSON Schema, show what the CPU
offers, run the demo.

Each subcommand is one function taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from kt_moe import _native
from kt_moe.config import KTMoEConfig, config_errors
from kt_moe.config_files import ConfigFileError, load_config_file


def _validate(args: argparse.Namespace) -> int:
    try:
        data = load_config_file(args.file)
    except ConfigFileError as exc:
        print(exc)
        return 1
    errors = config_errors(data)
    for field, message in errors:
        print(f"{args.file}: {field}: {message}")
    if errors:
        return 1
    print("OK")
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(KTMoEConfig.model_json_schema(), indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    try:
        info = _native.cpu_info()
    except ValueError as exc:  # a bad KT_MOE_ISA
        print(f"kt-moe: error: {exc}", file=sys.stderr)
        return 1
    features = info["features"]
    print(f"vendor:   {info['vendor']}")
    print(f"levels:   {', '.join(info['levels'])}")
    print(f"best:     {info['best']}")
    print(f"active:   {info['active']}")
    print(f"features: {' '.join(name for name, present in features.items() if present) or '-'}")
    print(f"missing:  {' '.join(name for name, present in features.items() if not present) or '-'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The demo's own parser reads the rest of the command line (args.demo_args); importing the
    demo (and torch) waits until it is asked for."""
    from kt_moe import demo

    parser = argparse.ArgumentParser(prog="kt-moe demo", description="Run the kt-moe demo.")
    demo.add_arguments(parser)
    return demo.run(parser.parse_args(args.demo_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kt-moe", description="CPU Mixture-of-Experts operators.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser("validate", help="check a YAML, TOML or JSON config file")
    validate.add_argument("file", metavar="FILE", help="config file (.yaml, .yml, .toml or .json)")
    validate.set_defaults(handler=_validate)
    commands.add_parser("schema", help="print the config's JSON Schema").set_defaults(handler=_schema)
    commands.add_parser("info", help="show the CPU's ISA levels and the active one").set_defaults(handler=_info)
    demo = commands.add_parser("demo", add_help=False, help="run the demo ('kt-moe demo --help' for its options)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
