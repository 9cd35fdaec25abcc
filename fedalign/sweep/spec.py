"""The sweep spec: a YAML file -> a checked spec -> the list of cells (alpha x strategy x seed).

Every check runs here, before any simulation starts: unknown or misspelled
keys (with the closest valid key), missing keys, wrong types, alpha <= 0,
unknown strategies, unreadable YAML. Each cell's run config is built from the
spec and passed through `fedalign.config.resolve`, so what the sweep accepts
is exactly what a simulation accepts.

Top-level keys use the run-config spelling (dashes; underscores are accepted).
The sweep axes have their own names: `alphas`, `strategies`, `seeds`, and
`rounds`, `clients`, `participation` for num-rounds, the number of SuperNodes
and fraction-train.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedalign import config as run_config
from fedalign.errors import UsageError
from fedalign.safe_yaml import brief

REQUIRED = object()  # marks a key the spec must give

# Spec keys that are run-config keys under the same name; defaults come from fedalign.config.
PASSTHROUGH = (
    "dataset", "data-dir", "train-size", "test-size", "model", "partitioner",
    "min-partition-size", "classes-per-partition", "partition-seed", "local-epochs",
    "batch-size", "lr", "lr-decay", "momentum", "weight-decay", "optimizer", "rho",
    "client-test-eval", "client-eval-size",
)  # fmt: skip

# Spec-only keys (the sweep axes and how the sweep runs).
OWN_DEFAULTS: dict[str, object] = {
    "name": "",  # default: the spec file's stem; the default output dir is outputs/<name>
    "model-args": "",  # "width=64,depth=2" or a mapping {width: 64, depth: 2}
    "alphas": REQUIRED,
    "strategies": REQUIRED,
    "seeds": REQUIRED,
    "rounds": REQUIRED,
    "clients": REQUIRED,
    "participation": 1.0,  # fraction of clients sampled per round
    "target-accuracy": None,  # for the 'rounds to target' column
    "last-rounds": 5,  # final accuracy = mean over the last k rounds
    "client-cpus": 1.0,  # Ray CPUs per client: 1.0 on 2 cores = 2 clients in parallel
    "client-gpus": 0.0,  # Ray GPUs per client: 0.25 = four clients share one GPU
    "run-config": {},  # any other run-config key, for every cell
    "download": False,  # fetch a torchvision data set into data-dir once, before the first cell
}

# Keys that only affect how results are run or shown, not what a cell computes.
COSMETIC = ("name", "target-accuracy", "last-rounds", "client-cpus", "client-gpus", "download")

# Run-config keys a sweep sets itself (or under another name).
RENAMED = {
    "num-rounds": "rounds", "fraction-train": "participation", "alpha": "alphas",
    "seed": "seeds", "strategy": "strategies", "num-supernodes": "clients",
    "num-clients": "clients", "target": "target-accuracy",
}  # fmt: skip
CONTROLLED = ("alpha", "seed", "strategy", "num-rounds", "fraction-train", "output-dir", "model-args")

# Keys a strategy entry may set (the rest of a cell comes from the top level).
STRATEGY_KEYS = (
    "name", "strategy", "base-strategy", "rho", "granularity", "mask-seed", "resample-every",
    "mask-include", "mask-exclude", "proximal-mu", "server-lr", "server-momentum", "scaffold-server-lr",
)  # fmt: skip
SUBSPACE = ("fedpfn", "fedpnu")
DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10", "cifar100")  # what torchvision can fetch
# strategy-entry key -> (applies when, what to say otherwise)
_APPLIES = {
    "base-strategy": (lambda s: s["strategy"] in SUBSPACE, "only fedpfn/fedpnu wrap a base strategy"),
    "rho": (lambda s: s["strategy"] in SUBSPACE, "rho is the fixed fraction of fedpfn/fedpnu"),
    "granularity": (lambda s: s["strategy"] in SUBSPACE, "only fedpfn/fedpnu use a mask"),
    "mask-seed": (lambda s: s["strategy"] in SUBSPACE, "only fedpfn/fedpnu use a mask"),
    "resample-every": (lambda s: s["strategy"] == "fedpnu", "only fedpnu resamples its mask"),
    "mask-include": (lambda s: s["strategy"] in SUBSPACE, "only fedpfn/fedpnu use a mask"),
    "mask-exclude": (lambda s: s["strategy"] in SUBSPACE, "only fedpfn/fedpnu use a mask"),
    "proximal-mu": (
        lambda s: "fedprox" in (s["strategy"], s.get("base-strategy")),
        "proximal-mu applies to fedprox (or base-strategy fedprox)",
    ),
    "server-lr": (
        lambda s: s.get("base-strategy") in ("fedadam", "fedyogi"),
        "server-lr applies to base-strategy fedadam/fedyogi",
    ),
    "server-momentum": (
        lambda s: s.get("base-strategy") == "fedavgm",
        "server-momentum applies to base-strategy fedavgm",
    ),
    "scaffold-server-lr": (
        lambda s: "scaffold" in (s["strategy"], s.get("base-strategy")),
        "scaffold-server-lr applies to scaffold (or base-strategy scaffold)",
    ),
}

EXAMPLES = {
    "dataset": "dataset: digits",
    "model": "model: mlp",
    "alphas": "alphas: [0.1, 0.5, 100]",
    "strategies": "strategies: [fedavg, fedpfn, fedpnu]",
    "seeds": "seeds: [0, 1, 2]",
    "rounds": "rounds: 20",
    "clients": "clients: 10",
}


def _defaults() -> dict[str, object]:
    out = {k: run_config.DEFAULTS[k] for k in PASSTHROUGH}
    out.update(OWN_DEFAULTS)
    out["dataset"] = REQUIRED
    out["model"] = REQUIRED
    return out


SPEC_KEYS: tuple[str, ...] = tuple(_defaults())


# ----------------------------------------------------------------- types
class _Checker:
    """Type checks whose errors name the spec and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, message: str) -> UsageError:
        return UsageError(f"{self.where}: {message}")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.fail(message)

    def type_error(self, key: str, value, want: str) -> UsageError:
        return self.fail(f"key {key!r} must be {want}, got {brief(value)}")

    def int(self, key: str, value, low: int | None = None) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.type_error(key, value, "an integer")
        self.check(low is None or value >= low, f"key {key!r} must be >= {low}, got {value}")
        return value

    def float(self, key: str, value) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.type_error(key, value, "a number")
        return float(value)

    def str(self, key: str, value) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.type_error(key, value, "a string")
        return value

    def bool(self, key: str, value) -> bool:
        if not isinstance(value, bool):
            raise self.type_error(key, value, "true or false")
        return value

    def list(self, key: str, value) -> list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise self.type_error(key, value, "a list")
        self.check(len(value) > 0, f"key {key!r} is an empty list; e.g. {EXAMPLES.get(key, key + ': [...]')}")
        return value


def _closest(key: str, valid) -> str:
    if key in RENAMED and RENAMED[key] in valid:
        return f"; the sweep calls it {RENAMED[key]!r}"
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _normalize(raw, valid, ck: _Checker, what: str) -> dict[str, object]:
    """Underscores -> dashes; an unknown key is an error naming the closest valid one."""
    ck.check(isinstance(raw, Mapping), f"{what} must be a mapping of keys to values, got {brief(raw)}")
    out: dict[str, object] = {}
    for key, value in raw.items():
        norm = str(key).replace("_", "-")
        if norm not in valid:
            raise ck.fail(f"unknown key {brief(key)} in {what}{_closest(norm[:100], valid)}")
        out[norm] = value
    return out


# ------------------------------------------------------------ strategies
def _parse_strategy(entry, ck: _Checker, index: int) -> dict[str, object]:
    """'fedpfn', 'fedpfn+fedadam' or {name, strategy, base-strategy, rho, ...} -> settings."""
    where = f"strategies[{index}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    s = _normalize(entry, STRATEGY_KEYS, ck, where)
    name = ck.str(f"{where}.name", s.get("name", ""))
    if "strategy" not in s:
        ck.check(bool(name), f"{where} needs 'strategy' (one of {', '.join(run_config.STRATEGIES)})")
        head, _, base = name.partition("+")
        s["strategy"] = head
        if base:
            s.setdefault("base-strategy", base)
    for key in ("strategy", "base-strategy", "granularity", "mask-include", "mask-exclude"):
        if key in s:
            s[key] = ck.str(f"{where}.{key}", s[key])
    if s["strategy"] not in run_config.STRATEGIES:
        close = difflib.get_close_matches(s["strategy"], run_config.STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ck.fail(
            f"unknown strategy {s['strategy']!r} in {where}{hint}; valid strategies: "
            f"{', '.join(run_config.STRATEGIES)}, and fedpfn/fedpnu over a base strategy, "
            f"e.g. fedpfn+fedadam (bases: {', '.join(run_config.BASE_STRATEGIES)})"
        )
    base = s.get("base-strategy")
    if base is not None and base not in run_config.BASE_STRATEGIES:
        raise ck.fail(
            f"unknown base-strategy {base!r} in {where}; valid: {', '.join(run_config.BASE_STRATEGIES)}"
        )
    for key in ("rho", "proximal-mu", "server-lr", "server-momentum"):
        if key in s:
            s[key] = ck.float(f"{where}.{key}", s[key])
    for key in ("mask-seed", "resample-every"):
        if key in s:
            s[key] = ck.int(f"{where}.{key}", s[key], 0)
    for key, (applies, why) in _APPLIES.items():
        if key in s and not applies(s):
            raise ck.fail(f"{where} ({s['strategy']}) sets {key!r}, which it would ignore: {why}")
    if base == "fedavg":
        s.pop("base-strategy")  # the default; keeps 'fedpfn' and 'fedpfn+fedavg' one strategy
    if not name:
        name = s["strategy"] + (f"+{s['base-strategy']}" if "base-strategy" in s else "")
    ck.check(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+=_-]*", name) is not None,
        f"{where}: name {name!r} may hold only letters, digits and . + = _ - (it names directories)",
    )
    s["name"] = name
    return s


# ------------------------------------------------------------------ spec
def _model_args(value, ck: _Checker) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    text = ck.str("model-args", value)
    run_config.parse_model_args(text)
    return text


def resolve_spec(raw, where: str = "spec", base_dir: Path | None = None) -> dict[str, object]:
    """Check a raw spec mapping; return it complete, typed, with an absolute data-dir."""
    ck = _Checker(where)
    given = _normalize(raw if raw is not None else {}, SPEC_KEYS, ck, "the spec")
    defaults = _defaults()
    missing = [k for k, v in defaults.items() if v is REQUIRED and k not in given]
    if missing:
        examples = "; ".join(EXAMPLES[k] for k in missing)
        plural = "s" if len(missing) > 1 else ""
        raise ck.fail(f"missing required key{plural} {', '.join(map(repr, missing))} (e.g. {examples})")
    s = {**defaults, **given}
    out: dict[str, object] = {}
    for key in ("name", "dataset", "data-dir", "model", "partitioner", "optimizer"):
        out[key] = ck.str(key, s[key])
    for key, low in (("train-size", 0), ("test-size", 0), ("min-partition-size", 0),
                     ("classes-per-partition", 1), ("partition-seed", 0), ("local-epochs", 1), ("client-eval-size", 0),
                     ("batch-size", 1), ("rounds", 1), ("clients", 2), ("last-rounds", 1)):  # fmt: skip
        out[key] = ck.int(key, s[key], low)
    for key in ("lr", "lr-decay", "momentum", "weight-decay", "rho", "participation", "client-cpus", "client-gpus"):
        out[key] = ck.float(key, s[key])
    out["client-test-eval"] = ck.bool("client-test-eval", s["client-test-eval"])
    out["download"] = ck.bool("download", s["download"])
    ck.check(
        not out["download"] or out["dataset"] in DOWNLOADABLE,
        f"download applies to {', '.join(DOWNLOADABLE)}, not {out['dataset']!r}; drop 'download'",
    )
    out["model-args"] = _model_args(s["model-args"], ck)
    out["alphas"] = [ck.float("alphas", a) for a in ck.list("alphas", s["alphas"])]
    bad = [a for a in out["alphas"] if a <= 0]
    if bad:
        raise ck.fail(f"alpha={bad[0]:g} must be > 0 (smaller = more label skew, e.g. 0.1; 100 is nearly IID)")
    ck.check(len(set(out["alphas"])) == len(out["alphas"]), f"alphas repeat: {out['alphas']}")
    out["seeds"] = [ck.int("seeds", x, 0) for x in ck.list("seeds", s["seeds"])]
    ck.check(len(set(out["seeds"])) == len(out["seeds"]), f"seeds repeat: {out['seeds']}")
    out["strategies"] = [_parse_strategy(e, ck, i) for i, e in enumerate(ck.list("strategies", s["strategies"]))]
    names = [x["name"] for x in out["strategies"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    ck.check(not dup, f"strategy name(s) {', '.join(dup)} repeat; give each entry its own 'name'")
    ck.check(0 < out["participation"] <= 1, f"participation={out['participation']} must be in (0, 1]")
    ck.check(out["client-cpus"] > 0, f"client-cpus={out['client-cpus']} must be > 0")
    ck.check(out["client-gpus"] >= 0, f"client-gpus={out['client-gpus']} must be >= 0 (0 = CPU only)")
    target = s["target-accuracy"]
    if target is not None:
        target = ck.float("target-accuracy", target)
        ck.check(0 < target <= 1, f"target-accuracy={target} must be in (0, 1] (a test accuracy)")
    out["target-accuracy"] = target
    extra = _normalize(s["run-config"] or {}, tuple(run_config.DEFAULTS), ck, "run-config")
    for key in extra:
        if key in CONTROLLED or key in PASSTHROUGH:
            top = RENAMED.get(key, key)
            raise ck.fail(f"run-config sets {key!r}; set it with the top-level key {top!r} instead")
    out["run-config"] = extra
    out["data-dir"] = _data_dir(out, ck, base_dir)
    ck.check(
        bool(out["data-dir"]) or out["dataset"] == "digits",
        f"data set {out['dataset']!r} needs data-dir (e.g. data-dir: ../shared/data/cifar10)",
    )
    from fedalign.models import MODEL_NAMES

    ck.check(out["model"] in MODEL_NAMES, f"unknown model {out['model']!r}; valid models: {', '.join(MODEL_NAMES)}")
    for cell in cells_of(out):  # every cell's run config passes the simulation's own checks
        try:
            run_config.resolve(cell.run_config)
        except UsageError as err:
            raise ck.fail(f"cell {cell.label}: {err}") from None
    return out


def _data_dir(spec: Mapping[str, object], ck: _Checker, base_dir: Path | None) -> str:
    """Relative data-dir is taken against the current directory and recorded absolute."""
    text = str(spec["data-dir"])
    if not text:
        return ""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    ck.check(
        path.is_dir() or bool(spec.get("download")),
        f"data-dir {text!r} ({path}) is not a directory (add download: true, or --set download=true, "
        "to fetch the data set there)",
    )
    return str(path)


def parse_sets(items: list[str] | None) -> dict[str, object]:
    """['rounds=10', 'alphas=[0.1]'] -> {'rounds': 10, 'alphas': [0.1]} (values read as YAML)."""
    from fedalign.safe_yaml import load_yaml_text

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {brief(item)} must be KEY=VALUE, e.g. --set rounds=10")
        try:
            out[key.strip()] = load_yaml_text(text, f"--set {key.strip()[:40]}")
        except UsageError:
            raise UsageError(f"--set {brief(item)}: {brief(text)} is not a (small) YAML value") from None
    return out


def load_spec(path: str | Path, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Read and check a YAML spec file, updated by `overrides`; `name` defaults to the file's stem."""
    from fedalign.safe_yaml import load_yaml_mapping

    path = Path(path)
    raw = load_yaml_mapping(path, "spec file")
    where = f"spec {path}" + (" with --set " + ", ".join(map(str, overrides)) if overrides else "")
    spec = resolve_spec({**raw, **(overrides or {})}, where=where)
    spec["name"] = spec["name"] or path.stem
    return spec


# ------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One simulation: (alpha, strategy, seed) and the run config it passes to `simulate`."""

    alpha: float
    strategy: str
    seed: int
    run_config: dict = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"alpha{self.alpha:g}__{self.strategy}__seed{self.seed}"

    @property
    def label(self) -> str:
        return f"alpha={self.alpha:g} {self.strategy} seed={self.seed}"

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "alpha": self.alpha, "strategy": self.strategy, "seed": self.seed,
                "run_config": self.run_config}  # fmt: skip


def min_nodes(spec: Mapping[str, object]) -> int:
    """Nodes sampled per round: max(2, floor(clients * participation))."""
    return max(2, math.floor(int(spec["clients"]) * float(spec["participation"]) + 1e-9))


def cell_run_config(spec: Mapping[str, object], alpha: float, strategy: Mapping, seed: int) -> dict:
    """Run-config overrides of one cell (without output-dir, which the runner sets)."""
    cfg: dict[str, object] = {k: spec[k] for k in PASSTHROUGH}
    cfg.update({
        "model-args": spec["model-args"],
        "alpha": float(alpha),
        "seed": int(seed),
        "mask-seed": int(seed),  # a fresh mask per seed, the same for every alpha and strategy
        "num-rounds": int(spec["rounds"]),
        "fraction-train": float(spec["participation"]),
        "min-nodes": min_nodes(spec),
    })  # fmt: skip
    cfg.update(spec["run-config"])  # may override min-nodes or mask-seed, never the axes
    cfg.update({k: v for k, v in strategy.items() if k != "name"})
    return cfg


def cells_of(spec: Mapping[str, object]) -> list[Cell]:
    """Seed-major order: a partial sweep already holds every alpha x strategy for its first seeds."""
    return [
        Cell(float(alpha), str(strategy["name"]), int(seed), cell_run_config(spec, alpha, strategy, seed))
        for seed in spec["seeds"]
        for alpha in spec["alphas"]
        for strategy in spec["strategies"]
    ]


def parse_filters(items: list[str] | None) -> dict[str, set[str]]:
    """['alpha=0.1', 'strategy=fedpfn,fedpnu'] -> {'alpha': {'0.1'}, 'strategy': {...}}."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in ("alpha", "strategy", "seed") or not values.strip():
            raise UsageError(
                f"--only {item!r} must be alpha=A, strategy=NAME or seed=S (comma-separated values allowed)"
            )
        for v in values.split(","):
            v = v.strip()
            if key != "strategy":
                try:
                    v = f"{float(v):g}" if key == "alpha" else str(int(v))
                except ValueError:
                    raise UsageError(f"--only {item!r}: {v!r} is not a number") from None
            out.setdefault(key, set()).add(v)
    return out


def select(cells: list[Cell], filters: Mapping[str, set[str]]) -> list[Cell]:
    """Cells matching every filter key (any of its values); an empty selection is an error."""
    def keep(c: Cell) -> bool:
        have = {"alpha": f"{c.alpha:g}", "strategy": c.strategy, "seed": str(c.seed)}
        return all(have[k] in vs for k, vs in filters.items())

    chosen = [c for c in cells if keep(c)]
    if filters and not chosen:
        shown = " ".join(f"{k}={','.join(sorted(v))}" for k, v in filters.items())
        raise UsageError(f"--only {shown} matches none of the spec's {len(cells)} cells")
    return chosen
