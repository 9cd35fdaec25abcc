"""`fedalign` command line: one module per subcommand under `fedalign.cli`.

Each subcommand module defines `register(subparsers)` (adds its parser and
sets `func`). `main` turns a `UsageError` into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fedalign.errors import UsageError

SUBCOMMANDS = ("partition", "lmc", "sweep", "report")


def build_parser() -> argparse.ArgumentParser:
    from fedalign import __version__

    parser = argparse.ArgumentParser(
        prog="fedalign",
        description="Training-time neuron alignment (TNA-PFN) for model fusion and federated learning.",
    )
    parser.add_argument("--version", action="version", version=f"fedalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"fedalign.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"fedalign {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedalign {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
