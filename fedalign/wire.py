"""Bytes on the wire: what each message's payload costs, per round and node (SPEC §9).

A message's size is the sum of its arrays' serialized bytes (`Array.data`:
the NumPy payload with its small header, exactly what Flower ships) plus the
mask blob when the config carries it. Protocol framing (gRPC/protobuf
envelopes, metadata, config and metric records other than the mask blob) is
not counted: it is small and the same for every strategy.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

from fedalign.protocol import MASK_BLOB


def message_nbytes(msg: Message) -> int:
    """Payload bytes of one message: arrays plus the mask blob (0 for an error reply)."""
    if msg.has_error():
        return 0
    total = sum(len(a.data) for record in msg.content.array_records.values() for a in record.values())
    for config in msg.content.config_records.values():
        if MASK_BLOB in config:
            total += len(bytes(config[MASK_BLOB]))
    return total


class WireLog:
    """Per round: bytes sent to (down) and received from (up) each node."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, dict[int, int]]] = {}

    def _round(self, server_round: int) -> dict[str, dict[int, int]]:
        return self.rounds.setdefault(int(server_round), {"down": {}, "up": {}})

    def sent(self, server_round: int, messages: Iterable[Message], kind: str = "down") -> None:
        """Count outgoing messages: `down` for training, `eval-down` for federated evaluation."""
        down = self._round(server_round).setdefault(kind, {})
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            down[node] = down.get(node, 0) + message_nbytes(msg)

    def received(self, server_round: int, replies: Iterable[Message]) -> None:
        up = self._round(server_round)["up"]
        for msg in replies:
            if msg.has_error():
                continue
            node = int(msg.metadata.src_node_id)
            up[node] = up.get(node, 0) + message_nbytes(msg)

    def round_summary(self, server_round: int) -> dict[str, float]:
        """Totals and per-node means of one round (what metrics.csv shows)."""
        entry = self.rounds.get(int(server_round), {"down": {}, "up": {}})
        down, up = entry["down"], entry["up"]
        summary = {
            "bytes-down": sum(down.values()),
            "bytes-up": sum(up.values()),
            "bytes-down-node": sum(down.values()) / len(down) if down else 0.0,
            "bytes-up-node": sum(up.values()) / len(up) if up else 0.0,
        }
        if entry.get("eval-down"):
            summary["bytes-eval-down"] = sum(entry["eval-down"].values())
        return summary

    def to_record(self) -> dict:
        """metrics.json's `wire`: per round and node, and the run's totals."""
        rounds = [
            {
                "round": r,
                **{kind: {str(n): b for n, b in sorted(nodes.items())} for kind, nodes in e.items()},
                **self.round_summary(r),
            }
            for r, e in sorted(self.rounds.items())
        ]
        down = sum(row["bytes-down"] for row in rounds)
        up = sum(row["bytes-up"] for row in rounds)
        evaluation = sum(row.get("bytes-eval-down", 0) for row in rounds)
        return {
            "counted": "array payload bytes (Array.data) plus the mask blob; protocol framing not counted",
            "rounds": rounds,
            "total_bytes_down": down,
            "total_bytes_up": up,
            "total_bytes": down + up,
            "total_bytes_eval_down": evaluation,
        }


def add_wire_columns(rounds: list[dict], wire: dict) -> None:
    """Give each round row its byte counts and the run's cumulative MB (down + up) so far."""
    by_round = {int(row["round"]): row for row in wire["rounds"]}
    cumulative = 0
    for row in rounds:
        counted = by_round.get(int(row["round"]))
        if counted is not None:
            for key in ("bytes-down", "bytes-up", "bytes-down-node", "bytes-up-node"):
                row[key] = counted[key]
            cumulative += counted["bytes-down"] + counted["bytes-up"]
        row["mb-cumulative"] = cumulative / 1e6
