"""What share of a client's round goes to scoring its model on the test split (client-test-eval).

    python benchmarks/client_eval_share.py                       # the CIFAR-10 alpha=0.1 cell's clients
    python benchmarks/client_eval_share.py --eval-size 500 --clients 3

For the first `--clients` clients of experiments/cifar10_dirichlet.yaml's
alpha = 0.1 cell (10,000 train / 2,000 test images, CNN, 2 local epochs, batch
64), times one round of local training and the client's test evaluation, on
the whole test split and on a `client-eval-size` subset, with one torch
thread (what a Ray actor with client-cpus 1 gets). No Flower or Ray: this is
the per-client compute that the cell's wall time is made of.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from fedalign.clients.client_app import EVAL_BATCH, train_config_for
from fedalign.config import resolve
from fedalign.run_setup import client_eval_set, model_for, partitions_for, splits_for
from fedalign.training import evaluate, seeded_loader, train

CIFAR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--eval-size", type=int, default=500)
    p.add_argument("--data-dir", default=str(CIFAR))
    args = p.parse_args()
    torch.set_num_threads(1)
    base = {"dataset": "cifar10", "data-dir": args.data_dir, "train-size": 10000, "test-size": 2000, "model": "cnn",
            "partitioner": "dirichlet", "alpha": 0.1, "local-epochs": 2, "batch-size": 64, "lr": 0.05, "lr-decay": 1.0}
    config = resolve(base)
    small = resolve({**base, "client-eval-size": args.eval_size})
    splits = splits_for(config)
    parts = partitions_for(config, 10)
    rows = []
    for pid in range(args.clients):
        model = model_for(config)
        loader = seeded_loader(Subset(splits.train, parts[pid].tolist()), 64, seed=pid)
        t0 = time.perf_counter()
        train(model, loader, train_config_for(config, {}, 1))
        t1 = time.perf_counter()
        _, acc_full = evaluate(model, DataLoader(client_eval_set(config), EVAL_BATCH))
        t2 = time.perf_counter()
        _, acc_small = evaluate(model, DataLoader(client_eval_set(small), EVAL_BATCH))
        t3 = time.perf_counter()
        rows.append((pid, len(parts[pid]), t1 - t0, t2 - t1, t3 - t2, acc_full, acc_small))
    print(f"| client | samples | train s | eval s (2000) | eval s ({args.eval_size}) | eval share (2000) | eval share ({args.eval_size}) | acc (2000) | acc ({args.eval_size}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pid, n, tr, ev, evs, a, b in rows:
        print(f"| {pid} | {n} | {tr:.2f} | {ev:.2f} | {evs:.2f} | {ev / (tr + ev):.1%} | {evs / (tr + evs):.1%} | {a:.4f} | {b:.4f} |")
    tr, ev, evs = (sum(r[i] for r in rows) for i in (2, 3, 4))
    print(f"| all | {sum(r[1] for r in rows)} | {tr:.2f} | {ev:.2f} | {evs:.2f} | {ev / (tr + ev):.1%} | {evs / (tr + evs):.1%} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
