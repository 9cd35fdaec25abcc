"""A pass-through wrapper around any Flower strategy that makes it safe to run.

Two guards every fedalign strategy shares:

* Flower's `sample_nodes` waits forever for `min_available_nodes`; here the
  wait is bounded by `node_wait_timeout` and ends in a clear error.
* A reply whose arrays hold NaN/Inf, or whose keys/shapes differ from the
  model sent out, is rejected and counted, never averaged.

Subclasses override the small hooks `_prepare_train_messages` and
`_finish_aggregate`; everything else is the base strategy's own behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedalign.errors import UsageError
from fedalign.protocol import reply_order_key
from fedalign.transport import reply_form
from fedalign.wire import WireLog


class NotEnoughNodesError(UsageError):
    """Fewer nodes connected than the strategy needs, within the wait limit."""


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def numpy_to_arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for key, value in values.items():
        record[key] = Array.from_numpy_ndarray(np.ascontiguousarray(value))
    return record


class GuardedStrategy(Strategy):
    """Delegate to `base`, with a bounded node wait and reply validation."""

    def __init__(self, base: Strategy, node_wait_timeout: float = 60.0) -> None:
        self.base = base
        self.node_wait_timeout = float(node_wait_timeout)
        self.rejected_replies = 0
        self._sent: dict[str, np.ndarray] | None = None  # global arrays of this round
        self.wire = WireLog()  # payload bytes per round and node, down and up

    # ------------------------------------------------------------- attributes
    def __getattr__(self, name: str):
        # Attributes such as fraction_train or arrayrecord_key read through to
        # the base strategy, so the wrapper drops in wherever `base` did.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def configrecord_key(self) -> str:
        return getattr(self.base, "configrecord_key", "config")

    def summary(self) -> None:
        log(INFO, "\t├──> %s around %s", type(self).__name__, type(self.base).__name__)
        log(INFO, "\t│\t└── node wait timeout: %.0f s", self.node_wait_timeout)
        self.base.summary()

    # ------------------------------------------------------------ node guard
    def _nodes_needed(self, train: bool) -> int:
        needed = int(getattr(self.base, "min_available_nodes", 1))
        per_round = "min_train_nodes" if train else "min_evaluate_nodes"
        return max(needed, int(getattr(self.base, per_round, 0)))

    def wait_for_nodes(self, grid: Grid, needed: int) -> None:
        """Return once `needed` nodes are connected; raise after the timeout."""
        deadline = time.monotonic() + self.node_wait_timeout
        while True:
            connected = len(list(grid.get_node_ids()))
            if connected >= needed:
                return
            if time.monotonic() >= deadline:
                raise NotEnoughNodesError(
                    f"only {connected} of the {needed} nodes this strategy needs connected "
                    f"within {self.node_wait_timeout:.0f} s; start more SuperNodes "
                    "(num-supernodes) or lower min-nodes"
                )
            time.sleep(0.5)

    # ----------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.wait_for_nodes(grid, self._nodes_needed(train=True))
        self._sent = arrays_to_numpy(arrays)
        messages = list(self.base.configure_train(server_round, arrays, config, grid))
        messages = self._prepare_train_messages(server_round, messages)
        self.wire.sent(server_round, messages)
        return messages

    def _prepare_train_messages(self, server_round: int, messages: list[Message]) -> list[Message]:
        """Hook: adjust the outgoing train messages (default: unchanged)."""
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.wire.received(server_round, replies)
        accepted = self._screen_replies(server_round, replies)
        arrays, metrics = self.base.aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = self._finish_aggregate(server_round, self._keep_dtypes(arrays))
        metrics = MetricRecord(dict(metrics or {}))
        metrics["rejected-replies"] = self.rejected_replies
        for key, value in self.wire.round_summary(server_round).items():
            metrics[key] = value
        return arrays, metrics

    def _screen_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Drop replies that must not be averaged; errors pass to the base's log.

        Accepted replies are put in a fixed order: float sums then do not
        depend on which client finished first, so a seeded run is reproducible.
        """
        accepted = []
        for msg in replies:
            if msg.has_error():
                accepted.append(msg)
                continue
            problem = self._reply_problem(msg)
            if problem:
                self.rejected_replies += 1
                log(
                    WARNING,
                    "round %d: rejected reply from node %d (%s)",
                    server_round,
                    msg.metadata.src_node_id,
                    problem,
                )
                continue
            accepted.append(msg)
        return sorted(accepted, key=reply_order_key)

    def _reply_problem(self, msg: Message) -> str | None:
        records = [r for r in msg.content.array_records.values()]
        if len(records) != 1:
            return f"expected one ArrayRecord, got {len(records)}"
        values = arrays_to_numpy(records[0])
        if self._sent is not None:
            problem = reply_form(values, self._compact_mask(), {k: v.shape for k, v in self._sent.items()})
            if problem:
                return problem
        for key, value in values.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                return f"non-finite values in {key!r}"
        return None

    def _compact_mask(self):
        """Hook: the mask under which replies may come in compact form (default: none)."""
        return None

    def _keep_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """Server optimizers (FedAdam, FedYogi) compute in float64; keep the model's dtypes."""
        if self._sent is None:
            return arrays
        values = arrays_to_numpy(arrays)
        if all(values[k].dtype == self._sent[k].dtype for k in values if k in self._sent):
            return arrays
        return numpy_to_arrays(
            {k: v.astype(self._sent[k].dtype) if k in self._sent else v for k, v in values.items()}
        )

    def _finish_aggregate(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Hook: post-process the base strategy's aggregate (default: unchanged)."""
        return arrays

    # -------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if getattr(self.base, "fraction_evaluate", 1.0) == 0.0:
            return []
        self.wait_for_nodes(grid, self._nodes_needed(train=False))
        messages = list(self.base.configure_evaluate(server_round, arrays, config, grid))
        self.wire.sent(server_round, messages, kind="eval-down")
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.base.aggregate_evaluate(server_round, replies)
