"""Checks that run before the first cell, round or file: refuse bad input while nothing is written.

A spec can parse and still be unusable: the data directory is empty or
corrupt, a model argument is misspelled, there are more clients than
samples, or each client asks for more CPUs than the machine has (Ray then
waits forever for an actor that can never start). Each check here does the
cheap part of the real work (read the data, build the model, split the
labels, count the CPUs) and raises a one-line `UsageError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedalign.errors import UsageError


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` is, or can become, a writable directory; nothing is created here."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory; name a directory (new or existing)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, so no directory can be made there")
            if not os.access(parent if not path.exists() else path, os.W_OK):
                raise UsageError(f"{flag} {path} is not writable; choose a directory you can write to")
            break
    return path


def available_cpus() -> float:
    """CPUs a simulation can use: the joined Ray cluster's when RAY_ADDRESS is set, else this machine's."""
    if os.environ.get("RAY_ADDRESS"):
        try:
            import ray

            if not ray.is_initialized():
                ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
            return float(ray.cluster_resources().get("CPU", 0))
        except Exception as err:  # noqa: BLE001 - any failure to reach the cluster is the user's to fix
            raise UsageError(f"cannot reach the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} ({err})") from None
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return float(os.cpu_count() or 1)


def check_client_cpus(client_cpus: float, key: str = "client-cpus") -> None:
    """One client must fit on the machine, or Ray's actor pool stays empty and the run hangs."""
    have = available_cpus()
    if client_cpus > have:
        raise UsageError(
            f"{key}={client_cpus:g} but only {have:g} CPU(s) are available, so no client could ever start; "
            f"use {key} <= {have:g}"
        )


def check_model(name: str, input_shape, num_classes: int, variants: Iterable[Mapping[str, object]]) -> None:
    """Every model variant builds (unknown or mistyped arguments are named by `build_model`)."""
    from fedalign.models import build_model

    seen = set()
    for args in variants:
        key = repr(sorted(args.items()))
        if key not in seen:
            seen.add(key)
            build_model(name, input_shape, num_classes, seed=0, **dict(args))


def data_shape(dataset: str, data_dir: str, download: bool = False):
    """(input shape, classes, training labels) of a data set: reads (and so checks) its files."""
    import numpy as np

    from fedalign.datasets import load_raw

    raw, _ = load_raw(dataset, data_dir or None, download)
    if len(raw.train_y) == 0 or len(raw.test_y) == 0:
        raise UsageError(f"data set {dataset!r} in {data_dir} has no training or no test samples")
    return tuple(raw.train_x.shape[1:]), len(raw.classes), np.asarray(raw.train_y)


def check_sweep(spec: Mapping[str, object]) -> None:
    """Data, model, partitions and resources of a sweep spec, before any cell starts."""
    from fedalign.config import parse_model_args
    from fedalign.datasets import stratified_subset
    from fedalign.partitioning import partition

    check_client_cpus(float(spec["client-cpus"]))
    shape, classes, labels = data_shape(str(spec["dataset"]), str(spec["data-dir"]))
    check_model(str(spec["model"]), shape, classes, [parse_model_args(str(spec["model-args"]))])
    if int(spec["train-size"]):
        labels = labels[stratified_subset(labels, int(spec["train-size"]), int(spec["partition-seed"]), "train-size")]
    for alpha in spec["alphas"]:
        try:
            partition(
                labels, int(spec["clients"]), scheme=str(spec["partitioner"]), alpha=float(alpha),
                min_partition_size=int(spec["min-partition-size"]), seed=int(spec["partition-seed"]),
                classes_per_partition=int(spec["classes-per-partition"]),
            )  # fmt: skip
        except UsageError as err:
            raise UsageError(f"clients={spec['clients']} at alpha={alpha:g}: {err}") from None


def check_run_config(config: Mapping[str, object]) -> None:
    """A resolved federated run config: output directory, data, model and the client split."""
    from fedalign.config import parse_model_args
    from fedalign.datasets import stratified_subset

    check_output_dir(str(config["output-dir"]), "output-dir")
    shape, classes, labels = data_shape(str(config["dataset"]), str(config["data-dir"]))
    check_model(str(config["model"]), shape, classes, [parse_model_args(str(config["model-args"]))])
    if int(config["train-size"]):
        stratified_subset(labels, int(config["train-size"]), int(config["partition-seed"]), "train-size")


def check_lmc(c: Mapping[str, object], out: str | os.PathLike) -> None:
    """An LMC study: output directory, data, every model variant, the Dirichlet split."""
    from fedalign.datasets import stratified_subset
    from fedalign.lmc_study.config import variants
    from fedalign.device import resolve_device
    from fedalign.partitioning import partition

    check_output_dir(out)
    resolve_device(str(c["device"]))  # device=cuda without a visible GPU: refused here, not in cell 1
    shape, classes, labels = data_shape(str(c["dataset"]), str(c["data-dir"]), bool(c["download"]))
    check_model(str(c["model"]), shape, classes, variants(c))
    for key, size in (("train-size", c["train-size"]),):
        if int(size):
            labels = labels[stratified_subset(labels, int(size), int(c["data-seed"]), key)]
    if c["split"] == "dirichlet":
        partition(labels, int(c["num-models"]), scheme="dirichlet", alpha=float(c["alpha"]),
                  min_partition_size=int(c["min-partition-size"]), seed=int(c["seeds"][0]))  # fmt: skip
