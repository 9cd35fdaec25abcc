"""What a subspace message carries: the compact and the full form of the model (SPEC §9).

The one place that knows which coordinates travel. A masked parameter's
*compact form* is its values at the trainable positions of the round mask, in
row-major order, as a 1-D array of its dtype; unmasked parameters (no fixed
entry) and all buffers travel whole. The receiver rebuilds

    full = known;  full[trainable] = compact

where `known` is what it sent (server, uplink: the round's global model) or
what it stored (node, downlink under the fixed schedule: the *anchors*, i.e.
the fixed entries' values, which never change in a FedPFN run). Rebuilding is
exact, so a compact run ends bit-identical to a full one.

Protocol (config keys of a train message, next to `fedalign.protocol`'s):

* `UPLINK` = "compact": the server accepts a compact reply. A node may still
  reply in full (drop-in apps do); the server tells the forms apart by shape
  (`reply_form`), which is unambiguous: a compacted parameter has at least one
  fixed entry, so its compact length is below its element count.
* `KEEP_ANCHORS`: the arrays are full; store the round mask's fixed values
  (in `Context.state`) and report their digest in the reply (`REPLY_ANCHORS`).
* `DOWNLINK_ANCHORS` = digest: the arrays are compact; rebuild them from the
  stored anchors with that digest. A node without them (restarted SuperNode,
  cleared Context) replies with a `MASK_MISSING` error and the server sends it
  the mask and the full model the next time it is sampled.

Only the fixed schedule (FedPFN) gets a compact downlink: under FedPNU the
round's fixed entries were trained in the previous round, and under
`resample` a new mask fixes entries whose latest global values the node never
received, so there the node needs the full model (see docs/transport.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from fedalign.masks import SubspaceMask
from fedalign.protocol import MASK_MISSING, REPLY_RECORD

TRANSPORTS = ("compact", "full")
UPLINK = "fedalign-uplink"  # str "compact": the server accepts compact replies
KEEP_ANCHORS = "fedalign-keep-anchors"  # bool: store this full model's fixed entries
DOWNLINK_ANCHORS = "fedalign-downlink-anchors"  # str digest: arrays are compact, rebuild from anchors
ANCHORS_STATE_KEY = "fedalign-anchors"  # ArrayRecord in Context.state: fixed values per parameter
ANCHORS_META_KEY = "fedalign-anchors-meta"  # ConfigRecord in Context.state: digest, mask digest
REPLY_ANCHORS = "held-anchors-digest"  # reply record field: the anchors this node holds


class AnchorsMissingError(RuntimeError):
    """The server sent a compact model this node cannot rebuild (it lost its stored anchors)."""

    def __init__(self, wanted: str, held: str | None) -> None:
        super().__init__(
            f"{MASK_MISSING} node holds anchors {held or 'none'}, compact model needs {wanted}; "
            "the server re-sends the mask and the full model"
        )


# ---------------------------------------------------------------- array forms
def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for key, value in values.items():
        record[key] = Array.from_numpy_ndarray(np.ascontiguousarray(value))
    return record


def compacted(mask: SubspaceMask) -> dict[str, np.ndarray]:
    """Trainable positions (NumPy bool) of every parameter the compact form shortens."""
    return {n: m.numpy() for n, m in mask.tensors.items() if not bool(m.all())}


def compact_shape(trainable: np.ndarray) -> tuple[int]:
    return (int(trainable.sum()),)


def compact(values: Mapping[str, np.ndarray], mask: SubspaceMask) -> dict[str, np.ndarray]:
    """The compact form: trainable coordinates of masked parameters, the rest whole."""
    short = compacted(mask)
    return {k: np.asarray(v)[short[k]] if k in short else np.asarray(v) for k, v in values.items()}


def expand(
    values: Mapping[str, np.ndarray], mask: SubspaceMask, known: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Full arrays from a message in compact or full form (or a mix, key by key).

    `known[k]` is the full array the receiver already holds for a compacted key;
    its fixed entries are kept, its trainable ones replaced.
    """
    short = compacted(mask)
    out = {}
    for key, value in values.items():
        value = np.asarray(value)
        if key in short and value.shape == compact_shape(short[key]):
            full = np.array(known[key], dtype=value.dtype, copy=True)
            full[short[key]] = value
            out[key] = full
        else:
            out[key] = value
    return out


def reply_form(
    values: Mapping[str, np.ndarray], mask: SubspaceMask | None, full_shapes: Mapping[str, tuple]
) -> str | None:
    """None when every array has its full or (for compacted keys) its compact shape; else the problem."""
    short = compacted(mask) if mask is not None else {}
    if set(values) != set(full_shapes):
        return "array keys differ from the global model"
    for key, value in values.items():
        allowed = {tuple(full_shapes[key])}
        if key in short:
            allowed.add(compact_shape(short[key]))
        if tuple(value.shape) not in allowed:
            return f"shape of {key!r} is {tuple(value.shape)}, expected one of {sorted(allowed)}"
    return None


# --------------------------------------------------------------------- anchors
def anchors_of(values: Mapping[str, np.ndarray], mask: SubspaceMask) -> dict[str, np.ndarray]:
    """The fixed entries' values of every compacted parameter (row-major, 1-D)."""
    return {k: np.asarray(values[k])[~t] for k, t in compacted(mask).items()}


def anchors_digest(anchors: Mapping[str, np.ndarray], mask: SubspaceMask) -> str:
    """SHA-256 over the mask digest and the anchors' names, dtypes and bytes."""
    h = hashlib.sha256(mask.digest.encode())
    for key in sorted(anchors):
        value = np.ascontiguousarray(anchors[key])
        h.update(f"{key}:{value.dtype.str}:{value.size};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def rebuild_from_anchors(
    values: Mapping[str, np.ndarray], mask: SubspaceMask, anchors: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Full arrays from a compact downlink: fixed entries from `anchors`, trainable from `values`."""
    short = compacted(mask)
    out = {}
    for key, value in values.items():
        value = np.asarray(value)
        if key in short:
            full = np.empty(short[key].shape, dtype=value.dtype)
            full[~short[key]] = anchors[key]
            full[short[key]] = value
            out[key] = full
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------- node side
def receive_arrays(
    msg: Message, context: Context, mask: SubspaceMask | None, key: str = "arrays",
    configrecord_key: str = "config",
) -> ArrayRecord:
    """The full global model of a train message, rebuilt when it came compact.

    Stores the anchors when the server asks (`KEEP_ANCHORS`); raises
    `AnchorsMissingError` (an error reply makes the server send the full model)
    when the arrays are compact and this node lacks the anchors they need.
    """
    config = msg.content[configrecord_key]
    record = msg.content[key]
    if mask is None:
        return record
    if DOWNLINK_ANCHORS in config:
        wanted = str(config[DOWNLINK_ANCHORS])
        meta = context.state.get(ANCHORS_META_KEY)
        held = str(meta["digest"]) if meta is not None else None
        if held != wanted or ANCHORS_STATE_KEY not in context.state:
            raise AnchorsMissingError(wanted, held)
        anchors = record_to_numpy(context.state[ANCHORS_STATE_KEY])
        return numpy_to_record(rebuild_from_anchors(record_to_numpy(record), mask, anchors))
    if bool(config.get(KEEP_ANCHORS, False)):
        anchors = anchors_of(record_to_numpy(record), mask)
        context.state[ANCHORS_STATE_KEY] = numpy_to_record(anchors)
        context.state[ANCHORS_META_KEY] = ConfigRecord(
            {"digest": anchors_digest(anchors, mask), "mask-digest": mask.digest}
        )
    return record


def held_anchors(context: Context) -> str | None:
    meta = context.state.get(ANCHORS_META_KEY)
    return None if meta is None else str(meta["digest"])


def reply_anchors(msg: Message) -> str | None:
    """The anchors digest a reply says its node holds (server side)."""
    record = msg.content.config_records.get(REPLY_RECORD) if msg.has_content() else None
    return None if record is None or REPLY_ANCHORS not in record else str(record[REPLY_ANCHORS])


def reply_arrays(
    state: Mapping | ArrayRecord, msg: Message, mask: SubspaceMask | None, configrecord_key: str = "config"
) -> ArrayRecord:
    """The reply's ArrayRecord: compact when the server accepts it and there is a mask."""
    record = state if isinstance(state, ArrayRecord) else ArrayRecord(state)
    config = msg.content[configrecord_key]
    if mask is None or str(config.get(UPLINK, "full")) != "compact":
        return record
    return numpy_to_record(compact(record_to_numpy(record), mask))


def note_anchors(reply: Message | ConfigRecord, context: Context) -> None:
    """Tell the server which anchors this node holds (it then sends compact models)."""
    held = held_anchors(context)
    if held is None:
        return
    record = reply if isinstance(reply, ConfigRecord) else reply.content[REPLY_RECORD]
    record[REPLY_ANCHORS] = held
