"""Run the cells of an LMC study: (variant, seed, method) -> one JSON result.

Per seed every method starts from the SAME initialization and model k of
every method sees the SAME data (data order seed 1000 * seed + k, or the
k-th Dirichlet part), so methods differ only by their mask. A TNA-PFN or
pruning mask is sampled once per (seed, rho) and shared by the K models.
Each finished cell is written atomically to <out>/cells/<cell>.json; a
re-run skips cells whose file exists (and refuses one computed under other
settings, rather than mixing two studies in one table).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fedalign import lmc
from fedalign.device import resolve_device
from fedalign.errors import UsageError
from fedalign.lmc_study.config import CELL_KEYS, DEFAULTS, method_label, method_list, variant_label, variants
from fedalign.masked_optim import prune_at_init
from fedalign.masks import SubspaceMask
from fedalign.matching import match_models, spec_for
from fedalign.models import build_model, has_batchnorm
from fedalign.provenance import atomic_write_json
from fedalign.safe_yaml import brief
from fedalign.training import TrainConfig, seeded_loader, train


def order_seed(seed: int, k: int) -> int:
    """Data-order seed of model k in study seed `seed` (shared by all methods)."""
    return 1000 * int(seed) + int(k)


@dataclass(frozen=True)
class Cell:
    variant: Mapping[str, object]
    vlabel: str
    seed: int
    method: str
    rho: float

    @property
    def id(self) -> str:
        m = self.method if self.method == "vanilla" else f"{self.method}-rho{self.rho:g}"
        return f"{self.vlabel or 'base'}__{m}__seed{self.seed}".replace("/", "_")

    @property
    def label(self) -> str:
        return method_label(self.method, self.rho)


def cells_of(c: Mapping[str, object]) -> list[Cell]:
    """Seed-major order: a partial run already has every method for its first seeds."""
    return [
        Cell(v, variant_label(c, v), seed, method, rho)
        for v in variants(c)
        for seed in c["seeds"]
        for method, rho in method_list(c)
    ]


@dataclass
class StudyData:
    train: torch.utils.data.Dataset
    test_loader: DataLoader
    labels: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    info: dict = field(default_factory=dict)


def load_data(c: Mapping[str, object]) -> StudyData:
    from fedalign.datasets import load_dataset

    splits = load_dataset(
        c["dataset"],
        data_dir=c["data-dir"] or None,
        download=c["download"],
        train_size=c["train-size"] or None,
        test_size=c["test-size"] or None,
        seed=c["data-seed"],
    )
    test_loader = DataLoader(splits.test, batch_size=c["eval-batch-size"], shuffle=False)
    info = {"train": len(splits.train), "test": len(splits.test), "source": getattr(splits, "source", "")}
    return StudyData(
        splits.train, test_loader, np.asarray(splits.train_labels), tuple(splits.input_shape),
        int(splits.num_classes), info,
    )  # fmt: skip


class Progress:
    """One stderr line per epoch and per cell, with an ETA from the work done so far."""

    def __init__(self, total_units: int, total_cells: int, stream=sys.stderr) -> None:
        self.total, self.done, self.cells, self.cell_i = max(total_units, 1), 0, total_cells, 0
        self.start, self.stream = time.perf_counter(), stream

    def eta(self) -> str:
        elapsed = time.perf_counter() - self.start
        if not self.done:
            return f"{elapsed / 60:.1f} min elapsed"
        left = elapsed / self.done * (self.total - self.done)
        return f"{elapsed / 60:.1f} min elapsed, ETA {left / 60:.1f} min"

    def say(self, text: str) -> None:
        print(f"[lmc] {text}", file=self.stream, flush=True)

    def epoch(self, cell: Cell, k: int, k_total: int, epoch: int, epochs: int, loss: float) -> None:
        self.done += 1
        self.say(
            f"cell {self.cell_i}/{self.cells} {cell.id}: model {k + 1}/{k_total} "
            f"epoch {epoch + 1}/{epochs} loss {loss:.4f} | {self.eta()}"
        )


def _train_config(c: Mapping[str, object]) -> TrainConfig:
    return TrainConfig(
        lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight-decay"],
        batch_size=c["batch-size"], epochs=c["epochs"], optimizer=c["optimizer"],
    )  # fmt: skip


def _datasets_for(c: Mapping[str, object], data: StudyData, seed: int) -> list:
    if c["split"] == "order":
        return [data.train] * c["num-models"]
    from fedalign.partitioning import partition

    parts = partition(
        data.labels, c["num-models"], scheme="dirichlet", alpha=c["alpha"],
        min_partition_size=c["min-partition-size"], seed=seed,
    )  # fmt: skip
    return [Subset(data.train, [int(i) for i in idx]) for idx in parts]


def train_cell_models(
    c: Mapping[str, object], data: StudyData, cell: Cell, on_epoch: Callable | None = None
) -> tuple[list[nn.Module], dict]:
    """The K trained models of a cell and what to record about their training."""
    device = resolve_device(str(c["device"]))
    init = build_model(c["model"], data.input_shape, data.num_classes, seed=cell.seed, **cell.variant)
    mask = None
    info: dict = {"device": str(device)}
    if cell.method != "vanilla":
        mask = SubspaceMask.sample(
            init, cell.rho, seed=cell.seed, granularity=c["granularity"],
            include=c["mask-include"] or None, exclude=c["mask-exclude"] or None,
        )  # fmt: skip
        info["mask"] = {"fixed_fraction": mask.fixed_fraction, "digest": mask.digest}
        if cell.method == "prune":
            prune_at_init(init, mask)
    cfg = _train_config(c)
    models, losses, sizes = [], [], []
    start = time.perf_counter()
    for k, dataset in enumerate(_datasets_for(c, data, cell.seed)):
        model = copy.deepcopy(init).to(device)  # masks and anchors follow the model (masked_optim)
        loader = seeded_loader(dataset, c["batch-size"], seed=order_seed(cell.seed, k))
        callback = (lambda e, loss, k=k: on_epoch(k, e, loss)) if on_epoch else None
        losses.append(train(model, loader, cfg, mask=mask, on_epoch=callback) if c["epochs"] else float("nan"))
        models.append(model.eval())
        sizes.append(len(dataset))
    info.update({"seconds": time.perf_counter() - start, "mean_train_loss": losses, "train_sizes": sizes})
    return models, info


def _reestimate(c: Mapping[str, object]) -> bool | None:
    return None if c["bn-reestimate"] == "auto" else bool(c["bn-reestimate"])


def evaluate_models(
    c: Mapping[str, object], models: list[nn.Module], data: StudyData, batches, accuracies=None
) -> dict:
    """Curve of models 0 -> 1, its barriers, and the fusion of all K models."""
    reest = _reestimate(c)
    curve = lmc.evaluate_curve(
        models[0], models[1], data.test_loader, points=c["points"], bn_loader=batches,
        bn_num_batches=c["bn-batches"], reestimate=reest,
    )  # fmt: skip
    if accuracies is None:
        accuracies = [curve.accuracies[0], curve.accuracies[-1]] + [
            lmc.evaluate_state(m, m.state_dict(), data.test_loader, batches, reest)[1] for m in models[2:]
        ]
    fused = lmc.fusion(
        models, data.test_loader, bn_loader=batches, bn_num_batches=c["bn-batches"],
        reestimate=reest, model_accuracies=accuracies,
    )  # fmt: skip
    return {"curve": curve.to_dict(), "metrics": {**lmc.barriers(curve), **fused}, "model_accs": accuracies}


def run_cell(c: Mapping[str, object], data: StudyData, cell: Cell, progress: Progress | None = None) -> dict:
    on_epoch = None
    if progress is not None:
        def on_epoch(k, e, loss):  # noqa: E306
            progress.epoch(cell, k, c["num-models"], e, c["epochs"], loss)

    models, train_info = train_cell_models(c, data, cell, on_epoch)
    start = time.perf_counter()
    batches = None
    if _reestimate(c) is True or (_reestimate(c) is None and has_batchnorm(models[0])):
        batches = lmc.bn_batches(seeded_loader(data.train, c["batch-size"], seed=cell.seed), c["bn-batches"])
    plain = evaluate_models(c, models, data, batches)
    matched = None
    if c["match"]:
        spec = spec_for(models[0])
        aligned, iterations, seconds = [models[0]], [], []
        for other in models[1:]:
            m, it, sec = match_models(models[0], other, spec, max_iter=c["match-max-iter"], seed=cell.seed)
            aligned.append(m)
            iterations.append(it)
            seconds.append(sec)
        # A permuted model computes the same function: its accuracy is unchanged.
        matched = evaluate_models(c, aligned, data, batches, accuracies=plain["model_accs"])
        matched["metrics"]["wm_iterations"] = float(np.mean(iterations))
        matched["metrics"]["wm_seconds"] = float(np.mean(seconds))
        matched["iterations"], matched["seconds"] = iterations, seconds
    return {
        "cell": cell.id,
        "variant": dict(cell.variant),
        "variant_label": cell.vlabel,
        "method": cell.method,
        "rho": cell.rho,
        "label": cell.label,
        "seed": cell.seed,
        "settings": {k: c[k] for k in CELL_KEYS},
        "train": train_info,
        "plain": plain,
        "matched": matched,
        "eval_seconds": time.perf_counter() - start,
    }


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def load_finished(path: Path, c: Mapping[str, object], cell: Cell | None = None) -> dict | None:
    """The stored result of a cell, None if absent; UsageError if made under other settings.

    "Other settings" is any key in CELL_KEYS or other model arguments: a result is
    never reused for, or relabelled as, a configuration it was not computed with.
    """
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # unreadable (should not happen with atomic writes): recompute
    if not isinstance(result, dict):
        return None
    want = _jsonable({k: c[k] for k in CELL_KEYS})
    # A key added to CELL_KEYS after a cell was written counts as its default.
    have = {**_jsonable({k: DEFAULTS[k] for k in CELL_KEYS}), **(result.get("settings") or {})}
    differ = [k for k in CELL_KEYS if have.get(k) != want.get(k)]
    shown = [f"{k}={brief(have.get(k))} (now {brief(want.get(k))})" for k in differ[:4]]
    if cell is not None and result.get("variant") != _jsonable(dict(cell.variant)):
        shown.insert(0, f"model arguments {brief(result.get('variant'))} (now {brief(dict(cell.variant))})")
    if shown:
        raise UsageError(
            f"{path} was computed with other settings: {'; '.join(shown)}; use another --out "
            "or delete that directory to recompute"
        )
    return result


def run_cells(c: Mapping[str, object], out: Path, progress_stream=sys.stderr) -> list[dict]:
    """Every cell's result, computing only the missing ones."""
    if c["threads"]:
        torch.set_num_threads(c["threads"])
    cells = cells_of(c)
    paths = {cell.id: out / "cells" / f"{cell.id}.json" for cell in cells}
    done = {cell.id: load_finished(paths[cell.id], c, cell) for cell in cells}
    todo = [cell for cell in cells if done[cell.id] is None]
    progress = Progress(len(todo) * c["num-models"] * c["epochs"], len(cells), progress_stream)
    for i, cell in enumerate(cells, start=1):
        if done[cell.id] is not None:
            progress.say(f"cell {i}/{len(cells)} {cell.id}: skipped (finished result in {paths[cell.id]})")
    data = load_data(c) if todo else None
    for cell in todo:
        progress.cell_i = cells.index(cell) + 1
        result = run_cell(c, data, cell, progress)
        result["data"] = data.info
        atomic_write_json(paths[cell.id], result)
        done[cell.id] = _jsonable(result)
        m = result["plain"]["metrics"]
        extra = ""
        if result["matched"]:
            mm = result["matched"]["metrics"]
            extra = f", after WM {mm['acc_barrier']:.3f} ({mm['wm_iterations']:.0f} sweeps, {mm['wm_seconds']:.2f} s)"
        progress.say(
            f"cell {progress.cell_i}/{len(cells)} {cell.id}: done; acc {m['acc_a']:.3f}/{m['acc_b']:.3f}, "
            f"acc barrier {m['acc_barrier']:.3f}, loss barrier {m['loss_barrier']:.3f}{extra} | {progress.eta()}"
        )
    return [done[cell.id] for cell in cells]
