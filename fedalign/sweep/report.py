"""Tables and plots of a sweep, rebuilt from its cell records alone.

    summary.md / summary.csv   alpha x strategy: final accuracy (mean of the last k
                               rounds) mean ± std over seeds, rounds to reach the
                               target accuracy, fusion gap
    paired.csv                 per alpha, each strategy minus the baseline (fedavg)
                               paired by seed: mean ± std of the per-seed
                               differences of final accuracy, and n (also in summary.md)
    rounds.csv                 every cell's per-round metrics, long format
    accuracy_vs_round_alpha<a>.png, final_accuracy_vs_alpha.png, fusion_gap_vs_round.png,
    accuracy_vs_mb_alpha<a>.png (accuracy against cumulative MB on the wire)

Bytes on the wire are the array payloads plus the mask blob, down and up
(`fedalign.wire`); protocol framing is not counted.

The fusion gap of a round is the mean test accuracy of the clients' trained
models minus the test accuracy of their average (the new global model):
negative when averaging helps, positive when the averaged model loses
accuracy the clients had (client drift under heterogeneity).

A cell whose training diverged (record `outcome.status == "diverged"`) has no
final accuracy: it is left out of the means and the paired differences and
counted as diverged, with the round, in the tables.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedalign.errors import UsageError
from fedalign.provenance import atomic_write_bytes, atomic_write_text
from fedalign.sweep import records

ROUND_FIELDS = (
    "round", "accuracy", "loss", "train-loss", "client-test-accuracy", "fusion-gap", "seconds",
    "bytes-down", "bytes-up", "bytes-down-node", "bytes-up-node", "mb-cumulative",
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def trained_rounds(record: Mapping) -> list[dict]:
    """Rounds 1..R (round 0 is the initial model's evaluation)."""
    return [r for r in record["rounds"] if int(r["round"]) > 0]


def diverged_round(record: Mapping) -> int | None:
    """The round at which the cell's training diverged, or None for a run that completed."""
    outcome = record.get("outcome") or {}
    return int(outcome["round"]) if outcome.get("status") == "diverged" else None


def final_accuracy(record: Mapping, last: int = 5) -> float:
    """Mean accuracy of the last `last` rounds (all rounds if there are fewer); NaN if it diverged."""
    if diverged_round(record) is not None:
        return math.nan
    rounds = trained_rounds(record)
    return float(np.mean([r["accuracy"] for r in rounds[-last:]])) if rounds else math.nan


def rounds_to_target(record: Mapping, target: float | None) -> int | None:
    if target is None:
        return None
    for r in trained_rounds(record):
        if r["accuracy"] >= target:
            return int(r["round"])
    return None


def run_mb(record: Mapping) -> tuple[float, float]:
    """(mean MB per round, total MB) down + up over the trained rounds; NaN when not counted."""
    rounds = [r for r in trained_rounds(record) if "bytes-down" in r and "bytes-up" in r]
    if not rounds:
        return math.nan, math.nan
    total = sum(float(r["bytes-down"]) + float(r["bytes-up"]) for r in rounds) / 1e6
    return total / len(rounds), total


def _gaps(record: Mapping) -> list[float]:
    return [float(r["fusion-gap"]) for r in trained_rounds(record) if "fusion-gap" in r]


def summarize(
    recs: Sequence[Mapping],
    last: int = 5,
    target: float | None = None,
    alphas: Sequence[float] | None = None,
    strategies: Sequence[str] | None = None,
) -> list[dict]:
    """One row per (alpha, strategy), in the spec's order when given."""
    groups: dict[tuple[float, str], list[Mapping]] = {}
    for r in recs:
        groups.setdefault((float(r["cell"]["alpha"]), str(r["cell"]["strategy"])), []).append(r)
    alpha_order = [float(a) for a in alphas or []]
    strategy_order = list(strategies or [])
    for a, s in groups:
        if a not in alpha_order:
            alpha_order.append(a)
        if s not in strategy_order:
            strategy_order.append(s)
    rows = []
    for a in alpha_order:
        for s in strategy_order:
            group = sorted(groups.get((a, s), []), key=lambda r: int(r["cell"]["seed"]))
            if not group:
                continue
            reach = [rounds_to_target(r, target) for r in group]
            hit = [x for x in reach if x is not None]
            rows.append({
                "alpha": a,
                "strategy": s,
                "seeds": [int(r["cell"]["seed"]) for r in group],
                "diverged": [d for r in group if (d := diverged_round(r)) is not None],
                "rounds": max(len(trained_rounds(r)) for r in group),
                "final": _mean_std([final_accuracy(r, last) for r in group]),
                "best": _mean_std([max((x["accuracy"] for x in trained_rounds(r)), default=math.nan) for r in group]),
                "reached": len(hit),
                "to_target": float(np.mean(hit)) if hit else math.nan,
                "gap": _mean_std([float(np.mean(g)) if (g := _gaps(r)) else math.nan for r in group]),
                "gap_last": _mean_std([float(np.mean(g[-last:])) if (g := _gaps(r)) else math.nan for r in group]),
                "mb_round": float(np.mean([run_mb(r)[0] for r in group])),
                "mb_total": float(np.mean([run_mb(r)[1] for r in group])),
                "wall": float(np.mean([r.get("timing", {}).get("process_seconds", math.nan) for r in group])),
            })  # fmt: skip
    return rows


def paired_differences(
    recs: Sequence[Mapping], last: int = 5, baseline: str = "fedavg",
    alphas: Sequence[float] | None = None, strategies: Sequence[str] | None = None,
) -> list[dict]:
    """Per alpha and strategy: final accuracy minus the baseline's, paired by seed.

    Seeds share the partition and the initial model, so the per-seed difference
    removes that variance; reported as mean ± sample std of the differences over
    the n seeds both strategies finished (a diverged seed has no final accuracy
    and is left out). Empty when the baseline did not run.
    """
    finals: dict[tuple[float, str], dict[int, float]] = {}
    for r in recs:
        if diverged_round(r) is not None:
            continue
        key = (float(r["cell"]["alpha"]), str(r["cell"]["strategy"]))
        finals.setdefault(key, {})[int(r["cell"]["seed"])] = final_accuracy(r, last)
    alpha_order = list(dict.fromkeys([float(a) for a in alphas or []] + [a for a, _ in finals]))
    strategy_order = list(dict.fromkeys(list(strategies or []) + [s for _, s in finals]))
    rows = []
    for a in alpha_order:
        base = finals.get((a, baseline))
        if not base:
            continue
        for s in strategy_order:
            if s == baseline or (a, s) not in finals:
                continue
            seeds = sorted(set(base) & set(finals[(a, s)]))
            if not seeds:
                continue
            diffs = [finals[(a, s)][k] - base[k] for k in seeds]
            rows.append({"alpha": a, "strategy": s, "baseline": baseline, "seeds": seeds,
                         "diffs": diffs, "diff": _mean_std(diffs)})  # fmt: skip
    return rows


def paired_markdown(rows: Sequence[Mapping], last: int) -> list[str]:
    if not rows:
        return []
    baseline = rows[0]["baseline"]
    lines = [
        "",
        f"## Paired differences vs {baseline}",
        "",
        f"Final accuracy (mean of the last {last} rounds) of each strategy minus {baseline}'s "
        "in the same seed (same partition and initial model): mean ± sample std of the "
        "per-seed differences, n seeds.",
        "",
        "| alpha | strategy | difference | n | per seed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{k}: {d:+.3f}" for k, d in zip(r["seeds"], r["diffs"]))
        lines.append(
            f"| {r['alpha']:g} | {r['strategy']} − {baseline} | {_fmt(r['diff'], signed=True, n=len(r['seeds']))} | "
            f"{len(r['seeds'])} | {per_seed} |"
        )
    return lines


def paired_csv(rows: Sequence[Mapping]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["alpha", "strategy", "baseline", "n_seeds", "seeds", "diff_mean", "diff_std", "diffs"])
    for r in rows:
        writer.writerow([f"{r['alpha']:g}", r["strategy"], r["baseline"], len(r["seeds"]),
                         " ".join(map(str, r["seeds"])), *r["diff"],
                         " ".join(f"{d:.6f}" for d in r["diffs"])])  # fmt: skip
    return buffer.getvalue()


def _fmt(ms: tuple[float, float], digits: int = 3, signed: bool = False, n: int = 2) -> str:
    """Mean ± std; over fewer than two seeds there is no spread, so the bare value."""
    mean, std = ms
    if math.isnan(mean):
        return "—"
    value = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return value if n < 2 else f"{value} ± {std:.{digits}f}"


def _diverged_text(row: Mapping) -> str:
    """'diverged (2/3 seeds, round 7)': how many seeds diverged, and when."""
    rounds = sorted(row["diverged"])
    when = f"round {rounds[0]}" if rounds[0] == rounds[-1] else f"rounds {rounds[0]}-{rounds[-1]}"
    return f"diverged ({len(rounds)}/{len(row['seeds'])} seeds, {when})"


def _final_cell(row: Mapping, planned: int) -> str:
    """Mean ± std over seeds; one seed has no spread to show, and a short cell says how many it has.

    Diverged seeds are not in the mean; the cell says how many there were.
    """
    n = len(row["seeds"])
    finished = n - len(row["diverged"])
    if not finished:
        text = _diverged_text(row)
    else:
        text = _fmt(row["final"], n=finished)
        if row["diverged"]:
            text += f"; {_diverged_text(row)}"
    return text if n >= planned else f"{text} ({n}/{planned} seeds)"


def _target_cell(row: Mapping, target: float | None) -> str:
    if target is None:
        return "—"
    n = len(row["seeds"])
    if not row["reached"]:
        return f"not reached (0/{n})"
    text = f"{row['to_target']:.1f}"
    return text if row["reached"] == n else f"{text} ({row['reached']}/{n} seeds)"


def markdown(
    rows: Sequence[Mapping], spec: Mapping | None, last: int, target: float | None,
    paired: Sequence[Mapping] = (),
) -> str:
    spec = spec or {}
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    alphas = list(dict.fromkeys(r["alpha"] for r in rows))
    by = {(r["alpha"], r["strategy"]): r for r in rows}
    lines = [f"# Sweep {spec.get('name', '')}".rstrip(), ""]
    if spec:
        lines += [
            f"{spec.get('dataset')} / {spec.get('model')}"
            f"{' (' + str(spec['model-args']) + ')' if spec.get('model-args') else ''}, "
            f"{spec.get('clients')} clients, participation {spec.get('participation')}, "
            f"{spec.get('rounds')} rounds, {spec.get('local-epochs')} local epoch(s), "
            f"batch {spec.get('batch-size')}, lr {spec.get('lr')} (x{spec.get('lr-decay')} per round), "
            f"partitioner {spec.get('partitioner')}, seeds {spec.get('seeds')}.",
            "",
        ]
    lines += [
        f"Final test accuracy of the global model: mean of the last {last} rounds, "
        "mean ± std over seeds (sample std); a cell with one seed shows its value, "
        "a cell with fewer seeds than planned says how many it has, and seeds whose "
        "training diverged (every client's model NaN/Inf) are counted, not averaged.",
        "",
        "| alpha | " + " | ".join(strategies) + " |",
        "|---|" + "---|" * len(strategies),
    ]
    planned = len(spec.get("seeds") or ()) or max((len(r["seeds"]) for r in rows), default=0)
    for a in alphas:
        cells = [_final_cell(by[(a, s)], planned) if (a, s) in by else "—" for s in strategies]
        lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
    lines += paired_markdown(paired, last)
    target_title = f"rounds to {target:g}" if target is not None else "rounds to target"
    lines += [
        "",
        "## Details",
        "",
        "Fusion gap = mean test accuracy of the clients' trained models minus the accuracy of "
        "their average (per round; negative: the average is better than the clients).",
        "",
        f"| alpha | strategy | seeds | final acc | best acc | {target_title} | "
        f"fusion gap (all rounds) | fusion gap (last {last}) | MB / round | total MB | s / cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = len(r["seeds"])
        seeds = f"{n} ({len(r['diverged'])} diverged)" if r["diverged"] else f"{n}"
        lines.append(
            f"| {r['alpha']:g} | {r['strategy']} | {seeds} | {_fmt(r['final'], n=n - len(r['diverged']))} | "
            f"{_fmt(r['best'], n=n)} | "
            f"{_target_cell(r, target)} | {_fmt(r['gap'], signed=True, n=n)} | {_fmt(r['gap_last'], signed=True, n=n)} | "
            f"{_mb(r['mb_round'])} | {_mb(r['mb_total'])} | {r['wall']:.0f} |"
        )
    lines += [
        "",
        "MB = 10^6 bytes on the wire, down + up over all nodes: array payloads plus the mask blob "
        "(protocol framing not counted).",
    ]
    return "\n".join(lines) + "\n"


def _mb(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def summary_csv(rows: Sequence[Mapping], target: float | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([
        "alpha", "strategy", "n_seeds", "seeds", "rounds", "final_acc_mean", "final_acc_std",
        "best_acc_mean", "best_acc_std", "target_accuracy", "rounds_to_target_mean", "seeds_reaching_target",
        "fusion_gap_mean", "fusion_gap_std", "fusion_gap_last_mean", "fusion_gap_last_std", "mb_per_round", "mb_total", "seconds_per_cell",
        "seeds_diverged", "diverged_rounds",
    ])  # fmt: skip
    for r in rows:
        writer.writerow([
            f"{r['alpha']:g}", r["strategy"], len(r["seeds"]), " ".join(map(str, r["seeds"])), r["rounds"],
            *r["final"], *r["best"], "" if target is None else target,
            "" if math.isnan(r["to_target"]) else r["to_target"], r["reached"] if target is not None else "",
            *r["gap"], *r["gap_last"], r["mb_round"], r["mb_total"], r["wall"],
            len(r["diverged"]), " ".join(map(str, r["diverged"])),
        ])  # fmt: skip
    return buffer.getvalue()


def rounds_csv(recs: Sequence[Mapping]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["alpha", "strategy", "seed", *ROUND_FIELDS])
    for rec in sorted(recs, key=lambda r: (r["cell"]["seed"], r["cell"]["alpha"], r["cell"]["strategy"])):
        for row in rec["rounds"]:
            writer.writerow([f"{rec['cell']['alpha']:g}", rec["cell"]["strategy"], rec["cell"]["seed"],
                             *(row.get(k, "") for k in ROUND_FIELDS)])  # fmt: skip
    return buffer.getvalue()


# ----------------------------------------------------------------- plots
def _curves(recs: Sequence[Mapping], key: str) -> dict[tuple[float, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(alpha, strategy) -> rounds, mean, std over seeds of `key` per round."""
    groups: dict[tuple[float, str], list[Mapping]] = {}
    for r in recs:
        groups.setdefault((float(r["cell"]["alpha"]), str(r["cell"]["strategy"])), []).append(r)
    out = {}
    for k, group in groups.items():
        n = min(len(trained_rounds(r)) for r in group)
        values = np.array([[x.get(key, math.nan) for x in trained_rounds(r)[:n]] for r in group], dtype=float)
        std = values.std(0, ddof=1) if len(group) > 1 else np.zeros(n)
        out[k] = (np.arange(1, n + 1), values.mean(0), std)
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plots(recs: Sequence[Mapping], rows: Sequence[Mapping], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    alphas = list(dict.fromkeys(r["alpha"] for r in rows))
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
    written = []
    acc = _curves(recs, "accuracy")
    for a in alphas:
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in strategies:
            if (a, s) in acc:
                x, m, sd = acc[(a, s)]
                ax.plot(x, m, label=s, color=colors[s])
                ax.fill_between(x, m - sd, m + sd, color=colors[s], alpha=0.2)
        ax.set(xlabel="round", ylabel="test accuracy (global model)", title=f"alpha = {a:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"accuracy_vs_round_alpha{a:g}.png"
        atomic_write_bytes(path, _png(fig))
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in strategies:
        pts = [(r["alpha"], *r["final"]) for r in rows if r["strategy"] == s]
        if pts:
            x, m, sd = map(np.asarray, zip(*pts))
            ax.errorbar(x, m, yerr=sd, label=s, color=colors[s], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set(xlabel="Dirichlet alpha (smaller = more label skew)", ylabel="final test accuracy",
           title="final accuracy vs heterogeneity")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    path = out / "final_accuracy_vs_alpha.png"
    atomic_write_bytes(path, _png(fig))
    written.append(path)

    mb = _curves(recs, "mb-cumulative")
    for a in alphas:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for s in strategies:
            if (a, s) in acc and (a, s) in mb and not np.isnan(mb[(a, s)][1]).all():
                _, m, sd = acc[(a, s)]
                x = mb[(a, s)][1]  # the same for every seed: bytes depend on model, rho and clients
                ax.plot(x, m, label=s, color=colors[s], marker=".")
                ax.fill_between(x, m - sd, m + sd, color=colors[s], alpha=0.2)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="cumulative MB on the wire (down + up, framing not counted)",
               ylabel="test accuracy (global model)", title=f"accuracy vs communication, alpha = {a:g}")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"accuracy_vs_mb_alpha{a:g}.png"
        atomic_write_bytes(path, _png(fig))
        written.append(path)

    gap = _curves(recs, "fusion-gap")
    if any(not np.isnan(m).all() for _, m, _ in gap.values()):
        fig, axes = plt.subplots(1, len(alphas), figsize=(4.5 * len(alphas), 3.6), squeeze=False, sharey=True)
        for ax, a in zip(axes[0], alphas):
            for s in strategies:
                if (a, s) in gap:
                    x, m, sd = gap[(a, s)]
                    ax.plot(x, m, label=s, color=colors[s])
                    ax.fill_between(x, m - sd, m + sd, color=colors[s], alpha=0.2)
            ax.axhline(0, color="black", lw=0.8)
            ax.set(xlabel="round", title=f"alpha = {a:g}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("fusion gap (mean client acc - global acc)")
        axes[0][-1].legend()
        path = out / "fusion_gap_vs_round.png"
        atomic_write_bytes(path, _png(fig))
        written.append(path)
    return written


def write_report(out: Path, target: float | None = None, last: int | None = None) -> dict[str, Path]:
    """Rebuild every table and plot of the sweep in `out` from its cell records."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out} is not a directory; pass the output directory of a sweep (e.g. outputs/demo)")
    recs = records.all_records(out)
    if not recs:
        raise UsageError(
            f"{out} holds no finished cell records ({records.CELLS_DIR}/*/{records.RECORD_FILE}); run the sweep first"
        )
    sweep = records.load_sweep(out)
    spec = sweep.get("spec") if sweep else None
    if not isinstance(spec, dict):
        spec = None  # the records alone still make a report
    if target is None and spec:
        target = spec.get("target-accuracy")
    if last is None:
        last = int(spec.get("last-rounds", 5)) if spec else 5
    rows = summarize(
        recs, last, target,
        alphas=spec.get("alphas") if spec else None,
        strategies=[s["name"] for s in spec.get("strategies", [])] if spec else None,
    )  # fmt: skip
    paired = paired_differences(
        recs, last,
        alphas=spec.get("alphas") if spec else None,
        strategies=[s["name"] for s in spec.get("strategies", [])] if spec else None,
    )  # fmt: skip
    paths = {
        "summary.md": out / "summary.md",
        "summary.csv": out / "summary.csv",
        "rounds.csv": out / "rounds.csv",
    }
    if paired:
        paths["paired.csv"] = out / "paired.csv"
        atomic_write_text(paths["paired.csv"], paired_csv(paired))
    atomic_write_text(paths["summary.md"], markdown(rows, spec, last, target, paired))
    atomic_write_text(paths["summary.csv"], summary_csv(rows, target))
    atomic_write_text(paths["rounds.csv"], rounds_csv(recs))
    for path in plots(recs, rows, out):
        paths[path.name] = path
    return paths
