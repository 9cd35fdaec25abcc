"""Build the strategy a run config names (the one place that maps names to classes)."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fedalign.strategies.guarded import GuardedStrategy
from fedalign.strategies.scaffold import Scaffold
from fedalign.strategies.schedules import MaskSchedule
from fedalign.strategies.subspace import SubspaceStrategy

DEFAULT_PROXIMAL_MU = 0.01


def build_base(name: str, config: Mapping[str, object], model=None) -> Strategy:
    """A Flower strategy from `base-strategy`-style names (`model`: SCAFFOLD's parameter names)."""
    common = dict(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_train_nodes=int(config["min-nodes"]),
        min_evaluate_nodes=int(config["min-nodes"]),
        min_available_nodes=int(config["min-nodes"]),
    )
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        mu = float(config["proximal-mu"]) or DEFAULT_PROXIMAL_MU
        return FedProx(**common, proximal_mu=mu)
    if name == "fedavgm":
        return FedAvgM(**common, server_momentum=float(config["server-momentum"]))
    if name == "fedadam":
        return FedAdam(**common, eta=float(config["server-lr"]), eta_l=float(config["lr"]))
    if name == "fedyogi":
        return FedYogi(**common, eta=float(config["server-lr"]), eta_l=float(config["lr"]))
    if name == "scaffold":
        names = [n for n, _ in model.named_parameters()] if model is not None else None
        return Scaffold(**common, server_lr=float(config["scaffold-server-lr"]), parameter_names=names)
    raise ValueError(f"unknown base strategy {name!r}")  # config.validate() rejects it first


def schedule_for(config: Mapping[str, object]) -> MaskSchedule:
    """fedpfn: `fixed`; fedpnu: `alternate`, or `alternate-resample` with resample-every k > 0.

    fedpfn with resample-every > 0 is refused by `config.validate` (a fixed
    subspace cannot be resampled).
    """
    every = int(config["resample-every"])
    if config["strategy"] == "fedpnu":
        return MaskSchedule("alternate-resample", every=every) if every > 0 else MaskSchedule("alternate")
    return MaskSchedule("fixed")


def _patterns(text: object) -> list[str] | None:
    return [p.strip() for p in str(text).split(",") if p.strip()] or None


def build_strategy(config: Mapping[str, object], model) -> Strategy:
    """The strategy of a resolved run config (see `fedalign.config`)."""
    name = str(config["strategy"])
    wait = float(config["node-wait-timeout"])
    sampling = dict(sample_seed=int(config["seed"]), query_timeout=float(config["round-timeout"]))
    if name in ("fedavg", "fedprox", "scaffold"):
        return GuardedStrategy(build_base(name, config, model), node_wait_timeout=wait, buffers=model, **sampling)
    if name == "fedavg-wm":
        from fedalign.strategies.matched import WeightMatchedStrategy

        return WeightMatchedStrategy(build_base("fedavg", config), model, node_wait_timeout=wait, **sampling)
    return SubspaceStrategy(
        build_base(str(config["base-strategy"]), config, model),
        model,
        rho=float(config["rho"]),
        seed=int(config["mask-seed"]),
        schedule=schedule_for(config),
        granularity=str(config["granularity"]),
        include=_patterns(config["mask-include"]),
        exclude=_patterns(config["mask-exclude"]),
        node_wait_timeout=wait,
        **sampling,
        transport=str(config["transport"]),
    )
