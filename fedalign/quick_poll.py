"""Shorter waits and largest-first dispatch inside Flower's Simulation Runtime.

Flower 1.42's simulation moves messages between the ServerApp and the actors
with polling threads: the ServerApp's InMemoryGrid pulls replies every 0.1 s,
the message extractor scans the LinkState every 0.1 s, and the worker threads
wait 1 s on their queues, so every round waits ~0.1-0.2 s for nothing and
every simulation ~1 s at its end. For a digits round (~50 ms of training)
that is most of the time. `quick_polling()` lowers those waits; what is
computed does not change.

The extractor's interval adapts: it sleeps at least twice as long as its last
scan took, so with thousands of nodes it never takes more than a third of a
core.

Flower's workers hand messages to free actors in the order the extractor
queues them, which is node order. With `work_of` (partition id -> expected
work, e.g. its number of examples) the messages of one scan are queued
largest first, so with more clients than actors the long ones start first
and a round does not end with one actor still training a large partition
while the others idle (longest-processing-time-first scheduling). Replies are
aggregated in a fixed order (`fedalign.protocol.reply_order_key`), so the
dispatch order changes no result.
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import threading
import time
from collections.abc import Callable, Iterator

POLL_SECONDS = 0.01


class _QuickQueue(queue.Queue):
    """A Queue whose timed `get` returns within POLL_SECONDS (callers loop on Empty)."""

    def get(self, block=True, timeout=None):
        if timeout is not None:
            timeout = min(timeout, POLL_SECONDS)
        return super().get(block, timeout)


def _extractor(work_of: Callable[[int], float] | None):
    def add_messages_to_queue(state, queue_, nodes_mapping, f_stop: threading.Event) -> None:
        """Flower's `add_messages_to_queue`: adaptive interval instead of 0.1 s, largest work first."""
        while not f_stop.is_set():
            t0 = time.perf_counter()
            found = [(node_id, msg) for node_id in nodes_mapping.keys()
                     for msg in state.get_message_ins(node_id=node_id, limit=1)]  # fmt: skip
            if work_of is not None:  # stable sort: equal work keeps node order
                found.sort(key=lambda item: -work_of(int(nodes_mapping[item[0]])))
            for _, msg in found:
                queue_.put(msg)
            f_stop.wait(max(POLL_SECONDS, 2 * (time.perf_counter() - t0)))

    return add_messages_to_queue


@contextlib.contextmanager
def quick_polling(work_of: Callable[[int], float] | None = None) -> Iterator[None]:
    """Within the block, Flower simulations poll every POLL_SECONDS instead of 0.1-1 s.

    `work_of(partition_id)`: expected work of a node's messages; larger goes first.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid import InMemoryGrid

    rs = importlib.import_module("flwr.simulation.run_simulation")  # the module, not the function

    class QuickGrid(InMemoryGrid):
        def __init__(self, state_factory, pull_interval: float = POLL_SECONDS) -> None:
            super().__init__(state_factory=state_factory, pull_interval=pull_interval)

    saved = (vce_api.Queue, vce_api.add_messages_to_queue, rs.InMemoryGrid)
    vce_api.Queue, vce_api.add_messages_to_queue, rs.InMemoryGrid = _QuickQueue, _extractor(work_of), QuickGrid
    try:
        yield
    finally:
        vce_api.Queue, vce_api.add_messages_to_queue, rs.InMemoryGrid = saved
