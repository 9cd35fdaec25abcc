"""Compact transport (SPEC §9) at the message level: forms, losslessness, bytes, lost node state.

The server side is the real strategy (configure_train / aggregate_train on
built Messages); the node side is fedalign's real ClientApp train handler on
digits, or, for the CIFAR-10-shaped CNN (no data needed to count bytes), a
node that runs the same transport calls and moves every trainable entry.
"""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedalign.clients.client_app import train_handler
from fedalign.config import resolve
from fedalign.masks import SubspaceMask
from fedalign.models import build_model
from fedalign.protocol import REPLY_RECORD, MaskMissingError, receive_round_mask, reply_record
from fedalign.strategies import FedPFN, FedPNU, GuardedStrategy
from fedalign.transport import (
    DOWNLINK_ANCHORS,
    AnchorsMissingError,
    compact,
    expand,
    note_anchors,
    receive_arrays,
    reply_arrays,
    reply_form,
)
from fedalign.wire import message_nbytes


@pytest.fixture(autouse=True, scope="module")
def task_identity():  # module scope: set before the module-scoped runs below
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


from stub_grid import StubGrid  # noqa: E402


def fresh_context(node, num_nodes):
    return Context(
        run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": num_nodes},
        state=RecordDict(), run_config={},
    )


class ShiftNode:
    """A node doing exactly the ClientApp's transport steps; 'training' adds `shift` to trainable entries."""

    def __init__(self, node, num_nodes, shift=0.01):
        self.context = fresh_context(node, num_nodes)
        self.shift = shift
        self.received = []

    def __call__(self, msg: Message) -> Message:
        try:
            mask = receive_round_mask(msg, self.context)
            arrays = receive_arrays(msg, self.context, mask)
        except (MaskMissingError, AnchorsMissingError) as err:
            return Message(Error(code=7001, reason=str(err)), reply_to=msg)
        values = {k: v.numpy() for k, v in arrays.items()}
        self.received.append(values)
        trained = {
            k: np.where(mask.tensors[k].numpy(), v + self.shift, v).astype(v.dtype) if mask else v + self.shift
            for k, v in values.items()
        }
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in trained.items()}
        content = RecordDict({
            "arrays": reply_arrays(state, msg, mask),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0}),
        })
        content[REPLY_RECORD] = reply_record(mask, partition_id=int(self.context.node_config["partition-id"]))
        note_anchors(content[REPLY_RECORD], self.context)
        return Message(content=content, reply_to=msg)


class AppNode:
    """fedalign's real ClientApp train handler on a small digits split."""

    def __init__(self, node, num_nodes, config):
        self.context = fresh_context(node, num_nodes)
        self.config = config

    def __call__(self, msg):
        return train_handler(msg, self.context, self.config)


def run_rounds(strategy, model, nodes, rounds):
    """Rounds of configure_train -> node handlers -> aggregate_train; bytes per round and the models."""
    arrays = ArrayRecord(model.state_dict())
    grid = StubGrid(nodes)
    models = [arrays]
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.05}), grid))
        replies = [nodes[m.metadata.dst_node_id](m) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        models.append(arrays)
    return models


def per_node(strategy, server_round, direction):
    return strategy.wire.rounds[server_round][direction]


def digits_config():
    return resolve({"train-size": 120, "test-size": 50, "client-test-eval": False, "batch-size": 32})


# ----------------------------------------------------------------- forms
def test_compact_then_expand_is_bit_identical_and_shapes_are_screened():
    model = build_model("cnn", (3, 32, 32), 10, seed=1)
    values = {k: v.numpy() for k, v in model.state_dict().items()}
    mask = SubspaceMask.sample(model, rho=0.4, seed=2, exclude=["fc2.bias"])
    small = compact(values, mask)
    for name, trainable in mask.tensors.items():
        expected = (int(trainable.sum()),) if not trainable.all() else values[name].shape
        assert small[name].shape == expected and small[name].dtype == values[name].dtype
    trained = {k: v + 1.0 for k, v in values.items()}
    rebuilt = expand(compact(trained, mask), mask, values)
    full_reply = mask.restore_fixed(trained, values)
    for k in values:
        assert rebuilt[k].tobytes() == full_reply[k].tobytes()
    shapes = {k: v.shape for k, v in values.items()}
    assert reply_form(small, mask, shapes) is None and reply_form(values, mask, shapes) is None
    assert "keys differ" in reply_form({**small, "extra": values["fc2.bias"]}, mask, shapes)
    wrong = dict(small, **{"conv1.weight": small["conv1.weight"][:-1]})
    assert "conv1.weight" in reply_form(wrong, mask, shapes)
    assert "conv1.weight" in reply_form(small, None, shapes)  # no compact form without a mask


def test_compact_reply_with_nan_is_rejected():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    strategy = FedPFN(FedAvg(min_available_nodes=2, min_train_nodes=2), model, rho=0.4)
    bad = ShiftNode(2, 2, shift=float("nan"))
    run_rounds(strategy, model, {1: ShiftNode(1, 2), 2: bad}, rounds=1)
    assert strategy.rejected_replies == 1


# ----------------------------------------------------------------- bytes
@pytest.fixture(scope="module")
def digits_bytes():
    """Per node-round bytes of FedAvg, FedPFN (rho 0.4, 0.9), FedPNU on digits through the real ClientApp."""
    config = digits_config()
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    out = {}
    for name, make in {
        "fedavg": lambda: GuardedStrategy(FedAvg()),
        "fedpfn-0.4": lambda: FedPFN(FedAvg(), model, rho=0.4),
        "fedpfn-0.9": lambda: FedPFN(FedAvg(), model, rho=0.9),
        "fedpnu-0.4": lambda: FedPNU(FedAvg(), model, rho=0.4),
    }.items():
        strategy = make()
        run_rounds(strategy, model, {n: AppNode(n, 3, config) for n in (1, 2, 3)}, rounds=3)
        out[name] = strategy
    return out


def test_digits_mlp_bytes_fedavg_is_the_whole_model_both_ways(digits_bytes):
    fedavg = digits_bytes["fedavg"]
    model_bytes = sum(len(a.data) for a in ArrayRecord(build_model("mlp", (1, 8, 8), 10, seed=0).state_dict()).values())
    for r in (1, 2, 3):
        assert set(per_node(fedavg, r, "down").values()) == {model_bytes}
        assert set(per_node(fedavg, r, "up").values()) == {model_bytes}


@pytest.mark.parametrize("name,up_ratio", [("fedpfn-0.4", 0.61), ("fedpfn-0.9", 0.11), ("fedpnu-0.4", 0.61)])
def test_digits_mlp_uplink_carries_the_trainable_fraction(digits_bytes, name, up_ratio):
    full = per_node(digits_bytes["fedavg"], 1, "up")[1]
    strategy = digits_bytes[name]
    for r in (1, 2, 3):
        for node, nbytes in per_node(strategy, r, "up").items():
            assert nbytes <= up_ratio * full, (name, r, node, nbytes / full)
    assert strategy.rejected_replies == 0


def test_digits_mlp_fedpfn_downlink_is_compact_from_round_two(digits_bytes):
    full = per_node(digits_bytes["fedavg"], 1, "down")[1]
    pfn = digits_bytes["fedpfn-0.4"]
    mask_blob = len(pfn.mask.to_bytes())
    assert set(per_node(pfn, 1, "down").values()) == {full + mask_blob}  # full model + mask, once
    for r in (2, 3):
        for nbytes in per_node(pfn, r, "down").values():
            assert nbytes <= 0.61 * full
    # FedPNU: the round's fixed entries were trained last round; the node gets the full model
    pnu = digits_bytes["fedpnu-0.4"]
    for r in (2, 3):
        assert set(per_node(pnu, r, "down").values()) == {full}


def cnn_bytes(strategy, rounds=2):
    model = build_model("cnn", (3, 32, 32), 10, seed=0)
    if strategy is None:
        strategy = GuardedStrategy(FedAvg())
    else:
        strategy = strategy(FedAvg(), model, rho=0.4)
    run_rounds(strategy, model, {n: ShiftNode(n, 2) for n in (1, 2)}, rounds=rounds)
    return strategy


def test_cifar10_cnn_bytes_fedpfn_and_fedpnu():
    fedavg, pfn, pnu = cnn_bytes(None), cnn_bytes(FedPFN), cnn_bytes(FedPNU)
    full = per_node(fedavg, 1, "up")[1]
    model = build_model("cnn", (3, 32, 32), 10, seed=0)
    assert full == sum(len(a.data) for a in ArrayRecord(model.state_dict()).values())
    for r in (1, 2):
        assert max(per_node(pfn, r, "up").values()) <= 0.61 * full
        assert max(per_node(pnu, r, "up").values()) <= 0.61 * full
    assert max(per_node(pfn, 2, "down").values()) <= 0.61 * full
    assert max(per_node(pnu, 2, "down").values()) == full


# ----------------------------------------------------------- losslessness
@pytest.mark.parametrize("strategy_cls", [FedPFN, FedPNU])
@pytest.mark.parametrize("base_cls", [FedAvg, FedAdam])
def test_compact_and_full_transport_give_bit_identical_models(strategy_cls, base_cls):
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=32, depth=1)
    runs = {}
    for transport in ("compact", "full"):
        strategy = strategy_cls(base_cls(), model, rho=0.4, transport=transport)
        nodes = {n: ShiftNode(n, 3, shift=0.01 * n) for n in (1, 2, 3)}
        runs[transport] = (run_rounds(strategy, model, nodes, rounds=4), strategy)
    compact_models, full_models = runs["compact"][0], runs["full"][0]
    for a, b in zip(compact_models, full_models):
        for k in a:
            assert a[k].numpy().tobytes() == b[k].numpy().tobytes()
    up = lambda s: sum(sum(e["up"].values()) for e in s.wire.rounds.values())  # noqa: E731
    assert up(runs["compact"][1]) < 0.65 * up(runs["full"][1])


# ------------------------------------------------------------ lost state
def test_node_that_lost_its_state_says_so_and_gets_the_full_model():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    strategy = FedPFN(FedAvg(min_available_nodes=3, min_train_nodes=2), model, rho=0.4)
    nodes = {n: ShiftNode(n, 3) for n in (1, 2, 3)}
    run_rounds(strategy, model, nodes, rounds=2)
    full = sum(len(a.data) for a in ArrayRecord(model.state_dict()).values())
    blob = len(strategy.mask.to_bytes())
    assert max(per_node(strategy, 2, "down").values()) <= 0.61 * full

    nodes[2].context = fresh_context(2, 3)  # SuperNode restarted: Context gone
    arrays = ArrayRecord(model.state_dict())
    grid = StubGrid(nodes)
    messages = list(strategy.configure_train(3, arrays, ConfigRecord({}), grid))
    assert all(DOWNLINK_ANCHORS in m.content["config"] for m in messages)
    replies = [nodes[m.metadata.dst_node_id](m) for m in messages]
    errors = {r.metadata.src_node_id: r.has_error() for r in replies}
    assert errors == {1: False, 2: True, 3: False}
    assert "mask-missing" in next(r for r in replies if r.has_error()).error.reason
    arrays, metrics = strategy.aggregate_train(3, replies)
    assert strategy.mask_resends == 1 and 2 not in per_node(strategy, 3, "up")

    messages = list(strategy.configure_train(4, arrays, ConfigRecord({}), grid))
    by_node = {m.metadata.dst_node_id: m for m in messages}
    assert DOWNLINK_ANCHORS not in by_node[2].content["config"]
    assert per_node(strategy, 4, "down")[2] == full + blob  # the mask and the full model again
    assert per_node(strategy, 4, "down")[1] <= 0.61 * full
    replies = [nodes[n](m) for n, m in by_node.items()]
    assert not any(r.has_error() for r in replies)
    np.testing.assert_array_equal(  # what node 2 rebuilt equals the full global model
        nodes[2].received[-1]["features.1.weight"], arrays["features.1.weight"].numpy()
    )
    np.testing.assert_array_equal(nodes[1].received[-1]["features.1.weight"], arrays["features.1.weight"].numpy())
    strategy.aggregate_train(4, replies)
    # round 5: node 2 holds the anchors again and gets the compact model
    list(strategy.configure_train(5, arrays, ConfigRecord({}), grid))
    assert per_node(strategy, 5, "down")[2] <= 0.61 * full


def test_node_with_stale_anchors_replies_an_error_not_a_wrong_model():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    strategy = FedPFN(FedAvg(min_available_nodes=1, min_train_nodes=1), model, rho=0.4)
    node = ShiftNode(1, 1)
    run_rounds(strategy, model, {1: node}, rounds=1)
    node.context.state.pop("fedalign-anchors")  # mask kept, anchors lost
    msg = list(strategy.configure_train(2, ArrayRecord(model.state_dict()), ConfigRecord({}), StubGrid([1])))[0]
    with pytest.raises(AnchorsMissingError):
        receive_arrays(msg, node.context, receive_round_mask(msg, node.context))
