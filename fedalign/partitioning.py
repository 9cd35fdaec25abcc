"""Split sample indices over clients with flwr-datasets' partitioners (SPEC §6).

    parts = partition(labels, 10, scheme="dirichlet", alpha=0.1, seed=0)

The partitioners run on a Hugging Face `datasets.Dataset` holding only the
label column plus an "idx" column, so what comes back are indices into the
caller's own tensors; Flower's algorithms decide the split, we only read it.
IID shuffles (seeded) before flwr's contiguous `IidPartitioner` shards, since
label arrays are often sorted by class (image folder trees are).
"""

from __future__ import annotations

import warnings

import numpy as np

from fedalign.config import PARTITIONERS
from fedalign.errors import UsageError

__all__ = ["PARTITIONERS", "CLASS_ASSIGNMENT_MODES", "partition"]

CLASS_ASSIGNMENT_MODES = ("deterministic", "random", "first-deterministic")


def _label_dataset(labels: np.ndarray):
    import datasets

    return datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels), dtype=np.int64)})


def _read_indices(partitioner, num_partitions: int) -> list[np.ndarray]:
    """Each partition's "idx" column.

    `load_partition(i)` is flwr's public way, but each call makes `datasets`
    hash the partition's index list (dill-pickling numpy ints: ~4 s per 50,000
    samples). So once the partitioner has decided (the public `num_partitions`
    property makes it decide), its decided row lists are read directly where
    it keeps them (Dirichlet, Pathological); tests check that both ways agree.
    """
    partitioner.num_partitions  # noqa: B018 - decides the split (and raises flwr's errors) now
    decided = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(decided, dict) and sorted(decided) == list(range(num_partitions)):
        idx = _column(partitioner.dataset)
        return [idx[np.asarray(decided[i], dtype=np.int64)] for i in range(num_partitions)]
    return [_column(partitioner.load_partition(i)) for i in range(num_partitions)]


def _column(ds) -> np.ndarray:
    """The "idx" column as one int64 array (`ds["idx"]` would iterate row by row)."""
    return np.asarray(ds.with_format("numpy")[:]["idx"], dtype=np.int64)


def _check(labels: np.ndarray, num_partitions: int, scheme: str, alpha: float, min_size: int, k: int) -> None:
    n = len(labels)
    if scheme not in PARTITIONERS:
        raise UsageError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(PARTITIONERS)}")
    if num_partitions < 1:
        raise UsageError(f"number of partitions is {num_partitions}; use at least 1")
    if num_partitions > n:
        raise UsageError(f"{num_partitions} partitions but only {n} samples; use at most {n} partitions")
    if min_size < 0:
        raise UsageError(f"minimum partition size {min_size} is negative; use 0 or more")
    if num_partitions * min_size > n:
        raise UsageError(
            f"{num_partitions} partitions of at least {min_size} samples need {num_partitions * min_size} "
            f"but there are {n}; lower the minimum size to <= {n // num_partitions} or use fewer partitions"
        )
    if scheme == "dirichlet" and not alpha > 0:
        raise UsageError(f"alpha={alpha} must be > 0 (e.g. 0.1 for strong label skew, 100 for near-IID)")
    if scheme == "pathological":
        num_classes = len(np.unique(labels))
        if not 1 <= k <= num_classes:
            raise UsageError(f"classes per partition is {k}; use 1..{num_classes} (the labels have {num_classes} classes)")


def partition(
    labels,
    num_partitions: int,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    min_partition_size: int = 10,
    seed: int = 0,
    classes_per_partition: int = 2,
    class_assignment: str = "deterministic",
) -> list[np.ndarray]:
    """Sample indices per partition; each sample lands in at most one (exactly one for iid/dirichlet).

    dirichlet: per class, shares ~ Dirichlet(alpha) (flwr retries up to 10
    times to give every partition >= `min_partition_size` samples).
    pathological: each partition gets exactly `classes_per_partition` classes
    (`class_assignment` as in flwr's PathologicalPartitioner; classes no
    partition draws stay unassigned). iid: seeded shuffle, equal shards.
    """
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UsageError(f"labels must be a 1-d array, got shape {labels.shape}")
    num_partitions, min_size, k = int(num_partitions), int(min_partition_size), int(classes_per_partition)
    _check(labels, num_partitions, scheme, float(alpha), min_size, k)
    ds = _label_dataset(labels)

    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = ds.shuffle(seed=int(seed))
        return _read_indices(partitioner, num_partitions)

    if scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_size,
            self_balancing=False,
            seed=int(seed),
        )
        partitioner.dataset = ds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per retry; the final failure is reported below
            try:
                return _read_indices(partitioner, num_partitions)
            except ValueError as err:
                if "max number of attempts" not in str(err):
                    raise
        raise UsageError(
            f"Dirichlet(alpha={alpha}) split of {len(labels)} samples over {num_partitions} partitions "
            f"missed the minimum size {min_size} in all of flwr-datasets' 10 retries; "
            "raise alpha, lower --min-size, use fewer partitions, or try another seed"
        )

    if class_assignment not in CLASS_ASSIGNMENT_MODES:
        raise UsageError(f"unknown class assignment {class_assignment!r}; valid: {', '.join(CLASS_ASSIGNMENT_MODES)}")
    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode=class_assignment,
        seed=int(seed),
    )
    partitioner.dataset = ds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "classes will NOT be used": allowed, samples stay unassigned
        try:
            parts = _read_indices(partitioner, num_partitions)
        except ValueError as err:
            raise UsageError(
                f"pathological split with {k} classes per partition over {num_partitions} partitions "
                f"is impossible ({err.args[0].split('. ')[0]}); use fewer partitions or classes per partition"
            ) from None
    small = [i for i, p in enumerate(parts) if len(p) < min_size]
    if small:
        raise UsageError(
            f"pathological split leaves partition {small[0]} with {len(parts[small[0]])} samples, below "
            f"the minimum size {min_size}; lower --min-size, use fewer partitions, or more classes per partition"
        )
    return parts
