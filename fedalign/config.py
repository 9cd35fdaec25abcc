"""The federated run configuration: one table of keys, defaults and types.

`DEFAULTS` is the single source of truth. pyproject.toml's
`[tool.flwr.app.config]` repeats it because Flower reads defaults from there
(a test keeps the two identical); the sweep runner and the ServerApp/ClientApp
all resolve a run's config through `resolve()`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedalign.errors import UsageError

STRATEGIES = ("fedavg", "fedprox", "fedpfn", "fedpnu", "fedavg-wm")
BASE_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox")
PARTITIONERS = ("iid", "dirichlet", "pathological")

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
    "resample-every": 0,  # >0: a fresh seeded mask every k rounds
    "mask-exclude": "",  # comma-separated fnmatch patterns kept fully trainable
    "proximal-mu": 0.0,  # used by fedprox (0.01 when left at 0)
    "server-lr": 0.01,  # eta of FedAdam/FedYogi
    "server-momentum": 0.9,  # of FedAvgM
    # rounds and participation
    "num-rounds": 5,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,  # federated evaluation; the server evaluates centrally anyway
    "min-nodes": 2,
    "node-wait-timeout": 60.0,  # seconds to wait for min-nodes before failing
    "round-timeout": 600.0,  # seconds to wait for replies in one round
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
        f"run config key {key!r} must be {type(default).__name__}, got {value!r}; "
        f"default is {default!r}"
    )


def resolve(overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Defaults updated by `overrides`; unknown keys and wrong types are errors."""
    config = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise UsageError(
                f"unknown run config key {key!r}; valid keys: {', '.join(sorted(DEFAULTS))}"
            )
        config[key] = _coerce(key, value, DEFAULTS[key])
    validate(config)
    return config


def validate(config: Mapping[str, object]) -> None:
    """Checks that need more than a type: names, ranges."""
    from fedalign.masks import check_rho

    if config["strategy"] not in STRATEGIES:
        raise UsageError(
            f"unknown strategy {config['strategy']!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if config["base-strategy"] not in BASE_STRATEGIES:
        raise UsageError(
            f"unknown base-strategy {config['base-strategy']!r}; "
            f"valid: {', '.join(BASE_STRATEGIES)}"
        )
    if config["partitioner"] not in PARTITIONERS:
        raise UsageError(
            f"unknown partitioner {config['partitioner']!r}; valid: {', '.join(PARTITIONERS)}"
        )
    if not float(config["alpha"]) > 0:
        raise UsageError(f"alpha={config['alpha']} must be > 0 (e.g. 0.1 for strong skew, 100 for near-IID)")
    check_rho(config["rho"])
    if not 0 <= float(config["fraction-evaluate"]) <= 1:
        raise UsageError(f"fraction-evaluate={config['fraction-evaluate']} must be in [0, 1]")
    if not 0 < float(config["fraction-train"]) <= 1:
        raise UsageError(f"fraction-train={config['fraction-train']} must be in (0, 1]")
    if int(config["client-eval-size"]) < 0:
        raise UsageError(f"client-eval-size={config['client-eval-size']} must be >= 0 (0 = the whole test split)")
    from fedalign.device import check_device_name

    check_device_name(config["device"])
    if int(config["num-rounds"]) < 1:
        raise UsageError(f"num-rounds={config['num-rounds']} must be >= 1")


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
