"""The LMC study spec: one table of keys, defaults and checks.

A spec is a YAML mapping (or CLI flags) over `DEFAULTS`; keys use the
run-config spelling (`train-size`, `data-dir`), underscores are accepted too.
Unknown keys are named in the error, so a typo never silently falls back to
a default. `sweep` maps model arguments to lists (e.g. width: [1, 2, 4]); the
study runs every combination ("variant") and every method for every seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path

from fedalign.config import RANGES as RUN_RANGES
from fedalign.config import range_problem
from fedalign.device import check_device_name
from fedalign.errors import UsageError, check
from fedalign.masks import GRANULARITIES, check_rho
from fedalign.models import MODEL_NAMES
from fedalign.safe_yaml import brief

METHODS = ("vanilla", "pfn", "prune")
SPLITS = ("order", "dirichlet")
OPTIMIZERS = ("sgd", "adam", "adamw")
RANGES = {k: RUN_RANGES[k] for k in ("alpha", "lr", "momentum", "weight-decay")}

DEFAULTS: dict[str, object] = {
    "name": "lmc",
    # data
    "dataset": "digits",
    "data-dir": "",
    "download": False,
    "train-size": 0,  # 0 = whole training split
    "test-size": 0,  # 0 = whole test split
    "data-seed": 0,  # which stratified subset; the same for every study seed
    # model and sweep
    "model": "mlp",
    "model-args": {},
    "sweep": {},  # model argument -> list of values; every combination is run
    # how the K models differ
    "seeds": [0, 1, 2],
    "num-models": 2,
    "split": "order",  # order: same data, different data orders; dirichlet: label-skewed parts
    "alpha": 0.5,
    "min-partition-size": 10,
    # methods
    "methods": ["vanilla", "pfn"],
    "rho": [0.4],  # TNA-PFN: fraction of entries FIXED at init
    "prune-rho": [0.4],  # random pruning: fraction of entries set to 0 and kept there
    "granularity": "weight",
    "mask-include": [],
    "mask-exclude": [],
    "match": False,  # also report each method after Git Re-Basin weight matching
    "match-max-iter": 100,
    # training (SPEC §7)
    "epochs": 8,
    "lr": 0.05,
    "momentum": 0.9,
    "weight-decay": 5e-4,
    "batch-size": 64,
    "optimizer": "sgd",
    # evaluation
    "points": 11,
    "bn-reestimate": "auto",  # auto = iff the model has BatchNorm
    "bn-batches": 20,
    "eval-batch-size": 100,  # small batches evaluate fastest on CPU
    "threads": 0,  # torch.set_num_threads; 0 = leave torch's default
    "device": "auto",  # auto | cpu | cuda | cuda:N (fedalign.device); a GPU's numbers differ from a CPU's
}

# Keys that do not change any number a cell computes.
COSMETIC = ("name", "download", "threads")
# Keys that pick WHICH cells run; each cell records its own value (seed, method, rho, model arguments).
AXES = ("seeds", "methods", "rho", "prune-rho", "model-args", "sweep")
# Every other key changes what a cell computes: a finished cell is reused only if they all match
# (and its model arguments, stored as its variant). A key added to DEFAULTS joins automatically.
CELL_KEYS = tuple(k for k in DEFAULTS if k not in COSMETIC + AXES)


def _type_error(key: str, value, want: str):
    return UsageError(f"spec key {key!r} must be {want}, got {brief(value)}")


def _int(key, value, low=None):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(key, value, "an integer")
    check(low is None or value >= low, f"spec key {key!r} must be >= {low}, got {value}")
    return value


def _float(key, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _type_error(key, value, "a finite number")
    return float(value)


def _list(key, value):
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, value, "a list")
    return list(value)


def _bool(key, value):
    if not isinstance(value, bool):
        raise _type_error(key, value, "true or false")
    return value


def _str(key, value):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(key, value, "a string")
    return value


def _model_args(key, value) -> dict:
    if isinstance(value, str):
        from fedalign.config import parse_model_args

        return parse_model_args(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _type_error(key, value, "a mapping (e.g. {width: 2})")
    return dict(value)


def normalize_keys(raw: Mapping[str, object], where: str = "spec") -> dict[str, object]:
    """Underscores -> dashes; unknown keys are named in a UsageError."""
    check(isinstance(raw, Mapping), f"{where} must be a mapping of keys to values")
    out = {str(k).replace("_", "-"): v for k, v in raw.items()}
    unknown = sorted(k for k in out if k not in DEFAULTS)
    if unknown:
        raise UsageError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(map(brief, unknown[:5]))}; "
            f"valid keys: {', '.join(DEFAULTS)}"
        )
    return out


def resolve(overrides: Mapping[str, object] | None = None, where: str = "spec") -> dict[str, object]:
    """DEFAULTS updated by `overrides`, type-checked and validated."""
    cfg = dict(DEFAULTS)
    cfg.update(normalize_keys(overrides or {}, where))
    c: dict[str, object] = {}
    for key in ("name", "dataset", "data-dir", "model", "split", "granularity", "optimizer", "device"):
        c[key] = _str(key, cfg[key])
    for key in ("download", "match"):
        c[key] = _bool(key, cfg[key])
    for key, low in (("train-size", 0), ("test-size", 0), ("data-seed", 0), ("num-models", 2),
                     ("min-partition-size", 1), ("match-max-iter", 1), ("epochs", 1),
                     ("batch-size", 1), ("points", None), ("bn-batches", 1),
                     ("eval-batch-size", 1), ("threads", 0)):  # fmt: skip
        c[key] = _int(key, cfg[key], low)
    for key in ("alpha", "lr", "momentum", "weight-decay"):
        c[key] = _float(key, cfg[key])
    check(
        c["points"] >= 3,
        f"points={c['points']}: need at least 3 interpolation points "
        "(11 recommended; odd, so that alpha = 0.5 is one of them)",
    )
    c["model-args"] = _model_args("model-args", cfg["model-args"])
    c["seeds"] = [_int("seeds", s, 0) for s in _list("seeds", cfg["seeds"])]
    c["methods"] = [_str("methods", m) for m in _list("methods", cfg["methods"])]
    c["mask-include"] = [_str("mask-include", p) for p in _list("mask-include", cfg["mask-include"])]
    c["mask-exclude"] = [_str("mask-exclude", p) for p in _list("mask-exclude", cfg["mask-exclude"])]
    for key in ("rho", "prune-rho"):
        values = _list(key, cfg[key])
        check(
            len(values) > 0,
            f"spec key {key!r} is an empty list; give at least one rho (e.g. [0.4]) "
            f"or drop {'pfn' if key == 'rho' else 'prune'} from methods",
        )
        c[key] = [check_rho(_float(key, v)) for v in values]
    bn = cfg["bn-reestimate"]
    check(bn in ("auto", True, False), f"spec key 'bn-reestimate' must be auto, true or false, got {bn!r}")
    c["bn-reestimate"] = bn
    sweep = cfg["sweep"] or {}
    check(isinstance(sweep, Mapping), f"spec key 'sweep' must map model arguments to lists, got {sweep!r}")
    c["sweep"] = {}
    for arg, values in sweep.items():
        values = _list(f"sweep.{arg}", values)
        check(len(values) > 0, f"sweep.{arg} is an empty list; give at least one value")
        c["sweep"][str(arg)] = values
    _validate(c)
    return c


def _validate(c: Mapping[str, object]) -> None:
    check_device_name(c["device"])
    check(c["model"] in MODEL_NAMES, f"unknown model {c['model']!r}; valid models: {', '.join(MODEL_NAMES)}")
    check(c["split"] in SPLITS, f"unknown split {c['split']!r}; choose one of {', '.join(SPLITS)}")
    check(
        c["granularity"] in GRANULARITIES,
        f"unknown granularity {c['granularity']!r}; choose one of {', '.join(GRANULARITIES)}",
    )
    check(c["optimizer"] in OPTIMIZERS, f"unknown optimizer {c['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    bad = [m for m in c["methods"] if m not in METHODS]
    check(not bad, f"unknown method(s) {', '.join(map(repr, bad))}; choose from {', '.join(METHODS)}")
    check(len(c["methods"]) > 0, "methods is empty; choose from " + ", ".join(METHODS))
    check(len(c["seeds"]) > 0, "seeds is empty; give at least one seed (3 for mean ± std)")
    check(len(set(c["seeds"])) == len(c["seeds"]), f"seeds repeat: {c['seeds']}")
    for key in ("alpha", "lr", "momentum", "weight-decay"):
        problem = range_problem(key, c[key], RANGES[key])
        check(problem is None, f"spec key {problem}")
    for arg in c["sweep"]:
        check(arg not in c["model-args"], f"model argument {arg!r} is both in model-args and sweep; keep one")
    check(
        bool(c["data-dir"]) or c["dataset"] == "digits",
        f"data set {c['dataset']!r} needs data-dir (e.g. --data-dir ../shared/data/cifar10)",
    )


def load_spec(path: str | Path) -> dict[str, object]:
    """Read a YAML spec file (keys as in DEFAULTS); not yet resolved."""
    from fedalign.safe_yaml import load_yaml_mapping

    return normalize_keys(load_yaml_mapping(path, "spec file"), f"spec file {path}")


def variants(c: Mapping[str, object]) -> list[dict[str, object]]:
    """Model arguments of every sweep combination (one empty sweep = one variant)."""
    names = list(c["sweep"])
    combos = itertools.product(*(c["sweep"][n] for n in names)) if names else [()]
    return [{**c["model-args"], **dict(zip(names, combo))} for combo in combos]


def method_list(c: Mapping[str, object]) -> list[tuple[str, float]]:
    """(method, rho) pairs in table order; vanilla has rho 0."""
    out: list[tuple[str, float]] = []
    for m in c["methods"]:
        if m == "vanilla":
            out.append(("vanilla", 0.0))
        elif m == "pfn":
            out += [("pfn", r) for r in c["rho"]]
        else:
            out += [("prune", r) for r in c["prune-rho"]]
    return out


def method_label(method: str, rho: float) -> str:
    return "vanilla" if method == "vanilla" else f"{'TNA-PFN' if method == 'pfn' else 'prune'} rho={rho:g}"


def variant_label(c: Mapping[str, object], variant: Mapping[str, object]) -> str:
    """Only the swept arguments, e.g. 'width=2,depth=4' ('' without a sweep)."""
    return ",".join(f"{k}={variant[k]}" for k in c["sweep"])
