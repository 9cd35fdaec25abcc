"""fedalign.quick_poll's message extractor: what it queues, and in which order."""

from __future__ import annotations

import queue
import threading

from fedalign.quick_poll import _extractor


class _OneScanState:
    """The LinkState calls the extractor makes: each node's pending message, handed out once."""

    def __init__(self, pending: dict[int, str], stop: threading.Event) -> None:
        self.pending, self.nodes, self.stop, self.scanned = dict(pending), list(pending), stop, []

    def get_message_ins(self, node_id: int, limit: int):
        self.scanned.append(node_id)
        if len(self.scanned) == len(self.nodes):
            self.stop.set()  # one full scan, then the extractor loop ends
        msg = self.pending.pop(node_id, None)
        return [msg] if msg is not None else []


def _queued(nodes_mapping: dict[int, int], work_of) -> list[str]:
    stop = threading.Event()
    state = _OneScanState({node: f"msg-{node}" for node in nodes_mapping}, stop)
    out: queue.Queue = queue.Queue()
    _extractor(work_of)(state, out, nodes_mapping, stop)
    assert state.scanned == list(nodes_mapping)  # every node asked once, in node order
    return [out.get_nowait() for _ in range(out.qsize())]


NODES = {11: 0, 12: 1, 13: 2, 14: 3, 15: 4}  # node id -> partition id, registration order
SIZES = [544, 1493, 915, 1493, 1048]  # examples per partition


def test_without_work_estimate_messages_keep_node_order():
    assert _queued(NODES, None) == ["msg-11", "msg-12", "msg-13", "msg-14", "msg-15"]


def test_largest_partition_first_ties_keep_node_order():
    assert _queued(NODES, lambda pid: SIZES[pid]) == ["msg-12", "msg-14", "msg-15", "msg-13", "msg-11"]


def test_work_is_looked_up_by_partition_not_node_id():
    shuffled = {21: 4, 22: 0, 23: 3}  # partitions 4 (1048), 0 (544), 3 (1493)
    assert _queued(shuffled, lambda pid: SIZES[pid]) == ["msg-23", "msg-21", "msg-22"]
