"""The federated run configuration: one table of keys, defaults and types.

`DEFAULTS` is the single source of truth. pyproject.toml's
`[tool.flwr.app.config]` repeats it because Flower reads defaults from there
(a test keeps the two identical); the sweep runner and the ServerApp/ClientApp
all resolve a run's config through `resolve()`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedalign.errors import UsageError
from fedalign.safe_yaml import brief

STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedpfn", "fedpnu", "fedavg-wm")
BASE_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", "scaffold")
PARTITIONERS = ("iid", "dirichlet", "pathological")
OPTIMIZERS = ("sgd", "adam", "adamw")

DEFAULTS: dict[str, object] = {
    # what is trained
    "dataset": "digits",
    "data-dir": "",
    "train-size": 0,  # 0 = the whole training split
    "test-size": 0,  # 0 = the whole test split
    "model": "mlp",
    "model-args": "",  # "width=128,depth=2"
    # how the data is split over clients
    "partitioner": "dirichlet",
    "alpha": 0.5,
    "min-partition-size": 10,
    "classes-per-partition": 2,
    "partition-seed": 0,
    # strategy
    "strategy": "fedpfn",
    "base-strategy": "fedavg",
    "rho": 0.4,
    "granularity": "weight",
    "mask-seed": 0,
    "resample-every": 0,  # fedpnu only: >0 = a fresh seeded mask every k rounds, alternating within it
    "mask-include": "",  # comma-separated fnmatch patterns: only these parameters are masked ("" = all)
    "mask-exclude": "",  # comma-separated fnmatch patterns kept fully trainable
    "transport": "compact",  # subspace strategies: "compact" sends trainable coordinates only; "full"
    "proximal-mu": 0.0,  # used by fedprox (0.01 when left at 0)
    "server-lr": 0.01,  # eta of FedAdam/FedYogi
    "server-momentum": 0.9,  # of FedAvgM
    "scaffold-server-lr": 1.0,  # lr_g of SCAFFOLD (1 = FedAvg's average of the client models)
    # rounds and participation
    "num-rounds": 5,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,  # federated evaluation; the server evaluates centrally anyway
    "min-nodes": 2,
    "node-wait-timeout": 60.0,  # seconds to wait for min-nodes before failing
    "round-timeout": 600.0,  # seconds to wait for replies in one round
    "max-failed-rounds": 3,  # stop after this many consecutive rounds without one good reply
    # local training
    "local-epochs": 1,
    "batch-size": 32,
    "lr": 0.05,
    "lr-decay": 0.99,  # per round
    "momentum": 0.9,
    "weight-decay": 5e-4,
    "optimizer": "sgd",
    "seed": 0,  # model initialization and client data order
    "client-test-eval": True,  # clients report their trained model's test accuracy (fusion gap)
    "client-eval-size": 0,  # >0: clients evaluate on a fixed stratified subset of this many test samples
    "device": "auto",  # auto | cpu | cuda | cuda:N (auto: the GPU when this process sees one)
    # outputs
    "output-dir": "outputs/flwr-run",
    "save-round-models": False,  # also write round_<r>.pt (global model after each round)
}


def _coerce(key: str, value, default):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise UsageError(
        f"run config key {key!r} must be {type(default).__name__}, got {brief(value)}; "
        f"default is {default!r}"
    )


def resolve(overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Defaults updated by `overrides`; unknown keys and wrong types are errors."""
    config = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise UsageError(
                f"unknown run config key {brief(key)}; valid keys: {', '.join(sorted(DEFAULTS))}"
            )
        config[key] = _coerce(key, value, DEFAULTS[key])
    validate(config)
    return config


# Numeric ranges: key -> (low, low inclusive, high, high inclusive, example); None = unbounded.
RANGES: dict[str, tuple] = {
    "train-size": (0, True, None, False, "0 = the whole split"),
    "test-size": (0, True, None, False, "0 = the whole split"),
    "alpha": (0, False, None, False, "0.1 for strong skew, 100 for near-IID"),
    "min-partition-size": (0, True, None, False, "10"),
    "classes-per-partition": (1, True, None, False, "2"),
    "partition-seed": (0, True, None, False, "0"),
    "mask-seed": (0, True, None, False, "0"),
    "resample-every": (0, True, None, False, "0 = one mask for the whole run"),
    "proximal-mu": (0, True, None, False, "0.01"),
    "server-lr": (0, False, None, False, "0.01"),
    "server-momentum": (0, True, 1, False, "0.9"),
    "num-rounds": (1, True, None, False, "10"),
    "fraction-train": (0, False, 1, True, "1.0"),
    "fraction-evaluate": (0, True, 1, True, "0.0"),
    "min-nodes": (1, True, None, False, "2"),
    "node-wait-timeout": (0, False, None, False, "60"),
    "round-timeout": (0, False, None, False, "600"),
    "max-failed-rounds": (1, True, None, False, "3"),
    "local-epochs": (1, True, None, False, "1"),
    "batch-size": (1, True, None, False, "32"),
    "lr": (0, False, None, False, "0.05"),
    "lr-decay": (0, False, 1, True, "0.99"),
    "momentum": (0, True, 1, False, "0.9"),
    "weight-decay": (0, True, None, False, "5e-4"),
    "seed": (0, True, None, False, "0"),
}


def range_problem(key: str, value, rule: tuple) -> str | None:
    """Why `value` is outside `rule` (a RANGES entry), or None; NaN and infinities never pass."""
    low, low_in, high, high_in, example = rule
    v = float(value)
    ok = v == v and abs(v) != float("inf")
    ok = ok and (low is None or (v >= low if low_in else v > low))
    ok = ok and (high is None or (v <= high if high_in else v < high))
    if ok:
        return None
    lo = "" if low is None else ("[" if low_in else "(") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + ("]" if high_in else ")")
    if high is None:
        want = f">= {low:g}" if low_in else f"> {low:g}"
    else:
        want = f"in {lo}, {hi}"
    return f"{key}={value!r} must be {want} (e.g. {example})"


def validate(config: Mapping[str, object]) -> None:
    """Checks that need more than a type: names, ranges."""
    from fedalign.datasets import DATASET_NAMES
    from fedalign.masks import GRANULARITIES, check_rho
    from fedalign.models import MODEL_NAMES

    names = {
        "strategy": STRATEGIES, "base-strategy": BASE_STRATEGIES, "partitioner": PARTITIONERS,
        "dataset": DATASET_NAMES, "model": MODEL_NAMES, "granularity": GRANULARITIES,
        "optimizer": OPTIMIZERS,
    }  # fmt: skip
    for key, valid in names.items():
        if config[key] not in valid:
            label = "valid strategies" if key == "strategy" else "valid"
            raise UsageError(f"unknown {key} {brief(config[key])}; {label}: {', '.join(valid)}")
    for key, rule in RANGES.items():
        problem = range_problem(key, config[key], rule)
        if problem:
            raise UsageError(problem)
    check_rho(config["rho"])
    if int(config["resample-every"]) > 0 and config["strategy"] != "fedpnu":
        raise UsageError(
            f"resample-every={config['resample-every']} does not apply to strategy "
            f"{config['strategy']!r}: fedpfn trains one fixed subspace; use strategy fedpnu "
            "(alternate within each resampled mask) or resample-every 0"
        )
    if not str(config["output-dir"]).strip():
        raise UsageError("output-dir is empty; name a directory, e.g. output-dir='outputs/flwr-run'")
    parse_model_args(str(config["model-args"]))
    if config["transport"] not in ("compact", "full"):
        raise UsageError(f"unknown transport {config['transport']!r}; valid: compact, full")
    if int(config["client-eval-size"]) < 0:
        raise UsageError(f"client-eval-size={config['client-eval-size']} must be >= 0 (0 = the whole test split)")
    from fedalign.device import check_device_name

    check_device_name(config["device"])


def parse_model_args(text: str) -> dict[str, object]:
    """'width=128,depth=2,norm=group' -> {'width': 128, 'depth': 2, 'norm': 'group'}."""
    out: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise UsageError(f"model-args item {item!r} is not key=value (e.g. 'width=128,depth=2')")
        key, raw = (s.strip() for s in item.split("=", 1))
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = raw
    return out
