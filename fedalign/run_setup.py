"""What a resolved run config builds: data splits, client partitions, the initial model.

The ServerApp, the ClientApp and the sweep runner all build through here, so a
client and the server always agree on the data set, the split and the model.
Results are cached per process (a Ray actor serves many rounds and clients),
and partitions also on disk (`fedalign.datasets.cache.cached_partitions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from torch import nn

from fedalign.config import parse_model_args
from fedalign.datasets import DatasetSplits, load_dataset
from fedalign.datasets.cache import cached_partitions
from fedalign.models import build_model
from fedalign.partitioning import partition


def _size(value) -> int | None:
    return int(value) or None


@lru_cache(maxsize=2)
def _splits(name: str, data_dir: str, train_size, test_size, seed: int) -> DatasetSplits:
    return load_dataset(
        name, data_dir=data_dir or None, train_size=train_size, test_size=test_size, seed=seed
    )


def splits_for(config: Mapping[str, object]) -> DatasetSplits:
    return _splits(
        str(config["dataset"]),
        str(config["data-dir"]),
        _size(config["train-size"]),
        _size(config["test-size"]),
        int(config["partition-seed"]),
    )


@lru_cache(maxsize=4)
def _partitions(key: tuple, num_partitions: int) -> tuple[np.ndarray, ...]:
    config = dict(key)
    labels = np.asarray(splits_for(config).train_labels)
    settings = {
        "scheme": str(config["partitioner"]),
        "alpha": float(config["alpha"]),
        "min_partition_size": int(config["min-partition-size"]),
        "seed": int(config["partition-seed"]),
        "classes_per_partition": int(config["classes-per-partition"]),
    }
    return tuple(cached_partitions(labels, num_partitions, settings,
                                   lambda: partition(labels, num_partitions, **settings)))  # fmt: skip


_PARTITION_KEYS = (
    "dataset", "data-dir", "train-size", "test-size", "partitioner", "alpha",
    "min-partition-size", "partition-seed", "classes-per-partition",
)


def partitions_for(config: Mapping[str, object], num_partitions: int) -> tuple[np.ndarray, ...]:
    """Sample indices of every client's training partition."""
    key = tuple((k, config[k]) for k in _PARTITION_KEYS)
    return _partitions(key, int(num_partitions))


def model_for(config: Mapping[str, object], splits: DatasetSplits | None = None) -> nn.Module:
    """The initial global model: the same weights in every process for the same seed."""
    splits = splits or splits_for(config)
    return build_model(
        str(config["model"]),
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        seed=int(config["seed"]),
        **parse_model_args(str(config["model-args"])),
    )


@lru_cache(maxsize=4)
def _eval_positions(key: tuple, size: int) -> tuple[int, ...]:
    from fedalign.datasets import stratified_subset

    config = dict(key)
    labels = splits_for(config).test_labels
    return tuple(int(i) for i in stratified_subset(labels, min(size, len(labels)), int(config["partition-seed"]) + 2, "client-eval-size"))


def client_eval_set(config: Mapping[str, object]):
    """The test samples a client scores its trained model on: all, or `client-eval-size` of them.

    The subset is stratified and fixed by partition-seed, so every client and
    every round is scored on the same samples (the fusion gap stays comparable).
    """
    from torch.utils.data import Subset

    test = splits_for(config).test
    size = int(config["client-eval-size"])
    if not size or size >= len(test):
        return test
    key = tuple((k, config[k]) for k in _PARTITION_KEYS)
    return Subset(test, list(_eval_positions(key, size)))


def device_for(config: Mapping[str, object]):
    """The torch.device of this process for the run (see fedalign.device)."""
    from fedalign.device import resolve_device

    return resolve_device(str(config["device"]))
