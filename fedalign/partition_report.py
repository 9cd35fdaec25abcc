"""What a partition looks like: class histogram, skew statistics, table, CSV and heatmap.

Kept apart from `partitioning` so the split itself stays free of matplotlib
and formatting; the CLI and the sweep report both draw from here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def class_histogram(labels, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Counts, clients x classes (int64)."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes)[:num_classes] for p in parts]).astype(np.int64)


def skew_stats(hist: np.ndarray) -> dict[str, float | int]:
    """Label-skew numbers: mean max-class share, mean normalized entropy (1 = uniform), size spread.

    Empty clients are left out of the share and entropy means.
    """
    sizes = hist.sum(axis=1)
    nonempty = hist[sizes > 0]
    shares = nonempty / nonempty.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(shares > 0, shares * np.log(shares), 0.0).sum(axis=1)
    num_classes = hist.shape[1]
    norm_ent = ent / np.log(num_classes) if num_classes > 1 else np.ones_like(ent)
    return {
        "clients": int(hist.shape[0]),
        "samples": int(sizes.sum()),
        "min_size": int(sizes.min()),
        "max_size": int(sizes.max()),
        "mean_size": float(sizes.mean()),
        "mean_max_class_share": float(shares.max(axis=1).mean()) if len(shares) else float("nan"),
        "mean_normalized_entropy": float(norm_ent.mean()) if len(norm_ent) else float("nan"),
        "mean_classes_present": float((nonempty > 0).sum(axis=1).mean()) if len(nonempty) else 0.0,
    }


def markdown_table(hist: np.ndarray, classes: Sequence[str]) -> str:
    """One row per client: size then count per class; a total row at the bottom."""
    header = ["client", "size", *[str(c) for c in classes]]
    rows = [[str(i), str(int(row.sum())), *[str(int(v)) for v in row]] for i, row in enumerate(hist)]
    rows.append(["total", str(int(hist.sum())), *[str(int(v)) for v in hist.sum(axis=0)]])
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([fmt(header), sep, *map(fmt, rows)]) + "\n"


def csv_text(hist: np.ndarray, classes: Sequence[str]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["client", "size", *classes])
    for i, row in enumerate(hist):
        writer.writerow([i, int(row.sum()), *[int(v) for v in row]])
    return buf.getvalue()


def heatmap_png(hist: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """PNG bytes of a clients x classes heatmap with the count in each cell.

    Uses a bare `Figure` (rendered by Agg), not pyplot: no window, no global
    backend switch for whoever imported us.
    """
    from matplotlib.figure import Figure

    n_clients, n_classes = hist.shape
    fig = Figure(figsize=(max(4.0, 0.5 * n_classes + 2), max(3.0, 0.35 * n_clients + 1.5)), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(hist, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title)
    if n_classes <= 30:
        names = [str(c) for c in classes]
        slanted = n_classes * max(map(len, names), default=1) > 40  # long names would overlap
        ax.set_xticks(range(n_classes), names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    if n_clients <= 50:
        ax.set_yticks(range(n_clients))
    if n_clients * n_classes <= 1000:
        threshold = hist.max() / 2 if hist.size else 0
        for i in range(n_clients):
            for j in range(n_classes):
                color = "black" if hist[i, j] > threshold else "white"
                ax.text(j, i, str(int(hist[i, j])), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
