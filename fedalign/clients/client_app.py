"""fedalign's ClientApp: trains its Dirichlet (or IID, pathological) partition.

Everything comes from the run config (model, data set, partitioner, local
hyper-parameters); `partition-id` / `num-partitions` come from the node config,
in simulation and in deployment alike. The round's subspace mask is received
through `fedalign.protocol`; a node that lacks it replies with an error instead
of training in another subspace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, Subset

from fedalign.clients import scaffold
from fedalign.config import resolve
from fedalign.partition_query import answer_partition_query
from fedalign.protocol import REPLY_RECORD, MaskMissingError, receive_round_mask, reply_record
from fedalign.placement import PLACEMENT_RECORD, placement_record
from fedalign.run_setup import client_eval_set, device_for, model_for, partitions_for, splits_for
from fedalign.transport import AnchorsMissingError, note_anchors, receive_arrays, reply_arrays
from fedalign.training import TrainConfig, evaluate, seeded_loader, train

ERROR_CODE_MASK_MISSING = 7001  # application-level error code for a missing mask
EVAL_BATCH = 512


def _node(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise RuntimeError(
            f"node config lacks {err}; start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None


def _global_model(arrays: ArrayRecord, config) -> torch.nn.Module:
    model = model_for(config)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model.to(device_for(config))


def train_config_for(config, msg_config, server_round: int) -> TrainConfig:
    """Local optimizer settings of a round: lr decays x`lr-decay` per round."""
    return TrainConfig(
        lr=float(config["lr"]) * float(config["lr-decay"]) ** (server_round - 1),
        momentum=float(config["momentum"]),
        weight_decay=float(config["weight-decay"]),
        batch_size=int(config["batch-size"]),
        epochs=int(config["local-epochs"]),
        optimizer=str(config["optimizer"]),
        proximal_mu=float(msg_config.get("proximal-mu", 0.0)),
    )


def train_handler(msg: Message, context: Context, config: Mapping[str, object]) -> Message:
    """Train the global model on this node's partition in the round's subspace."""
    try:
        mask = receive_round_mask(msg, context)
        arrays = receive_arrays(msg, context, mask)  # rebuilt when the server sent it compact
    except (MaskMissingError, AnchorsMissingError) as err:
        return Message(Error(code=ERROR_CODE_MASK_MISSING, reason=str(err)), reply_to=msg)

    pid, num_partitions = _node(context)
    splits = splits_for(config)
    indices = partitions_for(config, num_partitions)[pid]
    msg_config = msg.content["config"]
    server_round = int(msg_config.get("server-round", 1))
    model = _global_model(arrays, config)
    loader = seeded_loader(
        Subset(splits.train, indices.tolist()),
        int(config["batch-size"]),
        seed=int(config["seed"]) * 1_000_003 + pid * 10_007 + server_round,
    )
    started = time.perf_counter()
    train_config = train_config_for(config, msg_config, server_round)
    control = scaffold.server_control(msg)
    if control is None:
        train_loss, control_delta = train(model, loader, train_config, mask=mask), None
    else:  # SCAFFOLD: corrected steps; c_i lives in the node's state
        train_loss, control_delta = scaffold.train_scaffold(
            model, loader, train_config, control, context.state, mask=mask
        )
    metrics = {
        "train-loss": train_loss,
        "num-examples": len(indices),
        "train-seconds": time.perf_counter() - started,
    }
    if config["client-test-eval"]:
        _, metrics["client-test-accuracy"] = evaluate(model, DataLoader(client_eval_set(config), EVAL_BATCH))
    model.to("cpu")
    content = RecordDict({"arrays": reply_arrays(model.state_dict(), msg, mask), "metrics": MetricRecord(metrics)})
    content[PLACEMENT_RECORD] = placement_record(partition_id=pid)
    content[REPLY_RECORD] = reply_record(mask, partition_id=pid)
    if control_delta is not None:
        content[scaffold.DELTA_KEY] = control_delta
    note_anchors(content[REPLY_RECORD], context)
    return Message(content=content, reply_to=msg)


def evaluate_handler(msg: Message, context: Context, config: Mapping[str, object]) -> Message:
    """Evaluate the global model on this node's share of the test split."""
    pid, num_partitions = _node(context)
    test = splits_for(config).test
    share = list(range(pid, len(test), num_partitions))
    loss, accuracy = evaluate(_global_model(msg.content["arrays"], config), DataLoader(Subset(test, share), EVAL_BATCH))
    metrics = MetricRecord({"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(share)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def build_client_app(overrides: Mapping[str, object] | None = None) -> ClientApp:
    """A ClientApp whose run config is the run's own, updated by `overrides`.

    `flwr run` passes the config through `Context.run_config`; the in-process
    simulation (`fedalign.simulation`) passes it as `overrides`.
    """
    client_app = ClientApp()
    extra = dict(overrides or {})

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_handler(msg, context, resolve({**context.run_config, **extra}))

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_handler(msg, context, resolve({**context.run_config, **extra}))

    @client_app.query("partition_id")  # seeded sampling asks which partition a node trains
    def _partition_id(msg: Message, context: Context) -> Message:
        return answer_partition_query(msg, context)

    return client_app


app = build_client_app()
