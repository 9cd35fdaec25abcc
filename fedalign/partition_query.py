"""How the server learns which data partition a node trains: one light query per node.

Flower gives a server only random node ids; a node's `partition-id` lives in
its node config (set by the simulation engine, or `--node-config` on a
SuperNode). Seeded sampling must choose partitions, not node ids, so before
the first partial-participation round the server sends each new node a
`query.partition_id` message and the node answers with its partition id.
Nodes that do not answer (another ClientApp, a timeout) are sampled by node id.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict

PARTITION_QUERY = "query.partition_id"  # message type; the ClientApp registers @app.query("partition_id")
PARTITION_RECORD = "fedalign-node"
PARTITION_ID = "partition-id"


def partition_query(node_id: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=int(node_id), message_type=PARTITION_QUERY)


def answer_partition_query(msg: Message, context: Context) -> Message:
    """ClientApp side: reply with this node's partition id (from its node config)."""
    record = ConfigRecord({PARTITION_ID: int(context.node_config["partition-id"])})
    return Message(content=RecordDict({PARTITION_RECORD: record}), reply_to=msg)


def partition_of_reply(msg: Message) -> int | None:
    if msg.has_error():
        return None
    record = msg.content.config_records.get(PARTITION_RECORD)
    if record is None or PARTITION_ID not in record:
        return None
    return int(record[PARTITION_ID])
