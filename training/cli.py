"""`glasses-train` (same as `python -m training`): one subcommand per pipeline stage.

Each stage module owns its subcommand(s) through `add_cli(subparsers)`, which registers a parser
whose `func(args) -> int` runs the stage. Errors a user can fix (wrong path, missing credentials,
corrupt files, failed trials, a refused quality gate) are raised as `UserError` and printed as one
line on stderr with exit code 2; no traceback wall. Arguments and files are checked before TensorFlow
is imported, and TensorFlow's own log lines stay hidden unless `--verbose` (anywhere on the line) or
GLASSES_VERBOSE=1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from glasses import quiet
from glasses.files import UserError  # noqa: F401  (the one base: stages raise it, RegistryError is one)
from glasses.version import package_version

# Stage modules, in pipeline order; each defines add_cli(subparsers).
STAGES = (
    "training.download",
    "training.prepare",
    "training.tune",
    "training.evaluate",
    "training.register",
    "training.convert",
    "training.framing",
    "training.registry_cli",
    "training.compare",
    "training.run",
    "training.experiments",
    "training.review",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every stage's subcommands."""
    parser = argparse.ArgumentParser(prog="glasses-train", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and Keras's own log lines (also GLASSES_VERBOSE=1); any position")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not written yet
                continue
            raise
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run the chosen stage, turn UserError into one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv.remove("--verbose")
        quiet.set_verbose(True)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"glasses-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glasses-train {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
