"""Turn cell results into the study's outputs: table (Markdown + CSV), curves PNG, JSON record.

With several rhos per method, rho.png plots barriers, endpoint accuracy and
weight-matching sweeps against rho (vanilla is rho = 0).

Rows are (variant, method[, + weight matching]); every number is mean ± std
over seeds (sample std, ddof = 1; 0 for a single seed), endpoint
accuracies included, because barriers without accuracies hide a model that
simply did not learn.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedalign.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, environment

# (metric key, column title, digits)
COLUMNS = (
    ("acc_a", "acc A", 3),
    ("acc_b", "acc B", 3),
    ("loss_barrier", "loss barrier", 3),
    ("acc_barrier", "acc barrier", 3),
    ("acc_barrier_rel", "rel. acc barrier", 3),
    ("midpoint_acc", "midpoint acc", 3),
    ("fused_acc", "fused acc", 3),
    ("fusion_barrier", "fusion barrier", 3),
    ("wm_iterations", "WM sweeps", 1),
    ("wm_seconds", "WM time (s)", 2),
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def rows_of(results: Sequence[Mapping]) -> list[dict]:
    """Aggregate cells into table rows, in the order the cells were listed."""
    groups: dict[tuple, dict] = {}
    for r in results:
        for matched in (False, True):
            part = r["matched"] if matched else r["plain"]
            if part is None:
                continue
            key = (r["variant_label"], r["label"], matched)
            g = groups.setdefault(key, {"variant": r["variant_label"], "method": r["label"],
                                        "kind": r["method"], "rho": float(r["rho"]),
                                        "matched": matched, "seeds": [], "metrics": [], "curves": []})  # fmt: skip
            g["seeds"].append(r["seed"])
            g["metrics"].append(part["metrics"])
            g["curves"].append(part["curve"])
    rows = []
    for g in groups.values():  # insertion order: cell order, each method before its + WM row
        row = {"variant": g["variant"], "method": g["method"] + (" + WM" if g["matched"] else ""),
               "kind": g["kind"], "rho": g["rho"],
               "matched": g["matched"], "seeds": g["seeds"], "n": len(g["seeds"])}  # fmt: skip
        for key, _, _ in COLUMNS:
            row[key] = _mean_std([m.get(key, math.nan) for m in g["metrics"]])
        row["curve"] = {"alphas": g["curves"][0]["alphas"]}
        for key, field in (("acc", "accuracies"), ("loss", "losses")):
            values = np.asarray([c[field] for c in g["curves"]], dtype=float)
            row["curve"][f"{key}_mean"] = values.mean(0).tolist()
            row["curve"][f"{key}_std"] = (values.std(0, ddof=1) if len(values) > 1 else 0 * values[0]).tolist()
        rows.append(row)
    return rows


def _fmt(ms: tuple[float, float], digits: int) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: Sequence[Mapping]) -> str:
    with_variant = any(r["variant"] for r in rows)
    head = (["variant"] if with_variant else []) + ["method", "seeds"] + [t for _, t, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["variant"]] if with_variant else []) + [r["method"], str(r["n"])]
        cells += [_fmt(r[k], d) for k, _, d in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["variant", "method", "seeds"] + [f"{k}_{s}" for k, _, _ in COLUMNS for s in ("mean", "std")])
    for r in rows:
        writer.writerow([r["variant"], r["method"], r["n"]] + [f"{v:.6g}" for k, _, _ in COLUMNS for v in r[k]])
    return buf.getvalue()


def plot_curves(rows: Sequence[Mapping], title: str = "") -> bytes:
    """PNG: accuracy and loss against alpha, one line per row, shaded ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base_index: dict[tuple, int] = {}
    for r in rows:
        base = (r["variant"], r["method"].removesuffix(" + WM"))
        color = colors[base_index.setdefault(base, len(base_index)) % len(colors)]
        style = "--" if r["matched"] else "-"
        label = (f"{r['variant']} " if r["variant"] else "") + r["method"]
        c = r["curve"]
        a = np.asarray(c["alphas"])
        for ax, key in zip(axes, ("acc", "loss")):
            mean, std = np.asarray(c[f"{key}_mean"]), np.asarray(c[f"{key}_std"])
            ax.plot(a, mean, style, color=color, marker="o", ms=3, label=label)
            ax.fill_between(a, mean - std, mean + std, color=color, alpha=0.15, lw=0)
    for ax, ylabel in zip(axes, ("test accuracy", "test loss")):
        ax.set_xlabel("alpha (0 = model A, 1 = model B)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return _finish_png(fig, axes, title)


RHO_PANELS = (  # (metric, y label, WM rows too)
    ("acc_barrier", "accuracy barrier", True),
    ("loss_barrier", "loss barrier", True),
    ("endpoint_acc", "endpoint accuracy (mean of A, B)", False),
    ("wm_iterations", "weight-matching sweeps", True),
)


def has_rho_sweep(rows: Sequence[Mapping]) -> bool:
    """True when some method of some variant ran at two or more rhos."""
    rhos: dict[tuple, set] = {}
    for r in rows:
        if r["kind"] != "vanilla":
            rhos.setdefault((r["variant"], r["kind"]), set()).add(r["rho"])
    return any(len(v) > 1 for v in rhos.values())


def _metric(row: Mapping, key: str) -> tuple[float, float]:
    if key != "endpoint_acc":
        return row[key]
    (a, sa), (b, sb) = row["acc_a"], row["acc_b"]
    return (a + b) / 2, (sa + sb) / 2


def plot_vs_rho(rows: Sequence[Mapping], title: str = "") -> bytes:
    """PNG: barriers, endpoint accuracy and WM sweeps against rho, per method (± std over seeds).

    Vanilla (nothing fixed) is the point at rho = 0 of every line; dashed lines
    are after weight matching.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RHO_PANELS), figsize=(4.2 * len(RHO_PANELS), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = {"pfn": "TNA-PFN", "prune": "prune"}
    lines: dict[tuple, list] = {}
    for r in rows:
        kinds = list(names) if r["kind"] == "vanilla" else [r["kind"]]  # vanilla starts every line
        for kind in kinds:
            lines.setdefault((r["variant"], kind, r["matched"]), []).append(r)
    lines = {k: v for k, v in lines.items() if any(r["kind"] != "vanilla" for r in v)}
    for i, ((variant, kind, matched), group) in enumerate(sorted(lines.items(), key=lambda kv: kv[0][:2])):
        group = sorted(group, key=lambda r: r["rho"])
        x = np.asarray([r["rho"] for r in group])
        color = colors[sorted({k[:2] for k in lines}).index((variant, kind)) % len(colors)]
        label = (f"{variant} " if variant else "") + names[kind] + (" + WM" if matched else "")
        for ax, (key, ylabel, with_wm) in zip(axes, RHO_PANELS):
            if matched and not with_wm:
                continue
            mean, std = (np.asarray(v) for v in zip(*(_metric(r, key) for r in group)))
            ax.errorbar(x, mean, yerr=std, fmt="--o" if matched else "-o", color=color, ms=3,
                        capsize=3, label=label)  # fmt: skip
            ax.set(xlabel="rho (fraction of entries fixed; 0 = vanilla)", ylabel=ylabel)
            ax.grid(alpha=0.3)
    return _finish_png(fig, axes, title)


def write_outputs(
    c: Mapping[str, object], results: Sequence[Mapping], out: Path, extra: Mapping | None = None
) -> dict[str, Path]:
    """table.md, table.csv, curves.png and results.json under `out`."""
    rows = rows_of(results)
    table = markdown_table(rows)
    paths = {name: out / name for name in ("table.md", "table.csv", "curves.png", "results.json")}
    atomic_write_text(paths["table.md"], table)
    atomic_write_text(paths["table.csv"], csv_table(rows))
    atomic_write_bytes(paths["curves.png"], plot_curves(rows, str(c["name"])))
    if has_rho_sweep(rows):
        paths["rho.png"] = out / "rho.png"
        atomic_write_bytes(paths["rho.png"], plot_vs_rho(rows, str(c["name"])))
    record = {
        "config": dict(c),
        "seeds": list(c["seeds"]),
        "environment": environment(),
        "rows": [{k: v for k, v in r.items()} for r in rows],
        "cells": list(results),
        **dict(extra or {}),
    }
    atomic_write_json(paths["results.json"], record)
    return paths


def _finish_png(fig, axes, title: str | None) -> bytes:
    """Legend, title and layout, then the figure as PNG bytes (and closed)."""
    import matplotlib.pyplot as plt

    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
