"""Seeded node sampling over partition ids, so a seeded run trains the same clients.

Flower's strategies sample with the unseeded global `random` over node ids
that are themselves random per run, so with `fraction-train < 1` two runs of
one config train different clients. `SeededSampler` keeps the base strategy's
decision of *how many* nodes and *what* to send, and decides *which* nodes:
a NumPy generator seeded from (run seed, round, train/evaluate) picks that
many partition ids out of the connected nodes' partition ids, sorted. Two runs
with one seed train the same partitions every round; another seed differs.

With every node taking part (the default, fraction 1.0) nothing is queried or
changed.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from fedalign import simulated_nodes
from fedalign.partition_query import partition_of_reply, partition_query

STREAMS = {"train": 0, "evaluate": 1}
QUERY_BATCH = 256  # partition queries in flight at once (see `learn_partitions`)


class SeededSampler:
    """Choose which nodes take part in a round, reproducibly from `seed`."""

    def __init__(self, seed: int = 0, query_timeout: float = 60.0) -> None:
        self.seed = int(seed)
        self.query_timeout = float(query_timeout)
        self.partitions: dict[int, int | None] = {}  # node id -> partition id (None: did not say)
        self.sampled: dict[str, dict[int, list]] = {"train": {}, "evaluate": {}}  # round -> partition ids
        self.learned = {"from-engine": 0, "queried": 0, "silent": 0}  # how the partition ids became known

    def learn_partitions(self, grid: Grid, node_ids: list[int]) -> None:
        """Learn the partition id of nodes not seen before: from the engine, else by asking (once per node).

        In an in-process simulation (`fedalign.simulated_nodes`) the engine's
        own node -> partition map answers without a message. Other nodes are
        asked, QUERY_BATCH at a time.

        Batches, because Flower's grid re-checks every pending message id on
        each poll, under the lock its engine needs to store replies: 10,000
        queries in one send_and_receive did not finish in 10 minutes, and
        `query_timeout` then applies to a batch, not to all of them.
        """
        unknown = [n for n in node_ids if n not in self.partitions]
        engine = simulated_nodes.partitions()
        for n in unknown:
            if n in engine:
                self.partitions[n] = engine[n]
                self.learned["from-engine"] += 1
        unknown = [n for n in unknown if n not in self.partitions]
        if not unknown:
            return
        self.learned["queried"] += len(unknown)
        started = time.monotonic()
        for first in range(0, len(unknown), QUERY_BATCH):
            batch = [partition_query(n) for n in unknown[first:first + QUERY_BATCH]]
            for msg in grid.send_and_receive(batch, timeout=self.query_timeout):
                self.partitions[int(msg.metadata.src_node_id)] = partition_of_reply(msg)
        silent = [n for n in unknown if self.partitions.get(n) is None]
        for n in silent:
            self.partitions[n] = None
        self.learned["silent"] += len(silent)
        log(INFO, "learned the partition ids of %d nodes in %.1f s", len(unknown) - len(silent), time.monotonic() - started)
        if silent:
            log(WARNING, "%d nodes did not report a partition id; they are sampled by node id", len(silent))

    def _key(self, node: int) -> tuple[int, int]:
        partition = self.partitions.get(node)
        return (0, partition) if partition is not None else (1, node)

    def choose(self, node_ids: list[int], count: int, server_round: int, stream: str) -> list[int]:
        """`count` of `node_ids`, chosen by a generator seeded from (seed, round, stream)."""
        ordered = sorted(node_ids, key=self._key)
        rng = np.random.default_rng([self.seed, int(server_round), STREAMS[stream]])
        picked = np.sort(rng.choice(len(ordered), size=count, replace=False))
        chosen = [ordered[i] for i in picked]
        self.sampled[stream][int(server_round)] = [self.partitions.get(n) for n in chosen]
        return chosen

    def retarget(self, messages: list[Message], grid: Grid, server_round: int, stream: str) -> list[Message]:
        """The base's messages, sent to the seeded choice of the same number of nodes."""
        node_ids = sorted(int(n) for n in grid.get_node_ids())
        if not messages or len(messages) >= len(node_ids):
            return messages  # everyone (or no one) takes part: nothing to choose
        template = messages[0]
        if any(m.content is not template.content for m in messages):
            log(WARNING, "base strategy sends per-node content; keeping its own node sample")
            return messages
        self.learn_partitions(grid, node_ids)
        chosen = self.choose(node_ids, len(messages), server_round, stream)
        return [
            Message(content=template.content, dst_node_id=node, message_type=template.metadata.message_type)
            for node in chosen
        ]
