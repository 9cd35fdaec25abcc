"""Where each client ran: host, process, Ray node and torch threads, sent with every training reply.

A ClientApp adds `placement_record(partition_id)` to its reply; the ServerApp
wraps its Grid in `PlacementLog`, which reads those records off the replies
without changing them. The run record then says which host/pid/Ray node
served which partition, e.g. to show that a simulation attached to a
multi-node Ray cluster (RAY_ADDRESS) really used every node.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message

PLACEMENT_RECORD = "fedalign.placement"


def ray_node_id() -> str:
    """This process's Ray node id ("" outside Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - placement is informative, never fatal
        return ""


def torch_threads() -> int:
    """Intra-op threads of this process's torch (Ray sets OMP_NUM_THREADS from client-cpus); 0 without torch."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def placement_record(partition_id: int | None = None) -> ConfigRecord:
    record = ConfigRecord({"host": socket.gethostname(), "pid": os.getpid(), "ray-node": ray_node_id(),
                           "torch-threads": torch_threads()})  # fmt: skip
    if partition_id is not None:
        record["partition-id"] = int(partition_id)
    return record


class PlacementLog:
    """A Grid that behaves exactly like `grid` and notes the placement of every reply."""

    def __init__(self, grid) -> None:
        self._grid = grid
        self.entries: dict[tuple, dict] = {}

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _note(self, replies: Iterable[Message]) -> None:
        for msg in replies:
            if not msg.has_content() or PLACEMENT_RECORD not in msg.content.config_records:
                continue
            rec = msg.content.config_records[PLACEMENT_RECORD]
            key = (str(rec.get("ray-node", "")), str(rec.get("host", "")), int(rec.get("pid", 0)))
            entry = self.entries.setdefault(
                key, {"ray_node": key[0], "host": key[1], "pid": key[2], "replies": 0, "partitions": set()}
            )
            entry["torch_threads"] = int(rec.get("torch-threads", 0))
            entry["replies"] += 1
            if "partition-id" in rec:
                entry["partitions"].add(int(rec["partition-id"]))

    def send_and_receive(self, messages, *args, **kwargs):
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        self._note(replies)
        return replies

    def pull_messages(self, *args, **kwargs):
        replies = list(self._grid.pull_messages(*args, **kwargs))
        self._note(replies)
        return replies

    def summary(self) -> dict:
        """{"processes": [...], "ray_nodes": [...], "hosts": [...]} for the run record."""
        processes = [
            {**e, "partitions": sorted(e["partitions"])}
            for e in sorted(self.entries.values(), key=lambda e: (e["ray_node"], e["host"], e["pid"]))
        ]
        return {
            "processes": processes,
            "ray_nodes": sorted({p["ray_node"] for p in processes if p["ray_node"]}),
            "hosts": sorted({p["host"] for p in processes}),
        }
