"""A pass-through wrapper around any Flower strategy that makes it safe to run.

What every fedalign strategy shares:

* Flower's `sample_nodes` waits forever for `min_available_nodes`; here the
  wait is bounded by `node_wait_timeout` and ends in a clear error.
* Which nodes take part is chosen by a generator seeded from `sample_seed`,
  over partition ids (`SeededSampler`), so seeded runs train the same clients.
* A reply whose arrays hold NaN/Inf, or whose keys/shapes differ from the
  model sent out, is rejected and counted, never averaged.
* Buffers (BatchNorm statistics, counters) are averaged plainly, outside any
  server-optimizer step; integer buffers are rounded (`strategies.buffers`).
* After every round the base strategy's own copy of the global model is set
  to the model returned (`strategies.base_state`).
* A run in which no client succeeds stops: after `max_failed_rounds`
  consecutive rounds without one usable reply it ends in a clear error
  instead of running every remaining round on the unchanged model. When every
  reply of those rounds held NaN/Inf, the error is `TrainingDivergedError`:
  the training itself blew up, which is a result of the run (the server
  records it as diverged), not a broken client.

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
from fedalign.strategies.base_state import sync_base_model
from fedalign.strategies.buffers import average_buffers, buffer_names, cast_like, integer_keys
from fedalign.strategies.sampling import SeededSampler
from fedalign.transport import reply_form
from fedalign.wire import WireLog


class NotEnoughNodesError(UsageError):
    """Fewer nodes connected than the strategy needs, within the wait limit."""


class NoClientSucceededError(UsageError):
    """`max_failed_rounds` rounds in a row brought no usable reply: the run cannot make progress."""


class TrainingDivergedError(NoClientSucceededError):
    """Every reply of `max_failed_rounds` rounds in a row held NaN/Inf: the local training diverged.

    `first_round` is the first of those rounds; the global model is still the
    one of the round before it (non-finite replies are never averaged).
    """

    def __init__(self, message: str, first_round: int) -> None:
        super().__init__(message)
        self.first_round = int(first_round)


NONFINITE = "non-finite values"  # how _reply_problem starts a NaN/Inf rejection


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def numpy_to_arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for key, value in values.items():
        record[key] = Array.from_numpy_ndarray(np.asarray(value, order="C"))  # keeps 0-d shapes
    return record


class GuardedStrategy(Strategy):
    """Delegate to `base`, with a bounded node wait, seeded sampling and reply validation.

    `buffers`: the model (its state-dict keys that are not parameters are
    buffers) or the buffer names; integer arrays count as buffers anyway.
    `sample_seed`: seeds which nodes take part when not all do;
    `query_timeout`: how long nodes may take to report their partition id
    (a node too slow for that is too slow to train a round as well).
    """

    def __init__(
        self,
        base: Strategy,
        node_wait_timeout: float = 60.0,
        buffers=None,
        sample_seed: int = 0,
        query_timeout: float = 600.0,
        max_failed_rounds: int = 3,
    ) -> None:
        self.base = base
        self.node_wait_timeout = float(node_wait_timeout)
        self.buffers = buffer_names(buffers)
        self.sampler = SeededSampler(sample_seed, query_timeout=query_timeout)
        self.max_failed_rounds = int(max_failed_rounds)
        self.failed_rounds = 0  # consecutive rounds without a usable reply
        self.diverged_since: int | None = None  # first of the consecutive rounds whose every reply was non-finite
        self._nonfinite_in_round = 0
        self.rejected_replies = 0
        self._sent: dict[str, np.ndarray] | None = None  # global arrays of this round
        self.wire = WireLog()  # payload bytes per round and node, down and up
        # Aggregated client metrics per round, kept here (not only in Flower's
        # Result) so a run that ends early still has them.
        self.client_metrics: dict[str, dict[int, MetricRecord]] = {"train": {}, "evaluate": {}}

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
        messages = self.sampler.retarget(messages, grid, server_round, "train")
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
        self._count_failure(server_round, replies, accepted)
        arrays, metrics = self.base.aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = self._average_buffers(self._keep_dtypes(arrays), accepted)
            arrays = self._finish_aggregate(server_round, arrays)
            sync_base_model(self.base, arrays)
        metrics = MetricRecord(dict(metrics or {}))
        metrics["rejected-replies"] = self.rejected_replies
        for key, value in self.wire.round_summary(server_round).items():
            metrics[key] = value
        self.client_metrics["train"][server_round] = metrics
        return arrays, metrics

    def _count_failure(self, server_round: int, replies: list[Message], accepted: list[Message]) -> None:
        """Raise once `max_failed_rounds` rounds in a row had no usable reply."""
        if any(not m.has_error() for m in accepted):
            self.failed_rounds = 0
            self.diverged_since = None
            return
        diverged = bool(replies) and self._nonfinite_in_round == len(replies)
        if not diverged:
            self.diverged_since = None
        elif self.diverged_since is None and self.failed_rounds == 0:
            self.diverged_since = server_round
        self.failed_rounds += 1
        errors = [m.error.reason for m in replies if m.has_error()]
        last = " ".join(str(errors[-1]).split())[:200] if errors else "no replies within round-timeout"
        if diverged:
            last = f"all {len(replies)} replies held non-finite values"
        log(WARNING, "round %d: no usable reply (%d of %d in a row); last error: %s",
            server_round, self.failed_rounds, self.max_failed_rounds, last)  # fmt: skip
        if self.failed_rounds >= self.max_failed_rounds and self.diverged_since is not None:
            raise TrainingDivergedError(
                f"training diverged: every client's reply held NaN/Inf in rounds {self.diverged_since}-{server_round}; "
                f"the global model is the one of round {self.diverged_since - 1} (lower lr, or raise "
                "max-failed-rounds if single rounds can recover)",
                first_round=self.diverged_since,
            )
        if self.failed_rounds >= self.max_failed_rounds:
            raise NoClientSucceededError(
                f"no client returned a usable reply in {self.failed_rounds} consecutive rounds "
                f"(up to round {server_round}); last error: {last}; fix the clients' problem "
                "(max-failed-rounds sets how many such rounds are tolerated)"
            )

    def _screen_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Drop replies that must not be averaged; errors pass to the base's log.

        Accepted replies are put in a fixed order: float sums then do not
        depend on which client finished first, so a seeded run is reproducible.
        """
        accepted = []
        self._nonfinite_in_round = 0
        for msg in replies:
            if msg.has_error():
                accepted.append(msg)
                continue
            problem = self._reply_problem(msg)
            if problem:
                self.rejected_replies += 1
                self._nonfinite_in_round += problem.startswith(NONFINITE)
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

    @property
    def delta_record_keys(self) -> tuple[str, ...]:
        """Extra ArrayRecords the base expects in a reply besides the model
        (e.g. SCAFFOLD's control-variate delta); declared by the base as
        `reply_delta_records`. They hold per-parameter deltas: a subset of the
        model's keys, same shapes, zero where nothing was trained."""
        return tuple(getattr(self.base, "reply_delta_records", ()))

    def model_record_key(self, msg: Message) -> str:
        """Key of the reply's model record: its one ArrayRecord that is not a delta record."""
        return next(k for k in msg.content.array_records if k not in self.delta_record_keys)

    def model_record(self, msg: Message) -> ArrayRecord:
        """The reply's model record."""
        return msg.content[self.model_record_key(msg)]

    def _reply_problem(self, msg: Message) -> str | None:
        records = msg.content.array_records
        deltas = self.delta_record_keys
        models = [k for k in records if k not in deltas]
        if len(models) != 1:
            return f"expected one model ArrayRecord, got {len(models)}"
        missing = [k for k in deltas if k not in records]
        if missing:
            return f"missing ArrayRecord(s) {', '.join(missing)}"
        values = arrays_to_numpy(records[models[0]])
        if self._sent is not None:
            problem = reply_form(values, self._compact_mask(), {k: v.shape for k, v in self._sent.items()})
            if problem:
                return problem
        for key, value in values.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                return f"{NONFINITE} in {key!r}"
        shapes = {k: v.shape for k, v in (self._sent or values).items()}  # full shapes
        for record_key in deltas:
            for key, value in arrays_to_numpy(records[record_key]).items():
                if key not in shapes or value.shape != shapes[key]:
                    return f"{record_key!r} entry {key!r} does not match a model parameter"
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    return f"{NONFINITE} in {record_key!r} entry {key!r}"
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

    def _average_buffers(self, arrays: ArrayRecord, accepted: list[Message]) -> ArrayRecord:
        """Replace the base's buffers by their plain weighted average (integers rounded)."""
        values = arrays_to_numpy(arrays)
        keys = (self.buffers | integer_keys(self._sent or values)) & set(values)
        weighted_by = str(getattr(self.base, "weighted_by_key", "num-examples"))
        averaged = average_buffers(accepted, keys, weighted_by)
        if not averaged:
            return arrays
        like = self._sent or values
        for key, value in averaged.items():
            values[key] = cast_like(value, like[key])
        return numpy_to_arrays(values)

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
        messages = self.sampler.retarget(messages, grid, server_round, "evaluate")
        self.wire.sent(server_round, messages, kind="eval-down")
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.base.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.client_metrics["evaluate"][server_round] = metrics
        return metrics
