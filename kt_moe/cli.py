"""The `kt-moe` command: validate a config file, print the config's JSON Schema, show what the CPU
offers, run the demo, convert a Hugging Face checkpoint's experts to pre-quantized files.

Each subcommand is one function taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, TextIO

from safetensors import SafetensorError

import kt_moe
from kt_moe import _native
from kt_moe.closed_pipe import quiet_on_closed_pipe
from kt_moe.config import (AMXINT4_DEFAULT_GROUP_SIZE, AMXINT4_GROUP_SIZES, DEFAULT_GROUP_SIZE, KGROUP_SIZES,
                           KTMoEConfig, config_errors)
from kt_moe.config_files import ConfigFileError, load_config_file
from kt_moe.status_line import StatusLine
from kt_moe.weights.convert import CONVERT_METHODS, LayerRanges, LayerResult, convert_checkpoint, parse_layers


def _weight_path_problem(weight_path: str) -> Optional[str]:
    """What is wrong with weight_path as the directory load_weights() reads, or None."""
    consequence = "load_weights() will fail (load_weights_from_tensors() does not read it)"
    if not weight_path:
        return f"weight_path is empty: {consequence}"
    if not os.path.exists(weight_path):
        return f"weight_path '{weight_path}' does not exist: {consequence}"
    if not os.path.isdir(weight_path):
        return f"weight_path '{weight_path}' is not a directory: {consequence}"
    return None


def _validate(args: argparse.Namespace) -> int:
    """Errors: the config's own (kt_moe.config). Warnings
    (errors with --strict): a weight_path that is not a directory here."""
    try:
        data = load_config_file(args.file)
    except ConfigFileError as exc:
        print(exc)
        return 1
    errors = config_errors(data)
    invalid = {field for field, _ in errors}
    path_problem = None if "weight_path" in invalid else _weight_path_problem(data["weight_path"])
    warnings = [("weight_path", path_problem)] if path_problem else []
    if args.strict:
        errors, warnings = errors + warnings, []
    for field, message in errors:
        print(f"{args.file}: {field}: {message}")
    for field, message in warnings:
        print(f"{args.file}: {field}: warning: {message}")
    if errors:
        return 1
    print(f"OK ({len(warnings)} warning{'s' * (len(warnings) != 1)})" if warnings else "OK")
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


# Subcommands with a parser of their own, which reads the rest of the command line: name -> (module,
# description). Importing the module (and torch) waits until the subcommand is asked for.
OWN_PARSER_COMMANDS = {
    "demo": ("kt_moe.demo", "Run the kt-moe demo."),
    "finetune": ("kt_moe.integrations.finetune_example",
                 "Fine-tune a small Qwen3-MoE with kt-moe experts (needs transformers and peft)."),
}


def _own_parser_command(args: argparse.Namespace) -> int:
    import importlib
    from kt_moe.benchmark.arguments import HelpFormatter

    module_name, description = OWN_PARSER_COMMANDS[args.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"kt-moe {args.command}", description=description,
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.own_args))


class _ProgressBar:
    """The converter's progress: one line redrawn in place, e.g.
    `[############............]  50%  32/64 experts  layer 3: quantizing (32/64)`;
    draws nothing when disabled (a stream that is not a terminal, or --quiet)."""

    WIDTH = 24

    def __init__(self, stream: TextIO, enabled: bool):
        self.line, self.enabled = StatusLine(stream), enabled

    def update(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * done // max(total, 1)
        self.line.show(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done // max(total, 1):3d}%  "
                       f"{done}/{total} experts  {message}")

    def finish(self) -> None:
        """End the line, so that what follows starts on a line of its own."""
        self.line.finish()


def _layers(text: str) -> LayerRanges:
    try:
        return parse_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _convert(args: argparse.Namespace) -> int:
    """Errors (bad input, a file written for other settings, I/O) are one line on stderr, exit 1."""
    bar = _ProgressBar(sys.stderr, enabled=not args.quiet and sys.stderr.isatty())
    try:
        results = convert_checkpoint(args.input, args.output, args.method, layers=args.layers, force=args.force,
                                     progress=bar.update, group_size=args.group_size, zero_point=args.zero_point)
    except (ValueError, OSError, SafetensorError) as exc:
        bar.finish()
        print(f"kt-moe: error: {'; '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.finish()
        print("kt-moe: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    bar.finish()
    if not args.quiet:
        actions = [r.action for r in results]
        counts = ", ".join(f"{actions.count(a)} {a}" for a in ("written", "rewritten", "replaced", "skipped")
                           if a in actions)
        print(f"{len(results)} layer(s) in {args.output} ({counts}){_throughput(results)}")
    return 0


def _throughput(results: List[LayerResult]) -> str:
    """'; quantized 1,131.4 MB of bf16 weights in 2.1 s (538.8 MB/s)' over the layers quantized
    (reading and writing included), or '' when every layer was skipped."""
    quantized = [r for r in results if r.weight_bytes]
    if not quantized:
        return ""
    megabytes, seconds = sum(r.weight_bytes for r in quantized) / 1e6, sum(r.seconds for r in quantized)
    rate = megabytes / max(seconds, 1e-9)
    return f"; quantized {megabytes:,.1f} MB of bf16 weights in {seconds:.1f} s ({rate:,.1f} MB/s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kt-moe", description="CPU Mixture-of-Experts operators.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {kt_moe.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser("validate", help="check a YAML, TOML or JSON config file")
    validate.add_argument("file", metavar="FILE", help="config file (.yaml, .yml, .toml or .json)")
    validate.add_argument("--strict", action="store_true",
                          help="treat warnings (a weight_path that is not a directory here) as errors")
    validate.set_defaults(handler=_validate)
    commands.add_parser("schema", help="print the config's JSON Schema").set_defaults(handler=_schema)
    commands.add_parser("info", help="show the CPU's ISA levels and the active one").set_defaults(handler=_info)
    commands.add_parser("demo", add_help=False, help="run the demo ('kt-moe demo --help' for its options)"
                        ).set_defaults(handler=_own_parser_command)
    commands.add_parser("finetune", add_help=False,
                        help="LoRA fine-tuning of a small Qwen3-MoE with kt-moe experts, adapter saved for PEFT "
                             "('kt-moe finetune --help' for its options)").set_defaults(handler=_own_parser_command)
    convert = commands.add_parser(
        "convert", help="quantize a Hugging Face checkpoint's routed experts into pre-quantized files",
        description="Quantize the routed experts of a Hugging Face checkpoint into one pre-quantized file per "
                    "layer (docs/quantization.md). Rerunning resumes: layers whose file verifies are skipped, "
                    "damaged files are rewritten; a file written for other settings is an error unless --force.")
    convert.add_argument("--method", required=True, choices=list(CONVERT_METHODS), help="quantization method")
    convert.add_argument("--input", required=True, metavar="HF_DIR", help="Hugging Face checkpoint directory")
    convert.add_argument("--output", required=True, metavar="DIR", help="directory for the layer files")
    convert.add_argument("--group-size", type=int, choices=sorted(set(KGROUP_SIZES + AMXINT4_GROUP_SIZES)),
                         help=f"inputs per INT4 scale: AMXINT4 {', '.join(map(str, AMXINT4_GROUP_SIZES))} (default "
                              f"{AMXINT4_DEFAULT_GROUP_SIZE}; 64 and 128 are faster and smaller, less accurate), "
                              f"AMXINT4_KGroup_SFT {', '.join(map(str, KGROUP_SIZES))} (default {DEFAULT_GROUP_SIZE})")
    convert.add_argument("--zero-point", action=argparse.BooleanOptionalAction,
                         help="AMXINT4 (group size 64 or 128) and AMXINT4_KGroup_SFT: a zero point per group, or "
                              "symmetric groups (--no-zero-point); default: with zero points")
    convert.add_argument("--layers", type=_layers, metavar="A-B",
                         help="layers to convert: A-B, A, or a comma-separated list (default: every MoE layer)")
    convert.add_argument("--force", action="store_true", help="overwrite layer files written for other settings")
    convert.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return quiet_on_closed_pipe(lambda: _run(argv))


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in OWN_PARSER_COMMANDS:
        args.own_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
