"""Flower strategies for training-time alignment.

`SubspaceStrategy(base, model, ...)` wraps any Flower message-API strategy;
`FedPFN` and `FedPNU` are that wrapper with the `fixed` and `alternate`
schedules. `GuardedStrategy` adds only the node-wait and reply guards (the
FedAvg/FedProx baselines). `build_strategy` builds any of them from a run config.
"""

from fedalign.strategies.factory import build_strategy
from fedalign.strategies.guarded import GuardedStrategy, NotEnoughNodesError
from fedalign.strategies.schedules import SCHEDULES, MaskSchedule
from fedalign.strategies.subspace import FedPFN, FedPNU, SubspaceStrategy

__all__ = [
    "FedPFN",
    "FedPNU",
    "GuardedStrategy",
    "MaskSchedule",
    "NotEnoughNodesError",
    "SCHEDULES",
    "SubspaceStrategy",
    "build_strategy",
]
