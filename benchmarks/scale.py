"""Memory and round time of one simulation with many clients: peak PSS over the whole process tree.

    python benchmarks/scale.py --clients 1000 --actors 2 --fraction 0.01 --rounds 2
    python benchmarks/scale.py --clients 1000 --actors 4 --fraction 0.01 --rounds 2
    python benchmarks/scale.py --clients 10000 --actors 2 --fraction 0.001 --rounds 2
    python benchmarks/scale.py --dataset digits --clients 100 --actors 2     # no files needed

Runs one FedPFN cell through `fedalign.simulation.simulate` (Flower's
Simulation Runtime on Ray) on the full CIFAR-10 train split (IID shards, so
any number of clients works), sampling `fraction` of the clients per round.
K actors are made by giving each client `cpus / K` Ray CPUs. A thread reads
/proc/<pid>/smaps_rollup of this process and all its descendants (Ray's GCS,
raylet, the client actors) every 0.2 s; PSS charges each shared page
(libraries, the memory-mapped pixel cache) to the processes sharing it, so
the sum is the real footprint. Prints one table row; --json adds the record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def process_name(pid: int) -> str:
    """A short label: Ray names its workers in the title (ray::ClientAppActor), else the command."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    return Path(first).name + (" " + Path(argv[1].decode(errors="replace")).name if len(argv) > 1 and argv[1] else "")


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakPss(threading.Thread):
    """Samples the summed PSS of this process tree until stopped; keeps the peak."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self.peak_procs = interval, 0, 0
        self.peak_by_process: list[tuple[str, int]] = []  # (name, PSS KiB) at the peak
        self.stop = threading.Event()

    def sample(self) -> None:
        pids = process_tree(os.getpid())
        each = [(pid, pss_kib(pid)) for pid in pids]
        total = sum(kib for _, kib in each)
        if total > self.peak:
            self.peak, self.peak_procs = total, len(pids)
            self.peak_by_process = sorted(((process_name(pid), kib) for pid, kib in each if kib),
                                          key=lambda item: -item[1])

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def warm_caches(config: dict, clients: int) -> None:
    """Decode the data and compute the partitions in a throwaway process, as an earlier run would have.

    A first run also imports flwr-datasets in the measuring process to
    partition (~120 MB more at the peak); that is a one-off per setting, not
    the footprint of a simulation, so by default every row is measured warm.
    """
    code = ("import json, sys; from fedalign.config import resolve; from fedalign.run_setup import partitions_for, splits_for;"
            "c = resolve(json.loads(sys.argv[1])); splits_for(c); partitions_for(c, int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, json.dumps(config), str(clients)], check=True)


def file_huge_pages_mib() -> float:
    """Page-cache file pages held in huge folios (/proc/meminfo FileHugePages), in MiB.

    Freshly written files (a new virtual environment) can sit in the page cache
    as 2 MiB folios; a process that maps one byte of such a library is charged
    the whole folio, which inflated this benchmark's peak by ~0.4 GiB (2.90 vs
    2.50 GiB for 1,000 clients x 2 actors, 2026-12-07). After the page cache is
    dropped the libraries are read back in small pages.
    """
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("FileHugePages:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--actors", type=int, default=2, help="Ray actors (client-cpus = CPUs / actors)")
    p.add_argument("--fraction", type=float, default=None, help="clients sampled per round (default: 10 clients)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    p.add_argument("--data-dir", default=str(CIFAR))
    p.add_argument("--model", default=None, help="default: cnn for cifar10, mlp for digits")
    p.add_argument("--strategy", default="fedpfn")
    p.add_argument("--client-eval-size", type=int, default=None, help="run config client-eval-size, if supported")
    p.add_argument("--cold", action="store_true",
                   help="measure with whatever the caches hold (default: fill the data and partition caches first)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    fraction = args.fraction if args.fraction is not None else min(1.0, 10 / args.clients)
    cpus = max(1, os.cpu_count() or 1)
    out = Path(tempfile.mkdtemp(prefix="fedalign-scale-"))
    os.environ.setdefault("FLWR_HOME", str(out / ".flwr"))
    config = {
        "dataset": args.dataset,
        "data-dir": args.data_dir if args.dataset == "cifar10" else "",
        "model": args.model or ("cnn" if args.dataset == "cifar10" else "mlp"),
        "partitioner": "iid",
        "min-partition-size": 1,
        "strategy": args.strategy,
        "num-rounds": args.rounds,
        "fraction-train": fraction,
        "min-nodes": 2,
        "local-epochs": 1,
        "batch-size": 32,
        "output-dir": str(out / "run"),
    }
    if args.client_eval_size is not None:
        config["client-eval-size"] = args.client_eval_size

    if not args.cold:
        warm_caches(config, args.clients)

    huge = file_huge_pages_mib()
    if huge > 0:
        print(f"note: {huge:.0f} MiB of cached file pages are huge folios (FileHugePages), which inflates the "
              "PSS of shared libraries; for comparable numbers drop the page cache first "
              "(as root: sync; echo 3 > /proc/sys/vm/drop_caches)", flush=True)  # fmt: skip
    monitor = PeakPss()
    monitor.sample()
    baseline = monitor.peak
    monitor.start()
    from fedalign.simulation import simulate  # noqa: E402 - after the baseline sample

    t0 = time.perf_counter()
    record = simulate(config, args.clients, client_cpus=cpus / args.actors)
    wall = time.perf_counter() - t0
    monitor.stop.set()
    monitor.join()
    rounds = [float(r["seconds"]) for r in record["rounds"] if int(r["round"]) > 0]
    row = {
        "dataset": args.dataset,
        "clients": args.clients,
        "actors": args.actors,
        "per_round": max(2, int(fraction * args.clients + 1e-9)),
        "rounds": args.rounds,
        "peak_pss_gib": monitor.peak / 2**20,
        "peak_processes": monitor.peak_procs,
        "baseline_pss_gib": baseline / 2**20,
        "round_seconds": rounds,
        "median_round_seconds": statistics.median(rounds),
        "wall_seconds": wall,
        "final_accuracy": record["final_accuracy"],
        "file_huge_pages_mib": huge,
    }
    header = "| dataset | clients | actors | clients/round | rounds | peak PSS (GiB) | processes | median round (s) | rounds (s) | wall (s) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    print(
        f"| {row['dataset']} | {row['clients']} | {row['actors']} | {row['per_round']} | {row['rounds']} | "
        f"{row['peak_pss_gib']:.2f} | {row['peak_processes']} | {row['median_round_seconds']:.2f} | "
        f"{', '.join(f'{s:.1f}' for s in rounds)} | {wall:.0f} |"
    )
    print("\nat the peak, PSS per process (MiB): " + ", ".join(
        f"{name} {kib / 1024:.0f}" for name, kib in monitor.peak_by_process))
    if args.json:
        print(json.dumps({**row, "peak_by_process_mib": [(n, k / 1024) for n, k in monitor.peak_by_process]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
