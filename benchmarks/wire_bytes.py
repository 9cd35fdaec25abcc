"""Bytes on the wire per strategy, from a sweep's cell records: a markdown table.

    python benchmarks/wire_bytes.py outputs/transport_cifar10b --rounds 30

Per node and round (down / up) for round 1 and the later rounds, and the
total MB of an R-round run. Bytes are deterministic given model, rho, mask
seed and the clients per round, so a short run gives them exactly: the R-round
total repeats the measured later rounds' pattern (FedPNU alternates M, 1 - M;
every other strategy sends the same bytes every round from round 2 on).
Counted: array payloads plus the mask blob; protocol framing is not counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pattern_total(rows: list[dict], rounds: int) -> int:
    """Total bytes of an R-round run from the measured rounds (round 1, then a 2-round period)."""
    per = {int(r["round"]): r["bytes-down"] + r["bytes-up"] for r in rows}
    if rounds <= max(per):
        return sum(per[r] for r in range(1, rounds + 1))
    total = per[1]
    for r in range(2, rounds + 1):
        total += per[2] if r % 2 == 0 else per[3]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the run to total (default 30)")
    args = parser.parse_args()
    records = [json.loads(p.read_text()) for p in sorted(args.sweep_dir.glob("cells/*/record.json"))]
    order = ["fedavg", "fedprox", "fedpfn", "fedpnu"]
    records.sort(key=lambda r: order.index(r["cell"]["strategy"]) if r["cell"]["strategy"] in order else len(order))
    fedavg = next((r for r in records if r["cell"]["strategy"] == "fedavg"), None)
    base = None if fedavg is None else fedavg["wire"]["rounds"][0]["bytes-up-node"]
    print(f"| strategy | round 1 down / up per node (B) | round 2 down / up | round 3 down / up "
          f"| up vs FedAvg (r2) | MB / round (r >= 2, {len(records[0]['wire']['rounds'][0]['down'])} nodes) "
          f"| total MB, {args.rounds} rounds |")
    print("|---|---|---|---|---|---|---|")
    for rec in records:
        rows = rec["wire"]["rounds"]
        cells = [f"{r['bytes-down-node']:,.0f} / {r['bytes-up-node']:,.0f}" for r in rows[:3]]
        later = [r["bytes-down"] + r["bytes-up"] for r in rows[1:]]
        ratio = rows[1]["bytes-up-node"] / base if base else float("nan")
        print(f"| {rec['cell']['strategy']} | " + " | ".join(cells)
              + f" | {ratio:.3f} | {sum(later) / len(later) / 1e6:.3f} | {pattern_total(rows, args.rounds) / 1e6:.2f} |")


if __name__ == "__main__":
    main()
