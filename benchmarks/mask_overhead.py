"""Time per training step, masked vs unmasked (target: masking adds at most 5%).

    python benchmarks/mask_overhead.py [--steps 30] [--repeats 5] [--batch 64] [--threads 1]

For each model a masked and an unmasked copy train on the same CIFAR-sized
random batches with SGD (momentum 0.9, weight decay 5e-4). The two take turns
step by step, so changing machine load affects both alike; the table reports
the median step time of each, the overhead, and the time spent inside the
mask's own hooks, which is what the mask adds by construction and is robust to
load: the gradient hook that runs at every accumulation (zeroing the fixed
gradient entries, reported on its own too), the pre-step backstop, and the
post-step restore of fixed entries plus zeroing of optimizer state on them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fedalign.masked_optim import mask_optimizer
from fedalign.masks import SubspaceMask
from fedalign.models import build_model

MODELS = {"cnn": {}, "resnet20": {"norm": "batch"}}


def _step(model, optimizer, x, y) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def _hook_seconds(optimizer) -> tuple[float, float]:
    """(all mask hooks of one step, the accumulate-grad hooks of one backward)."""
    guard = optimizer._fedalign_mask_guard
    anchors = list(guard.anchors.values())
    start = time.perf_counter()
    for anchor in anchors:  # what the post-accumulate-grad hooks run
        anchor.zero_fixed_grad()
    accumulate = time.perf_counter() - start
    guard.before_step(optimizer)
    guard.after_step(optimizer)
    return time.perf_counter() - start, accumulate


def measure(name: str, kwargs: dict, steps: int, repeats: int, batch: int, rho: float) -> dict:
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(steps)
    ]
    runs = {}
    for masked in (False, True):
        model = build_model(name, (3, 32, 32), 10, seed=0, **kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        if masked:
            mask = SubspaceMask.sample(model, rho=rho, seed=0)
            mask_optimizer(optimizer, model, mask)
        for x, y in batches[:3]:  # warm-up
            _step(model, optimizer, x, y)
        runs[masked] = (model, optimizer)
    times = {False: [], True: []}
    hooks = []
    for _ in range(repeats):
        for x, y in batches:
            for masked in (False, True):
                times[masked].append(_step(*runs[masked], x, y))
            hooks.append(_hook_seconds(runs[True][1]))
    plain, masked = statistics.median(times[False]), statistics.median(times[True])
    params = sum(p.numel() for p in runs[False][0].parameters())
    hook = statistics.median(h for h, _ in hooks)
    grad_hook = statistics.median(a for _, a in hooks)
    return {"model": name, "params": params, "plain_ms": plain * 1e3, "masked_ms": masked * 1e3,
            "overhead": masked / plain - 1, "hook_ms": hook * 1e3, "hook_share": hook / plain,
            "grad_hook_ms": grad_hook * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="distinct batches")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the batches")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rho", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}x3x32x32, SGD(momentum=0.9, wd=5e-4), rho={args.rho}, "
          f"{args.threads} thread(s), median over {args.repeats}x{args.steps} alternating steps")
    print("| model | params | unmasked ms/step | masked ms/step | overhead | mask hooks ms/step "
          "| hooks / step | grad hook ms/accumulation | target <= 5% |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kwargs in MODELS.items():
        row = measure(name, kwargs, args.steps, args.repeats, args.batch, args.rho)
        verdict = "ok" if row["overhead"] <= 0.05 else "MISSED"
        print(f"| {row['model']} | {row['params']:,} | {row['plain_ms']:.1f} | {row['masked_ms']:.1f} | "
              f"{row['overhead']:+.1%} | {row['hook_ms']:.2f} | {row['hook_share']:.1%} | "
              f"{row['grad_hook_ms']:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
