"""What a sweep cell costs beyond its compute: FedPFN vs plain Flower FedAvg vs no Flower at all.

    python benchmarks/sim_overhead.py                      # CIFAR-10 subset if ../shared has it, else digits
    python benchmarks/sim_overhead.py --dataset digits --rounds 20 --clients 10

Three runs of the same cell (data, partition, model, seeds, local training),
each in a fresh process, timed from process start to exit like a sweep cell:

  fedpfn       fedalign's FedPFN through `fedalign.simulation.simulate` (Ray backend)
  flwr-fedavg  a ServerApp built here on flwr's own `FedAvg` (no fedalign strategy,
               no mask) with the same ClientApp and central evaluation, via
               `flwr.simulation.run_simulation` with the same backend config
  fedalign-fedavg  fedalign's guarded FedAvg through `simulate` (the wrapper without a mask)
  sequential   the same local training without Flower or Ray: for each round, for
               each client, `fedalign.training.train` on its partition (FedPFN mask),
               weighted average, fixed entries restored, central evaluation; one
               torch thread (as each Ray client actor has); sequential-2t: two threads

Ratios: fedpfn / flwr-fedavg (what fedalign adds to Flower; target <= 1.05) and
fedpfn / sequential (what Flower + Ray add to the compute; target <= 1.5), each
for the whole process (wall) and for the steady rounds 2..R (without Ray and
actor start-up, which a longer cell amortizes).
Clients do not evaluate on the test set here (client-test-eval off), so all
three do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()
ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
VARIANTS = ("fedpfn", "flwr-fedavg", "fedalign-fedavg", "sequential", "sequential-2t")


def cell_config(args: argparse.Namespace, out: Path) -> dict:
    cfg = {
        "dataset": args.dataset,
        "data-dir": str(CIFAR) if args.dataset == "cifar10" else "",
        "train-size": args.train_size,
        "test-size": args.test_size,
        "model": args.model,
        "alpha": 0.5,
        "num-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "lr": 0.05,
        "min-nodes": args.clients,
        "rho": 0.4,
        "client-test-eval": False,
        "output-dir": str(out),
        "seed": 0,
    }
    return cfg


# ------------------------------------------------------------ the variants
def _simulate(strategy: str, cfg: dict, clients: int, client_cpus: float) -> dict:
    from fedalign.simulation import simulate

    stamps = [time.time()]  # round 0 is evaluated right at the start; on_round sees rounds 1..R
    record = simulate({**cfg, "strategy": strategy}, clients, lambda row: stamps.append(time.time()),
                      client_cpus=client_cpus)  # fmt: skip
    return {"final_accuracy": record["final_accuracy"], "stamps": stamps}


def run_fedpfn(cfg: dict, clients: int, client_cpus: float) -> dict:
    return _simulate("fedpfn", cfg, clients, client_cpus)


def run_fedalign_fedavg(cfg: dict, clients: int, client_cpus: float) -> dict:
    return _simulate("fedavg", cfg, clients, client_cpus)


def run_flwr_fedavg(cfg: dict, clients: int, client_cpus: float) -> dict:
    import logging

    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.utils.data import DataLoader

    from fedalign.clients.client_app import build_client_app
    from fedalign.config import resolve
    from fedalign.run_setup import model_for, splits_for
    from fedalign.training import evaluate

    config = resolve({**cfg, "strategy": "fedavg"})
    logging.getLogger("flwr").setLevel(logging.WARNING)
    result: dict = {"stamps": []}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        splits = splits_for(config)
        model = model_for(config, splits)
        test = DataLoader(splits.test, batch_size=512)

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = evaluate(model, test)
            result["final_accuracy"] = accuracy
            result["stamps"].append(time.time())
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_available_nodes=clients)  # fmt: skip
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=int(config["num-rounds"]),
            train_config=ConfigRecord({"lr": float(config["lr"])}), evaluate_fn=central,
        )  # fmt: skip

    run_simulation(
        server_app=server_app,
        client_app=build_client_app(config),
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False},
        },
    )
    return result


def run_sequential(cfg: dict, clients: int, client_cpus: float, threads: int = 1) -> dict:
    """FedPFN's compute in one process: no messages, no serialization, no actors."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from fedalign.clients.client_app import train_config_for
    from fedalign.config import resolve
    from fedalign.masks import SubspaceMask
    from fedalign.run_setup import model_for, partitions_for, splits_for
    from fedalign.training import evaluate, seeded_loader, train

    torch.set_num_threads(threads)
    config = resolve({**cfg, "strategy": "fedpfn"})
    splits = splits_for(config)
    model = model_for(config, splits)
    parts = partitions_for(config, clients)
    mask = SubspaceMask.sample(model, float(config["rho"]), seed=int(config["mask-seed"]),
                               granularity=str(config["granularity"]))  # fmt: skip
    test = DataLoader(splits.test, batch_size=512)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, test)  # round 0, as the ServerApp does
    stamps, accuracy = [time.time()], None
    for server_round in range(1, int(config["num-rounds"]) + 1):
        states, sizes = [], []
        for pid, indices in enumerate(parts):
            local = model_for(config, splits)
            local.load_state_dict(global_state)
            loader = seeded_loader(Subset(splits.train, indices.tolist()), int(config["batch-size"]),
                                   seed=int(config["seed"]) * 1_000_003 + pid * 10_007 + server_round)  # fmt: skip
            train(local, loader, train_config_for(config, {}, server_round), mask=mask)
            states.append(local.state_dict())
            sizes.append(len(indices))
        total = float(sum(sizes))
        averaged = {k: sum(s[k].float() * (n / total) for s, n in zip(states, sizes)).to(global_state[k].dtype)
                    for k in global_state}  # fmt: skip
        global_state = mask.restore_fixed(averaged, global_state)
        model.load_state_dict(global_state)
        _, accuracy = evaluate(model, test)
        stamps.append(time.time())
    return {"final_accuracy": accuracy, "torch_threads": torch.get_num_threads(), "stamps": stamps}


def child(variant: str, cfg: dict, clients: int, client_cpus: float) -> None:
    fns = {"fedpfn": run_fedpfn, "flwr-fedavg": run_flwr_fedavg, "fedalign-fedavg": run_fedalign_fedavg,
           "sequential": run_sequential, "sequential-2t": lambda *a: run_sequential(*a, threads=2)}  # fmt: skip
    start = time.time()
    result = fns[variant](cfg, clients, client_cpus)
    stamps = result.pop("stamps")
    # steady rounds 2..R: no Ray start, no actor start (round 1), no teardown
    result["steady_round_seconds"] = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else float("nan")
    result.update({"inner_seconds": time.time() - start, "process_seconds": time.time() - STARTED})
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ parent
def time_variant(variant: str, cfg: dict, args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--config", json.dumps(cfg),
           "--clients", str(args.clients), "--client-cpus", str(args.client_cpus)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{variant} failed (exit {proc.returncode})")
    return {"wall": wall, **json.loads(lines[-1][len("RESULT "):])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    have_cifar = (CIFAR / "train").is_dir()
    p.add_argument("--dataset", default="cifar10" if have_cifar else "digits")
    p.add_argument("--model", default=None, help="default: cnn for cifar10, mlp for digits")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--client-cpus", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=1, help="time each variant k times, report the fastest")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS[:4]), choices=VARIANTS)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, json.loads(args.config), args.clients, args.client_cpus)
        return 0
    cifar = args.dataset == "cifar10"
    args.model = args.model or ("cnn" if cifar else "mlp")
    args.train_size = args.train_size if args.train_size is not None else (4000 if cifar else 0)
    args.test_size = args.test_size if args.test_size is not None else (1000 if cifar else 0)
    args.rounds = args.rounds or (5 if cifar else 20)
    work = Path(tempfile.mkdtemp(prefix="sim_overhead_"))
    env = {**os.environ, "FLWR_HOME": str(work / "flwr"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    print(f"cell: {args.dataset} train {args.train_size or 'all'} test {args.test_size or 'all'}, {args.model}, "
          f"{args.clients} clients, {args.rounds} rounds x {args.local_epochs} local epoch(s), batch {args.batch_size}, "
          f"client-cpus {args.client_cpus} on {os.cpu_count()} CPUs; {args.repeats} repeat(s), fastest kept", flush=True)  # fmt: skip
    times: dict[str, list[dict]] = {v: [] for v in args.variants}
    try:
        for i in range(args.repeats):
            for variant in args.variants:  # interleaved, so load changes hit every variant alike
                res = time_variant(variant, cell_config(args, work / f"{variant}-{i}"), args, env)
                times[variant].append(res)
                print(f"  {variant:15s} run {i + 1}: {res['wall']:7.1f} s  (accuracy {res['final_accuracy']:.4f})",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {v: min(rs, key=lambda r: r["wall"]) for v, rs in times.items()}
    print("\n| run | wall s (process) | steady s / round (rounds 2..R) | final accuracy |\n|---|---|---|---|")
    for v, r in best.items():
        print(f"| {v} | {r['wall']:.1f} | {r['steady_round_seconds']:.2f} | {r['final_accuracy']:.4f} |")
    print()
    for a, b, target in (("fedpfn", "flwr-fedavg", 1.05), ("fedalign-fedavg", "flwr-fedavg", 1.05),
                         ("fedpfn", "sequential", 1.5), ("fedpfn", "sequential-2t", 1.15)):  # fmt: skip
        if a in best and b in best:
            wall = best[a]["wall"] / best[b]["wall"]
            steady = best[a]["steady_round_seconds"] / best[b]["steady_round_seconds"]
            print(f"{a} / {b}: wall {wall:.3f}, steady rounds {steady:.3f} (target <= {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
