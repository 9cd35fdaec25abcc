"""Local training and evaluation loops shared by the LMC study and the ClientApp.

One place defines how a model trains (optimizer, mask, proximal term), so a
centralized LMC run and a federated client train in exactly the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedalign.allocator import reuses_heap
from fedalign.errors import UsageError
from fedalign.masked_optim import mask_optimizer
from fedalign.masks import SubspaceMask

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class TrainConfig:
    """Local optimizer settings; defaults follow SPEC §7 (SGD, momentum, wd)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    epochs: int = 1
    optimizer: str = "sgd"
    proximal_mu: float = 0.0


def _device_of(model: nn.Module) -> torch.device:
    """Batches go where the model is (CPU unless the caller moved it; see fedalign.device)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def seeded_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader whose batch order depends only on `seed` (the 'data order')."""
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@reuses_heap  # activation buffers are reused across steps, not re-faulted (fedalign.allocator)
def train(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    mask: SubspaceMask | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    grad_correction: Sequence[torch.Tensor] | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train in place; fixed entries of `mask` stay exact. Returns the mean loss.

    `grad_correction` (one tensor per parameter, in `model.parameters()` order)
    is added to every step's gradient before the optimizer sees it, so
    momentum and weight decay act on the corrected gradient (SCAFFOLD's
    c - c_i, see `fedalign.clients.scaffold`); a mask zeroes it on fixed entries.
    `criterion` is the loss (default cross-entropy).
    """
    model.train()
    optimizer = make_optimizer(model, cfg)
    if mask is not None:
        mask_optimizer(optimizer, model, mask)
    anchor = (
        [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    )
    criterion = criterion or nn.CrossEntropyLoss()
    device = _device_of(model)
    total, count = 0.0, 0
    for epoch in range(cfg.epochs):
        epoch_loss, epoch_n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            if anchor is not None:  # FedProx: (mu / 2) * ||w - w_global||^2
                prox = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            loss.backward()
            if grad_correction is not None:
                for p, correction in zip(model.parameters(), grad_correction, strict=True):
                    if p.grad is not None:
                        p.grad.add_(correction)
            optimizer.step()
            epoch_loss += loss.item() * len(y)
            epoch_n += len(y)
        total, count = total + epoch_loss, count + epoch_n
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss / max(epoch_n, 1))
    return total / max(count, 1)


@reuses_heap
@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `loader`."""
    model.eval()
    device = _device_of(model)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, correct / n
