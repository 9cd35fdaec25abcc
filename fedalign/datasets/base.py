"""The two shapes a data set takes here: raw pixels (`RawSplits`) and model-ready tensors (`DatasetSplits`).

Every loader only has to produce `RawSplits` (integer pixels, NCHW, labels);
normalization and seeded subsetting happen once, in `to_splits`, so all data
sets are prepared the same way and raw pixels can be cached without caring
about train_size, test_size or seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from fedalign.errors import UsageError


@dataclass(frozen=True)
class RawSplits:
    """Integer pixels in [0, scale], NCHW, plus int64 labels and class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    scale: float = 255.0
    source: str = ""


class PixelDataset(Dataset):
    """Samples `indices` of integer pixels, normalized when a batch is read.

    `pixels` is usually a read-only memory map shared by every process (see
    `fedalign.datasets.cache`): no process holds a float copy of the data set.
    Values are bit-identical to normalizing the whole array at once: the
    arithmetic is element-wise. DataLoader batches go through `__getitems__`
    (one fancy-indexed read per batch, also through `Subset`).
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 scale: float, mean: Sequence[float], std: Sequence[float]) -> None:  # fmt: skip
        self.pixels, self.scale = pixels, float(scale)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[self.indices].copy())
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64)
        x = normalize(self.pixels[self.indices[positions]], self.scale, self.mean, self.std)
        return x, self.labels[torch.from_numpy(positions)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([int(i)])
        return x[0], y[0]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(positions)
        return list(zip(x, y))

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as (x, y) tensors (materialized: for small sets and tests)."""
        return self.batch(np.arange(len(self)))


@dataclass
class DatasetSplits:
    """Train/test `PixelDataset`s (normalized float32 NCHW batches, int64 labels) for a DataLoader."""

    name: str
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str]
    test_labels: np.ndarray | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = ""
    extra: dict = field(default_factory=dict)


def stratified_subset(labels: np.ndarray, size: int | None, seed: int, what: str) -> np.ndarray:
    """Sorted indices of `size` samples keeping class proportions (largest remainder), seeded.

    `size` None or 0 means all samples. Works for any size in [1, n], also
    below the number of classes, where plain stratified splitting refuses.
    """
    n = len(labels)
    if not size:
        return np.arange(n)
    if not 0 < size <= n:
        raise UsageError(f"{what}={size} is out of range; the split has {n} samples (use 1..{n}, or 0 for all)")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / n
    quota = np.floor(exact).astype(int)
    remainder_order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
    quota[remainder_order[: size - quota.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def channel_stats(x: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of integer pixels `x` (NCHW) divided by `scale`."""
    xs = x.astype(np.float64) / scale
    mean = xs.mean(axis=(0, 2, 3))
    std = xs.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalize(x: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8/int NCHW pixels -> float32 tensor ((x / scale) - mean) / std."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(scale)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


def to_splits(
    name: str,
    raw: RawSplits,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    train_size: int | None,
    test_size: int | None,
    seed: int,
) -> DatasetSplits:
    """Subset (stratified, seeded) and normalize `raw`; mean/std None = computed on the full train split."""
    if mean is None or std is None:
        mean, std = channel_stats(raw.train_x, raw.scale)
    tr = stratified_subset(raw.train_y, train_size, seed, "train_size")
    te = stratified_subset(raw.test_y, test_size, seed + 1, "test_size")
    train_y = raw.train_y[tr].astype(np.int64)
    test_y = raw.test_y[te].astype(np.int64)
    train = PixelDataset(raw.train_x, raw.train_y, tr, raw.scale, mean, std)
    test = PixelDataset(raw.test_x, raw.test_y, te, raw.scale, mean, std)
    return DatasetSplits(
        name=name,
        train=train,
        test=test,
        train_labels=train_y,
        num_classes=len(raw.classes),
        input_shape=tuple(int(d) for d in raw.train_x.shape[1:]),
        classes=list(raw.classes),
        test_labels=test_y,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        source=raw.source,
    )
