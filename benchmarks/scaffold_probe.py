"""SCAFFOLD (or any strategy) on the CIFAR-10 grid setting, in one process, round by round.

    python benchmarks/scaffold_probe.py --alpha 0.1               # the grid's alpha 0.1 cell, 8 rounds
    python benchmarks/scaffold_probe.py --alpha 100 --rounds 8
    python benchmarks/scaffold_probe.py --lr 0.02 --strategy scaffold

Why: a grid cell needs Ray and ~8 min; this drives the real strategy
(`build_strategy`) and the real ClientApp train handler for 10 clients with
their own `Context`s (c_i lives in each one's state), with no engine, and
prints the global test accuracy after every round plus the spread of local
step counts K_i, which is what breaks SCAFFOLD at alpha 0.1 (docs/sweep.md).
Needs ../shared/data/cifar10.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the stand-in Grid of the strategy unit tests


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="scaffold")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    args = p.parse_args()

    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from stub_grid import StubGrid
    from torch.utils.data import DataLoader

    from fedalign.clients.client_app import train_handler
    from fedalign.config import resolve
    from fedalign.run_setup import model_for, partitions_for, splits_for
    from fedalign.strategies import build_strategy
    from fedalign.training import evaluate

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = resolve({
        "dataset": "cifar10", "data-dir": args.data_dir, "train-size": 10000, "test-size": 2000, "model": "cnn",
        "partitioner": "dirichlet", "alpha": args.alpha, "lr": args.lr, "momentum": args.momentum,
        "weight-decay": 5e-4, "batch-size": 64, "local-epochs": 2, "lr-decay": 1.0, "client-test-eval": False,
        "min-nodes": 10, "strategy": args.strategy, "seed": 0,
    })  # fmt: skip  (experiments/cifar10_dirichlet.yaml's setting)
    sizes = [len(p) for p in partitions_for(config, 10)]
    epochs, batch = int(config["local-epochs"]), int(config["batch-size"])
    steps = sorted(epochs * -(-n // batch) for n in sizes)
    print(f"{args.strategy}, alpha {args.alpha}, lr {args.lr}, momentum {args.momentum}: "
          f"local steps K_i per client {steps}")  # fmt: skip
    model = model_for(config)
    strategy = build_strategy(config, model)
    contexts = {
        n + 1: Context(run_id=1, node_id=n + 1, node_config={"partition-id": n, "num-partitions": 10},
                       state=RecordDict(), run_config={})  # fmt: skip
        for n in range(10)
    }
    grid = StubGrid(list(contexts))
    arrays = ArrayRecord(model.state_dict())
    test = DataLoader(splits_for(config).test, 500)
    print("| round | accuracy | loss |\n|---|---|---|")
    for server_round in range(1, args.rounds + 1):
        messages = strategy.configure_train(server_round, arrays, ConfigRecord({}), grid)
        replies = [train_handler(m, contexts[m.metadata.dst_node_id], config) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test)
        print(f"| {server_round} | {accuracy:.4f} | {loss:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
