"""Mask schedules: which subspace a round trains in.

`fixed` is FedPFN (every round in M), `alternate` is FedPNU (M, 1 - M, M, ...,
our reading of the published code), `resample` draws a fresh seeded mask M_v
every `every` = k rounds, and `alternate-resample` is FedPNU over resampled
masks: version v = (round - 1) // k, and within a version the rounds
alternate M_v, 1 - M_v, M_v, ... starting again from M_v at each new version
(so with odd k the last round of a version trains M_v; with k = 1 no round
trains a complement). A schedule maps a round to a `RoundPosition`; the
strategy turns the position into a concrete mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedalign.errors import UsageError
from fedalign.protocol import RoundPosition

SCHEDULES = ("fixed", "alternate", "resample", "alternate-resample")


@dataclass(frozen=True)
class MaskSchedule:
    kind: str = "fixed"
    every: int = 1  # rounds per mask version, for `resample` and `alternate-resample`

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UsageError(f"unknown mask schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.kind in ("resample", "alternate-resample") and self.every < 1:
            raise UsageError(f"resample every={self.every} must be >= 1 round")

    def position(self, server_round: int) -> RoundPosition:
        """Position of a 1-based server round."""
        r = server_round - 1
        if self.kind == "alternate":
            return RoundPosition(version=0, complement=r % 2 == 1)
        if self.kind == "resample":
            return RoundPosition(version=r // self.every, complement=False)
        if self.kind == "alternate-resample":
            version = r // self.every
            return RoundPosition(version=version, complement=(r - version * self.every) % 2 == 1)
        return RoundPosition(version=0, complement=False)
