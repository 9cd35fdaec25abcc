"""`fedalign partition`: split a data set's training labels over clients and show the split.

Prints the per-client class table and writes partition.md, partition.csv,
partition.png (heatmap) and partition.json (arguments, environment, skew
numbers and every client's sample indices) into --out, each file atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedalign.config import PARTITIONERS
from fedalign.datasets import DATASET_NAMES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "partition",
        help="split a data set over clients (iid, Dirichlet or pathological label skew) and report it",
        description=(
            "Split the training split of a data set over clients with flwr-datasets' partitioners "
            "and report per-client sizes and class counts (table, CSV, heatmap PNG, JSON record)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="digits", metavar="NAME",
                   help=f"data set to split; one of: {', '.join(DATASET_NAMES)}")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the data set's files are (not needed for digits): torchvision's layout "
                        "or DIR/train/<class>/ and DIR/test/<class>/ image folders")
    p.add_argument("--download", action="store_true",
                   help="download mnist, fashion-mnist, cifar10 or cifar100 into --data-dir if missing")
    p.add_argument("--train-size", type=int, default=0, metavar="N",
                   help="split a stratified, seeded subset of N training samples (0 = all)")
    p.add_argument("--clients", type=int, default=10, metavar="N", help="number of clients (partitions)")
    p.add_argument("--scheme", default="dirichlet", metavar="SCHEME",
                   help=f"one of {', '.join(PARTITIONERS)}; iid: equal random shards; dirichlet: per-class shares ~ Dirichlet(alpha); "
                        "pathological: each client gets exactly --classes-per-client classes")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet concentration (> 0): 0.1 = strong label skew, 100 = nearly IID")
    p.add_argument("--min-size", type=int, default=10, metavar="N",
                   help="smallest allowed client size; Dirichlet resamples (up to 10 tries) until it holds")
    p.add_argument("--classes-per-client", type=int, default=2, metavar="K",
                   help="classes per client for --scheme pathological")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split (and of the --train-size subset)")
    p.add_argument("--out", default="outputs/partition", metavar="DIR",
                   help="folder for partition.md/.csv/.png/.json (created if missing)")
    p.set_defaults(func=run)


def check_flags(args: argparse.Namespace) -> None:
    """Ranges of the numeric flags and a usable --out, before any data is read."""
    import math

    from fedalign.errors import check
    from fedalign.preflight import check_output_dir

    check(args.clients >= 1, f"--clients {args.clients} must be >= 1")
    check(math.isfinite(args.alpha) and args.alpha > 0, f"alpha={args.alpha} must be > 0 and finite (--alpha; e.g. 0.1 for strong label skew)")
    check(args.train_size >= 0, f"--train-size {args.train_size} must be >= 0 (0 = all)")
    check(args.min_size >= 0, f"--min-size {args.min_size} must be >= 0")
    check(args.classes_per_client >= 1, f"--classes-per-client {args.classes_per_client} must be >= 1")
    check(args.seed >= 0, f"--seed {args.seed} must be >= 0")
    check_output_dir(args.out)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fedalign import partition_report as report
    from fedalign.datasets import load_raw, stratified_subset
    from fedalign.partitioning import partition
    from fedalign.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, environment

    check_flags(args)
    raw, source = load_raw(args.dataset, args.data_dir, args.download)
    subset = stratified_subset(raw.train_y, args.train_size, args.seed, "--train-size")
    labels = raw.train_y[subset]
    parts = partition(
        labels,
        args.clients,
        scheme=args.scheme,
        alpha=args.alpha,
        min_partition_size=args.min_size,
        seed=args.seed,
        classes_per_partition=args.classes_per_client,
    )
    hist = report.class_histogram(labels, parts, len(raw.classes))
    stats = report.skew_stats(hist)
    detail = {"dirichlet": f"alpha={args.alpha:g}", "pathological": f"k={args.classes_per_client}", "iid": ""}
    title = f"{args.dataset}: {args.scheme} {detail[args.scheme]}, {args.clients} clients, seed {args.seed}"
    table = report.markdown_table(hist, raw.classes)
    summary = (
        f"{stats['samples']} samples, sizes {stats['min_size']}..{stats['max_size']}, "
        f"mean max-class share {stats['mean_max_class_share']:.3f}, "
        f"mean normalized label entropy {stats['mean_normalized_entropy']:.3f}"
    )

    out = Path(args.out)
    atomic_write_text(out / "partition.md", f"# {title}\n\n{summary}\n\n{table}")
    atomic_write_text(out / "partition.csv", report.csv_text(hist, raw.classes))
    atomic_write_bytes(out / "partition.png", report.heatmap_png(hist, raw.classes, title))
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    atomic_write_json(out / "partition.json", {
        "command": "partition",
        "arguments": arguments,
        "seed": args.seed,
        "dataset": {"name": args.dataset, "source": source, "classes": list(raw.classes),
                    "train_samples": int(len(labels))},
        "stats": stats,
        "sizes": [int(len(p)) for p in parts],
        "histogram": hist.tolist(),
        "train_subset": subset.tolist() if args.train_size else None,
        "partitions_index": "rows of load_dataset(dataset, data_dir, train_size=train_size, seed=seed).train",
        "partitions": [np.asarray(p).tolist() for p in parts],
        "environment": environment(),
    })
    print(f"# {title}\n{summary}\n\n{table}\nwrote {out}/partition.{{md,csv,png,json}}")
    return 0
