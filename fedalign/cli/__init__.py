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
MAX_MESSAGE = 400  # characters of one error line; echoed user input is cut


def one_line(prog: str, message: str) -> str:
    """`<prog>: error: <message>` on one line, at most MAX_MESSAGE characters."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return f"{prog}: error: {text}"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2 (argparse prints its whole usage block)."""

    def error(self, message: str):
        print(one_line(self.prog, message), file=sys.stderr)
        sys.exit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; `only` registers just that subcommand (keeps start-up free of the others' imports)."""
    from fedalign import __version__

    parser = OneLineParser(
        prog="fedalign",
        description="Training-time neuron alignment (TNA-PFN) for model fusion and federated learning.",
    )
    parser.add_argument("--version", action="version", version=f"fedalign {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    for name in [only] if only in SUBCOMMANDS else SUBCOMMANDS:
        importlib.import_module(f"fedalign.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(one_line(f"fedalign {args.command}", str(err)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedalign {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
