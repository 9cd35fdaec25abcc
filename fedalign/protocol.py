"""The subspace wire protocol shared by the server strategies and the clients.

Round 0 (a node's first train message): the config carries the bit-packed
mask and its digest. Every train message carries the digest of the mask
version the round uses and whether to train in its complement (the digest
names the version, so no separate version number is sent). A node
keeps the mask in its `Context.state`; if it lacks the announced digest it
must not train in another subspace: it replies with an error whose reason
starts with `MASK_MISSING`, and the server re-sends the mask next time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message

from fedalign.masks import SubspaceMask

MASK_BLOB = "fedalign-mask"  # bytes, only when the node needs the mask
MASK_DIGEST = "fedalign-mask-digest"  # str, every round
MASK_COMPLEMENT = "fedalign-complement"  # bool, schedule position: train in 1 - M
STATE_KEY = "fedalign-mask"  # ConfigRecord in Context.state holding the node's mask
MASK_MISSING = "fedalign:mask-missing"  # prefix of the error reason a node replies with
REPLY_RECORD = "fedalign"  # ConfigRecord in a train reply: what the node trained under
REPLY_DIGEST = "trained-mask-digest"  # digest of the round mask (M or 1 - M) actually used
REPLY_PARTITION = "partition-id"  # lets the server sum replies in a fixed order


class MaskMissingError(RuntimeError):
    """This node does not hold the mask the server announced for this round."""

    def __init__(self, wanted: str, held: str | None) -> None:
        super().__init__(
            f"{MASK_MISSING} node holds mask {held or 'none'}, round needs {wanted}; "
            "the server re-sends it"
        )


@dataclass(frozen=True)
class RoundPosition:
    """Where a round sits in the mask schedule."""

    version: int
    complement: bool


def write_round_config(
    config: ConfigRecord, mask: SubspaceMask, position: RoundPosition, include_blob: bool
) -> None:
    """Fill a train message's config with the round's subspace announcement."""
    config[MASK_DIGEST] = mask.digest
    config[MASK_COMPLEMENT] = position.complement
    if include_blob:
        config[MASK_BLOB] = mask.to_bytes()


def announces_mask(config: ConfigRecord) -> bool:
    return MASK_DIGEST in config


def receive_round_mask(
    msg: Message, context: Context, configrecord_key: str = "config"
) -> SubspaceMask | None:
    """The mask this node must train under this round, or None for vanilla rounds.

    Stores a received mask in `context.state`, so later rounds need only the
    digest. Raises `MaskMissingError` when the node lacks the announced mask.
    """
    config = msg.content[configrecord_key]
    if not announces_mask(config):
        return None
    wanted = str(config[MASK_DIGEST])
    if MASK_BLOB in config:
        blob = bytes(config[MASK_BLOB])
        received = SubspaceMask.from_bytes(blob)
        if received.digest != wanted:
            raise MaskMissingError(wanted, received.digest)
        context.state[STATE_KEY] = ConfigRecord({"blob": blob, "digest": wanted})
    stored = context.state.get(STATE_KEY)
    held = str(stored["digest"]) if stored is not None else None
    if held != wanted:
        raise MaskMissingError(wanted, held)
    mask = _decode(bytes(stored["blob"]))
    return mask.complement() if bool(config[MASK_COMPLEMENT]) else mask


@lru_cache(maxsize=4)
def _decode(blob: bytes) -> SubspaceMask:
    # A node decodes the same mask every round; keep the last few.
    return SubspaceMask.from_bytes(blob)


def reply_record(mask: SubspaceMask | None, partition_id: int | None = None) -> ConfigRecord:
    """What a node trained: the subspace (checked by the server) and its partition."""
    record = ConfigRecord()
    if mask is not None:
        record[REPLY_DIGEST] = mask.digest
    if partition_id is not None:
        record[REPLY_PARTITION] = int(partition_id)
    return record


def _reply_field(msg: Message, key: str):
    record = msg.content.config_records.get(REPLY_RECORD)
    return None if record is None or key not in record else record[key]


def trained_digest(msg: Message) -> str | None:
    value = _reply_field(msg, REPLY_DIGEST)
    return None if value is None else str(value)


def reply_order_key(msg: Message) -> tuple[int, int]:
    """Sort key making the server's float sums independent of arrival order.

    Replies that name their partition sort by it (stable across runs); others
    by node id (stable within a run).
    """
    if msg.has_error():
        return (2, int(msg.metadata.src_node_id))
    partition = _reply_field(msg, REPLY_PARTITION)
    return (0, int(partition)) if partition is not None else (1, int(msg.metadata.src_node_id))


def is_mask_missing_reply(msg: Message) -> bool:
    return msg.has_error() and MASK_MISSING in (msg.error.reason or "")
