"""`fedalign report DIR`: rebuild a sweep's tables and plots from its cell records.

    fedalign report outputs/demo
    fedalign report outputs/demo --target-accuracy 0.9 --last-rounds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="rebuild a sweep's summary tables and plots from its records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="output directory of a sweep (holds cells/*/record.json)")
    p.add_argument("--target-accuracy", type=float, help="for 'rounds to target' (default: the spec's)")
    p.add_argument(
        "--last-rounds", type=int, help="final accuracy = mean of the last k rounds (default: the spec's, 5)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedalign.errors import check
    from fedalign.sweep import write_report

    if args.target_accuracy is not None:
        check(0 < args.target_accuracy <= 1, f"--target-accuracy {args.target_accuracy} must be in (0, 1]")
    if args.last_rounds is not None:
        check(args.last_rounds >= 1, f"--last-rounds {args.last_rounds} must be >= 1")
    paths = write_report(Path(args.dir), target=args.target_accuracy, last=args.last_rounds)
    print(paths["summary.md"].read_text(), end="")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
