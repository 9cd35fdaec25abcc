"""Partitioning on the digits labels: skew follows alpha, every sample placed once, seeds matter.

Thresholds come from measurements on digits' 1,437 training labels, 10 clients,
seeds 0-9 (mean max-class share per client: alpha 0.1 -> 0.47..0.68, alpha 100
-> 0.113..0.119; mean normalized label entropy: 0.37..0.52 and 0.998).
"""

import numpy as np
import pytest
import torch

from fedalign.datasets import load_dataset
from fedalign.errors import UsageError
from fedalign.partition_report import class_histogram, skew_stats
from fedalign.partitioning import PARTITIONERS, partition

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_dataset("digits").train_labels


def _stats(labels, parts):
    return skew_stats(class_histogram(labels, parts, 10))


def _assert_exactly_once(parts, n):
    merged = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(merged, np.arange(n))


def test_partitioners_listed():
    assert PARTITIONERS == ("iid", "dirichlet", "pathological")


def test_dirichlet_alpha_controls_skew(labels):
    skewed = [_stats(labels, partition(labels, 10, "dirichlet", alpha=0.1, seed=s)) for s in range(5)]
    uniform = [_stats(labels, partition(labels, 10, "dirichlet", alpha=100, seed=s)) for s in range(5)]
    share_01 = np.mean([s["mean_max_class_share"] for s in skewed])
    share_100 = np.mean([s["mean_max_class_share"] for s in uniform])
    assert share_01 > 0.5, share_01  # measured 0.598
    assert share_100 < 0.15, share_100  # measured 0.116; 0.1 would be perfectly uniform
    assert np.mean([s["mean_normalized_entropy"] for s in skewed]) < 0.55  # measured 0.437
    assert min(s["mean_normalized_entropy"] for s in uniform) > 0.98  # measured 0.998
    assert all(s["mean_max_class_share"] < 0.13 for s in uniform)


def test_dirichlet_skew_decreases_with_alpha(labels):
    shares = [
        np.mean([_stats(labels, partition(labels, 10, alpha=a, seed=s))["mean_max_class_share"] for s in range(3)])
        for a in (0.05, 0.3, 1.0, 100)
    ]
    assert shares == sorted(shares, reverse=True), shares


def test_dirichlet_places_every_sample_once_and_respects_min_size(labels):
    parts = partition(labels, 10, "dirichlet", alpha=0.1, min_partition_size=20, seed=0)
    assert len(parts) == 10
    _assert_exactly_once(parts, len(labels))
    assert min(len(p) for p in parts) >= 20
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("scheme", ["dirichlet", "pathological"])
def test_same_indices_as_flwr_load_partition(labels, scheme):
    """Equal to calling flwr-datasets' partitioner and reading load_partition(i) (guards the fast path)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    if scheme == "dirichlet":
        p = DirichletPartitioner(10, partition_by="label", alpha=0.3, min_partition_size=10, self_balancing=False, seed=7)
    else:
        p = PathologicalPartitioner(10, partition_by="label", num_classes_per_partition=3,
                                    class_assignment_mode="random", seed=7)
    p.dataset = Dataset.from_dict({"label": labels.tolist(), "idx": list(range(len(labels)))})
    expected = [np.asarray(p.load_partition(i)["idx"][:]) for i in range(10)]
    ours = partition(labels, 10, scheme, alpha=0.3, seed=7, classes_per_partition=3, class_assignment="random")
    for a, b in zip(ours, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scheme", ["dirichlet", "iid", "pathological"])
def test_seed_reproducible_and_seed_dependent(labels, scheme):
    kw = dict(scheme=scheme, alpha=0.5, classes_per_partition=2)
    a, b = partition(labels, 10, seed=3, **kw), partition(labels, 10, seed=3, **kw)
    c = partition(labels, 10, seed=4, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_balanced(labels):
    parts = partition(labels, 10, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(labels)
    _assert_exactly_once(parts, len(labels))
    stats = _stats(labels, parts)
    assert stats["mean_max_class_share"] < 0.2  # measured 0.140
    assert stats["mean_normalized_entropy"] > 0.97  # measured 0.989


def test_iid_shuffles_sorted_labels():
    """Label arrays sorted by class (image folders) still give mixed IID shards."""
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "iid", min_partition_size=0, seed=0)
    assert all(len(np.unique(labels[p])) >= 8 for p in parts)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_exactly_k_classes(labels, k):
    parts = partition(labels, 10, "pathological", classes_per_partition=k, seed=0)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * 10
    for i, p in enumerate(parts):  # deterministic assignment: client i has classes i .. i+k-1 (mod 10)
        assert set(np.unique(labels[p])) == {(i + j) % 10 for j in range(k)}
    _assert_exactly_once(parts, len(labels))  # 10 clients x k consecutive classes cover every class


def test_pathological_random_assignment_at_most_once(labels):
    parts = partition(labels, 6, "pathological", classes_per_partition=3, class_assignment="random", seed=1)
    assert [len(np.unique(labels[p])) for p in parts] == [3] * 6
    merged = np.concatenate(parts)
    assert len(np.unique(merged)) == len(merged) <= len(labels)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(num_partitions=2000), "only 1437 samples"),
        (dict(num_partitions=0), "at least 1"),
        (dict(alpha=0), "alpha=0"),
        (dict(alpha=-1.0), "must be > 0"),
        (dict(min_partition_size=200), "lower the minimum size to <= 143"),
        (dict(alpha=0.01, min_partition_size=100), "10 retries"),
        (dict(scheme="shards"), "valid schemes: iid, dirichlet, pathological"),
        (dict(scheme="pathological", classes_per_partition=11), "use 1..10"),
        (dict(scheme="pathological", class_assignment="roundrobin"), "unknown class assignment"),
        (dict(scheme="pathological", classes_per_partition=1, min_partition_size=140), "139 samples, below the minimum size 140"),
    ],
)
def test_bad_input_raises_usage_error(labels, kwargs, fragment):
    kwargs = {"num_partitions": 10, **kwargs}
    n = kwargs.pop("num_partitions")
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        partition(labels, n, **kwargs)


def test_report_table_and_csv(labels):
    from fedalign.partition_report import csv_text, markdown_table

    parts = partition(labels, 3, "iid", seed=0)
    hist = class_histogram(labels, parts, 10)
    assert hist.shape == (3, 10) and hist.sum() == len(labels)
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels))
    table = markdown_table(hist, [str(c) for c in range(10)])
    assert table.splitlines()[-1].startswith("|  total | 1437 |")
    assert csv_text(hist, [str(c) for c in range(10)]).splitlines()[1].startswith("0,479,")


def test_partitions_disk_cache_keys_on_labels_and_settings_and_survives_a_bad_file(tmp_path, monkeypatch):
    from fedalign.datasets import cache

    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path))
    labels = np.repeat(np.arange(4), 25)
    calls = []

    def compute(seed):
        def run():
            calls.append(seed)
            return partition(labels, 5, scheme="dirichlet", alpha=0.5, min_partition_size=1, seed=seed)
        return run

    first = cache.cached_partitions(labels, 5, {"seed": 0}, compute(0))
    again = cache.cached_partitions(labels, 5, {"seed": 0}, compute(0))
    assert calls == [0]  # the second call read the file
    assert [p.tolist() for p in again] == [p.tolist() for p in first]
    other = cache.cached_partitions(labels, 5, {"seed": 1}, compute(1))
    assert calls == [0, 1] and [p.tolist() for p in other] != [p.tolist() for p in first]
    cache.cached_partitions(labels[::-1].copy(), 5, {"seed": 0}, compute(0))
    assert calls == [0, 1, 0]  # other labels, other entry
    for damage, expected_calls in ((b"not an npz", 4), (b"PK\x03\x04truncated zip", 5)):
        for f in tmp_path.glob("partitions-*.npz"):
            f.write_bytes(damage)
        again = cache.cached_partitions(labels, 5, {"seed": 0}, compute(0))
        assert [p.tolist() for p in again] == [p.tolist() for p in first]
        assert len(calls) == expected_calls  # unreadable entry: recomputed, not trusted
