"""Build the strategy a run config names (the one place that maps names to classes)."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fedalign.strategies.guarded import GuardedStrategy
from fedalign.strategies.schedules import MaskSchedule
from fedalign.strategies.subspace import SubspaceStrategy

DEFAULT_PROXIMAL_MU = 0.01


def build_base(name: str, config: Mapping[str, object]) -> Strategy:
    """A Flower strategy from `base-strategy`-style names."""
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
    raise ValueError(f"unknown base strategy {name!r}")  # config.validate() rejects it first


def schedule_for(config: Mapping[str, object]) -> MaskSchedule:
    every = int(config["resample-every"])
    if every > 0:
        return MaskSchedule("resample", every=every)
    return MaskSchedule("alternate" if config["strategy"] == "fedpnu" else "fixed")


def build_strategy(config: Mapping[str, object], model) -> Strategy:
    """The strategy of a resolved run config (see `fedalign.config`)."""
    name = str(config["strategy"])
    wait = float(config["node-wait-timeout"])
    if name in ("fedavg", "fedprox"):
        return GuardedStrategy(build_base(name, config), node_wait_timeout=wait)
    if name == "fedavg-wm":
        from fedalign.strategies.matched import WeightMatchedStrategy

        return WeightMatchedStrategy(build_base("fedavg", config), model, node_wait_timeout=wait)
    exclude = [p.strip() for p in str(config["mask-exclude"]).split(",") if p.strip()]
    return SubspaceStrategy(
        build_base(str(config["base-strategy"]), config),
        model,
        rho=float(config["rho"]),
        seed=int(config["mask-seed"]),
        schedule=schedule_for(config),
        granularity=str(config["granularity"]),
        exclude=exclude or None,
        node_wait_timeout=wait,
        transport=str(config["transport"]),
    )
