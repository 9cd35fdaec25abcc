"""`fedalign lmc`: linear mode connectivity study (vanilla vs TNA-PFN vs pruning, ± weight matching).

    fedalign lmc --spec experiments/lmc_digits.yaml --out outputs/lmc_digits
    fedalign lmc --dataset digits --model mlp --rho 0.4 0.7 --seeds 0 1 2 --match

Flags override the spec's keys; a re-run with the same --out skips finished cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# flag dest -> spec key (flags left at None are not overrides)
_FLAGS = {
    "name": "name", "dataset": "dataset", "data_dir": "data-dir", "download": "download",
    "train_size": "train-size", "test_size": "test-size", "model": "model",
    "model_args": "model-args", "seeds": "seeds", "num_models": "num-models", "split": "split",
    "alpha": "alpha", "methods": "methods", "rho": "rho", "prune_rho": "prune-rho",
    "granularity": "granularity", "match": "match", "epochs": "epochs", "lr": "lr",
    "batch_size": "batch-size", "points": "points", "bn_reestimate": "bn-reestimate",
    "bn_batches": "bn-batches", "threads": "threads", "device": "device",
}  # fmt: skip


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lmc",
        help="linear mode connectivity study: barriers, fusion, weight matching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--spec", help="YAML study spec (keys: see docs/lmc.md)")
    p.add_argument("--out", help="output directory (default outputs/lmc/<name>)")
    p.add_argument("--name")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_const", const=True)
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--model")
    p.add_argument("--model-args", help="e.g. width=2,depth=3")
    p.add_argument("--seeds", type=int, nargs="*")
    p.add_argument("--num-models", type=int, help="K models per method (fusion of K; barrier of the first pair)")
    p.add_argument("--split", help="order (different data orders) or dirichlet (different partitions)")
    p.add_argument("--alpha", type=float, help="Dirichlet alpha for --split dirichlet")
    p.add_argument("--methods", nargs="*", help="vanilla pfn prune")
    p.add_argument("--rho", type=float, nargs="*", help="TNA-PFN fixed fractions, e.g. 0.4 0.7")
    p.add_argument("--prune-rho", type=float, nargs="*", help="random pruning fractions (adds 'prune')")
    p.add_argument("--granularity")
    p.add_argument("--match", action=argparse.BooleanOptionalAction, default=None,
                   help="also report every method after weight matching")  # fmt: skip
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--points", type=int, help="interpolation points (>= 3, odd; default 11)")
    p.add_argument("--bn-reestimate", choices=("auto", "on", "off"))
    p.add_argument("--bn-batches", type=int)
    p.add_argument("--threads", type=int, help="torch threads (0 = default)")
    p.add_argument("--device", help="auto (GPU if visible, else CPU), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for dest, key in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    if "bn-reestimate" in out:
        out["bn-reestimate"] = {"auto": "auto", "on": True, "off": False}[out["bn-reestimate"]]
    if args.prune_rho is not None and args.methods is None:
        out["methods"] = None  # filled below from the spec's methods plus 'prune'
    return out


def run(args: argparse.Namespace) -> int:
    from fedalign.safe_yaml import load_yaml_mapping

    raw = load_yaml_mapping(args.spec) if args.spec else None  # before torch is imported

    from fedalign.lmc_study import resolve, run_study
    from fedalign.lmc_study.config import normalize_keys

    spec = normalize_keys(raw, f"spec file {args.spec}") if args.spec else {}
    overrides = overrides_from(args)
    if "methods" in overrides and overrides["methods"] is None:
        methods = list(resolve(spec)["methods"])
        overrides["methods"] = methods + (["prune"] if "prune" not in methods else [])
    config = resolve({**spec, **overrides}, where=f"spec file {args.spec}" if args.spec else "flags")
    out = Path(args.out) if args.out else Path("outputs") / "lmc" / str(config["name"])
    paths = run_study(config, out, sys.stderr, command=sys.argv)
    print(paths["table.md"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
