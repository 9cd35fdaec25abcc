"""FedAvg with post-hoc weight matching: the comparator to training-time alignment.

Before averaging, each client model is permuted (Git Re-Basin weight matching,
`fedalign.matching`) to best match the global model it started from, so hidden
units that swapped roles are lined up again. The matching work (coordinate
descent sweeps and wall time) is reported per round.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedalign.matching import match_to, spec_for
from fedalign.strategies.guarded import GuardedStrategy


class WeightMatchedStrategy(GuardedStrategy):
    """Permute every accepted client model onto the global model, then let `base` average."""

    def __init__(
        self, base: Strategy, model: torch.nn.Module, node_wait_timeout: float = 60.0, **guard
    ) -> None:
        super().__init__(base, node_wait_timeout=node_wait_timeout, buffers=model, **guard)
        self.spec = spec_for(model)
        self.round_iterations = 0
        self.round_seconds = 0.0

    def _screen_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        accepted = super()._screen_replies(server_round, replies)
        assert self._sent is not None
        reference = {k: torch.from_numpy(v) for k, v in self._sent.items()}
        self.round_iterations, self.round_seconds = 0, 0.0
        for msg in accepted:
            if msg.has_error():
                continue
            key, record = next(iter(msg.content.array_records.items()))
            permuted, iterations, seconds = match_to(reference, record.to_torch_state_dict(), self.spec)
            msg.content[key] = ArrayRecord({k: torch.as_tensor(v) for k, v in permuted.items()})
            self.round_iterations += iterations
            self.round_seconds += seconds
        return accepted

    def aggregate_train(self, server_round: int, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics = MetricRecord(dict(metrics or {}))
        metrics["wm-iterations"] = self.round_iterations
        metrics["wm-seconds"] = self.round_seconds
        return arrays, metrics
