"""The subspace wrapper: any Flower strategy, trained and averaged in a mask's subspace.

FedPFN and FedPNU are this wrapper with a schedule. Per round:

1. `configure_train`: the base strategy samples nodes and builds messages; each
   message's config gets the round's digest and schedule position, plus the
   bit-packed mask for nodes that do not hold that digest yet (sent once per
   node and mask version).
2. `aggregate_train`: replies whose node lacks the mask are dropped (and the
   mask re-sent next time); the base strategy aggregates the rest (FedAvg,
   FedAvgM, FedAdam, FedYogi, FedProx, ...); then every entry fixed in this
   round is restored to its value in the previous global model, so neither a
   server optimizer nor a faulty client can move it; buffers are averaged
   plainly and the base strategy's own copy of the model is re-synced to the
   restored one (see `GuardedStrategy`).

With `transport="compact"` (the default) replies carry only the round's
trainable coordinates and, under the fixed schedule, nodes that hold the
anchors get only the trainable coordinates too; `fedalign.transport` knows the
forms, and the wrapper rebuilds full arrays before the base strategy sees them.
"""

from __future__ import annotations

from collections import Counter
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedalign.errors import UsageError
from fedalign.masks import SubspaceMask
from fedalign.protocol import (
    RoundPosition,
    is_mask_missing_reply,
    trained_digest,
    write_round_config,
)
from fedalign.strategies.guarded import GuardedStrategy, arrays_to_numpy, numpy_to_arrays
from fedalign.strategies.schedules import MaskSchedule
from fedalign.transport import (
    DOWNLINK_ANCHORS,
    KEEP_ANCHORS,
    TRANSPORTS,
    UPLINK,
    anchors_digest,
    anchors_of,
    compact,
    expand,
    reply_anchors,
)


class SubspaceStrategy(GuardedStrategy):
    """Wrap `base` so that clients train, and the server averages, in a subspace.

    Parameters
    ----------
    base : Strategy
        Any Flower message-API strategy; its sampling and aggregation are used.
    model : torch.nn.Module or mapping of parameter name -> shape
        The architecture the mask is sampled for (parameters only, not
        buffers); a module also names the buffers, which are averaged plainly.
    rho : float
        Fraction of entries FIXED (published default 0.4).
    seed : int
        Mask seed; mask version v is drawn from (seed, v) (`fedalign.masks.mask_rng`).
    schedule : MaskSchedule
        `fixed` (FedPFN), `alternate` (FedPNU), `resample` or
        `alternate-resample` (FedPNU with a fresh mask every k rounds).
    granularity, include, exclude
        As in `SubspaceMask.sample`.
    transport : "compact" or "full"
        `compact` (default): replies, and under the fixed schedule the model
        sent to nodes holding the anchors, carry trainable coordinates only.
        Lossless: the global models are bit-identical to `full`'s.
    """

    def __init__(
        self,
        base: Strategy,
        model,
        rho: float = 0.4,
        seed: int = 0,
        schedule: MaskSchedule | str = "fixed",
        granularity: str = "weight",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        node_wait_timeout: float = 60.0,
        sample_seed: int = 0,
        query_timeout: float = 600.0,
        transport: str = "compact",
    ) -> None:
        super().__init__(
            base,
            node_wait_timeout=node_wait_timeout,
            buffers=model if isinstance(model, torch.nn.Module) else None,
            sample_seed=sample_seed,
            query_timeout=query_timeout,
        )
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self._anchor_holders: dict[int, str] = {}  # node id -> anchors digest it reported
        self.schedule = MaskSchedule(schedule) if isinstance(schedule, str) else schedule
        self._sample_args = dict(rho=rho, granularity=granularity, include=include, exclude=exclude)
        self._model_shapes = (
            {n: tuple(p.shape) for n, p in model.named_parameters()}
            if isinstance(model, torch.nn.Module)
            else dict(model)
        )
        self.seed = int(seed)
        self._masks: dict[int, SubspaceMask] = {}
        self._holders: dict[int, str] = {}  # node id -> digest it holds
        self.mask_sends: Counter[int] = Counter()  # node id -> times the mask was sent
        self.mask_bytes_sent = 0
        self.mask_resends = 0
        self._round_mask: SubspaceMask | None = None
        self._round_digests: dict[int, str] = {}  # round -> digest of the mask it trained under
        self._current_round = 0
        self.node_log: dict[int, dict] = {}  # node id -> first round, verified rounds

    # ----------------------------------------------------------------- masks
    def mask_version(self, version: int) -> SubspaceMask:
        """The sampled mask M of a schedule version (cached)."""
        if version not in self._masks:
            # Keep M_0 (`mask`) and the latest version only: a resampling run must
            # not hold one mask per version in memory.
            self._masks = {v: m for v, m in self._masks.items() if v == 0}
            self._masks[version] = SubspaceMask.sample(
                self._model_shapes, seed=self.seed, version=version, **self._sample_args
            )
        return self._masks[version]

    def round_mask(self, server_round: int) -> SubspaceMask:
        """The mask a round trains under: M or 1 - M of the scheduled version."""
        position = self.schedule.position(server_round)
        mask = self.mask_version(position.version)
        return mask.complement() if position.complement else mask

    def schedule_record(self, num_rounds: int) -> dict:
        """The effective schedule of a run, for metrics.json: kind, k and each round's position.

        `digest` is the digest of the mask the round trained under (M_v or
        1 - M_v), for rounds that have run.
        """
        rounds = []
        for server_round in range(1, int(num_rounds) + 1):
            position = self.schedule.position(server_round)
            row = {"round": server_round, "version": position.version, "complement": position.complement}
            if server_round in self._round_digests:
                row["digest"] = self._round_digests[server_round]
            rounds.append(row)
        return {"kind": self.schedule.kind, "every": self.schedule.every, "rounds": rounds}

    @property
    def mask(self) -> SubspaceMask:
        """The initial mask M (round 1's base mask)."""
        return self.mask_version(0)

    def summary(self) -> None:
        mask = self.mask
        log(
            INFO,
            "\t├──> subspace: schedule=%s rho=%.2f granularity=%s digest=%s (%d of %d entries fixed)",
            self.schedule.kind,
            self._sample_args["rho"],
            self._sample_args["granularity"],
            mask.digest[:12],
            mask.num_fixed,
            mask.numel,
        )
        super().summary()

    # ----------------------------------------------------------------- train
    def _prepare_train_messages(self, server_round: int, messages: list[Message]) -> list[Message]:
        self._current_round = server_round
        position: RoundPosition = self.schedule.position(server_round)
        base_mask = self.mask_version(position.version)
        self._round_mask = base_mask.complement() if position.complement else base_mask
        self._round_digests[server_round] = self._round_mask.digest
        compact_down = self._compact_downlink()
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            needs_blob = self._holders.get(node) != base_mask.digest
            content = RecordDict(dict(msg.content.items()))  # per-node copy
            config = ConfigRecord(dict(content[self.configrecord_key]))
            write_round_config(config, base_mask, position, include_blob=needs_blob)
            if self.transport == "compact":
                config[UPLINK] = "compact"
            if compact_down is not None:
                digest, arrays = compact_down
                if not needs_blob and self._anchor_holders.get(node) == digest:
                    config[DOWNLINK_ANCHORS] = digest
                    content[self._arrays_key] = arrays
                else:
                    config[KEEP_ANCHORS] = True
            content[self.configrecord_key] = config
            self.node_log.setdefault(node, {"verified_rounds": []}).setdefault("first_round", server_round)
            if needs_blob:
                self.mask_sends[node] += 1
                self.mask_bytes_sent += base_mask.wire_nbytes
                self._holders[node] = base_mask.digest
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
        return out

    @property
    def _arrays_key(self) -> str:
        return getattr(self.base, "arrayrecord_key", "arrays")

    def _compact_downlink(self) -> tuple[str, ArrayRecord] | None:
        """(anchors digest, compact global model) when this round may send compact models.

        Only under the fixed schedule: there the round's fixed entries are the
        anchors a node stored from its first full model, unchanged since.
        """
        if self.transport != "compact" or self.schedule.kind != "fixed":
            return None
        assert self._round_mask is not None and self._sent is not None
        digest = anchors_digest(anchors_of(self._sent, self._round_mask), self._round_mask)
        return digest, numpy_to_arrays(compact(self._sent, self._round_mask))

    def _compact_mask(self) -> SubspaceMask | None:
        return self._round_mask if self.transport == "compact" else None

    def _screen_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        kept = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if is_mask_missing_reply(msg):
                self._holders.pop(node, None)  # re-send mask and full model next time it is sampled
                self._anchor_holders.pop(node, None)
                self.mask_resends += 1
                log(INFO, "round %d: node %d lacks the mask; it will be re-sent", server_round, node)
                continue
            held = reply_anchors(msg)
            if held is not None:
                self._anchor_holders[node] = str(held)
            kept.append(msg)
        accepted = super()._screen_replies(server_round, kept)
        if self._compact_mask() is not None:
            for msg in accepted:  # compact -> full before the base strategy aggregates
                if not msg.has_error():
                    key = self.model_record_key(msg)
                    full = expand(arrays_to_numpy(msg.content[key]), self._round_mask, self._sent)
                    msg.content[key] = numpy_to_arrays(full)
        return accepted

    def _reply_problem(self, msg: Message) -> str | None:
        """Beyond shape/NaN checks: the reply must come from the round's subspace."""
        problem = super()._reply_problem(msg)
        if problem:
            return problem
        mask, sent = self._round_mask, self._sent
        assert mask is not None and sent is not None
        digest = trained_digest(msg)
        if digest is not None and digest != mask.digest:
            return f"trained under mask {digest[:12]}, round mask is {mask.digest[:12]}"
        values = arrays_to_numpy(self.model_record(msg))
        deltas = {k: arrays_to_numpy(msg.content[k]) for k in self.delta_record_keys}
        for name, trainable in mask.tensors.items():
            fixed = ~trainable.numpy()
            for record_key, delta in deltas.items():
                if name in delta and np.any(delta[name][fixed] != 0):
                    return f"{record_key!r} is nonzero on fixed entries of {name!r}"
            if values[name].shape != sent[name].shape:
                continue  # compact form: its fixed entries are rebuilt from what was sent
            if values[name][fixed].tobytes() != sent[name][fixed].tobytes():
                return f"fixed entries of {name!r} moved: trained outside the subspace"
        entry = self.node_log.setdefault(msg.metadata.src_node_id, {"verified_rounds": []})
        entry["verified_rounds"].append(self._current_round)
        entry["digest_echoed"] = digest is not None
        return None

    def _finish_aggregate(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        assert self._round_mask is not None and self._sent is not None
        restored = self._round_mask.restore_fixed(arrays_to_numpy(arrays), self._sent)
        return numpy_to_arrays(restored)

    def aggregate_train(self, server_round: int, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics = MetricRecord(dict(metrics or {}))
        metrics["mask-sends"] = sum(self.mask_sends.values())
        metrics["mask-resends"] = self.mask_resends
        return arrays, metrics


class FedPFN(SubspaceStrategy):
    """FedPFN: every round trains in the same subspace M (partially fixed neurons)."""

    def __init__(self, base: Strategy, model, rho: float = 0.4, seed: int = 0, **kwargs) -> None:
        super().__init__(base, model, rho=rho, seed=seed, schedule=MaskSchedule("fixed"), **kwargs)


class FedPNU(SubspaceStrategy):
    """FedPNU: rounds alternate between M and 1 - M (partial neuron update)."""

    def __init__(self, base: Strategy, model, rho: float = 0.4, seed: int = 0, **kwargs) -> None:
        super().__init__(base, model, rho=rho, seed=seed, schedule=MaskSchedule("alternate"), **kwargs)
