"""Strategy unit tests in Flower's style: configure_train / aggregate_train on built Messages.

The grid is a stand-in with `get_node_ids` only (a unit test of the strategy
hooks); the real simulation engine is exercised in test_simulation.py.
"""

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi

from fedalign.masks import fixed_entries_equal
from fedalign.models import build_model
from fedalign.protocol import (
    MASK_BLOB,
    MASK_COMPLEMENT,
    MASK_DIGEST,
    MaskMissingError,
    receive_round_mask,
    reply_record,
)
from fedalign.strategies import FedPFN, FedPNU, GuardedStrategy, NotEnoughNodesError


from stub_grid import StubGrid, task_identity  # noqa: E402,F401


def model_and_arrays(seed=0):
    model = build_model("mlp", (1, 8, 8), 10, seed=seed, width=16, depth=1)
    return model, ArrayRecord(model.state_dict())


def client_reply(request: Message, arrays: dict, num_examples=10, mask=None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: torch.as_tensor(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
        }
    )
    if mask is not None:
        content["fedalign"] = reply_record(mask)
    return Message(content=content, reply_to=request)


def honest_update(request: Message, mask, shift=0.1) -> dict:
    """What a masked client returns: trainable entries moved, fixed entries intact."""
    sent = {k: v.numpy() for k, v in request.content["arrays"].items()}
    return {
        k: np.where(mask.tensors[k].numpy(), v + shift, v).astype(v.dtype) if k in mask.tensors else v
        for k, v in sent.items()
    }


def run_round(strategy, server_round, arrays, grid, make_update):
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}), grid))
    replies = [make_update(m) for m in messages]
    new_arrays, metrics = strategy.aggregate_train(server_round, replies)
    return messages, new_arrays, metrics


def test_mask_is_sent_once_per_node_then_only_the_digest():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(), model, rho=0.4, seed=3)
    grid = StubGrid([11, 12, 13])
    mask = strategy.mask
    for server_round in (1, 2, 3):
        messages, arrays, _ = run_round(
            strategy, server_round, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask)
        )
        for msg in messages:
            config = msg.content["config"]
            assert config[MASK_DIGEST] == mask.digest
            assert config[MASK_COMPLEMENT] is False
            assert (MASK_BLOB in config) == (server_round == 1)
    assert dict(strategy.mask_sends) == {11: 1, 12: 1, 13: 1}
    assert strategy.mask_bytes_sent == 3 * len(mask.to_bytes())  # the whole blob, header included


def test_node_joining_late_gets_the_mask_on_its_first_round():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(), model)
    mask = strategy.mask
    grid = StubGrid([1, 2])
    run_round(strategy, 1, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask))
    grid.node_ids.append(3)
    messages, _, _ = run_round(
        strategy, 2, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask)
    )
    blobs = {m.metadata.dst_node_id: MASK_BLOB in m.content["config"] for m in messages}
    assert blobs == {1: False, 2: False, 3: True}
    assert strategy.node_log[3]["first_round"] == 2
    assert strategy.node_log[3]["verified_rounds"] == [2]


def test_node_lacking_the_mask_is_not_averaged_and_gets_it_resent():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(), model)
    mask = strategy.mask
    grid = StubGrid([1, 2])
    run_round(strategy, 1, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask))

    def lost_state(m):  # node 2 restarted and lost its Context
        if m.metadata.dst_node_id == 2:
            err = MaskMissingError(mask.digest, None)
            return Message(Error(code=7001, reason=str(err)), reply_to=m)
        return client_reply(m, honest_update(m, mask, shift=0.5), mask=mask)

    _, new_arrays, metrics = run_round(strategy, 2, arrays, grid, lost_state)
    # Only node 1 was averaged: the trainable entries moved by exactly its shift.
    w_old, w_new = arrays["classifier.weight"].numpy(), new_arrays["classifier.weight"].numpy()
    trainable = mask.tensors["classifier.weight"].numpy()
    np.testing.assert_allclose(w_new[trainable], w_old[trainable] + 0.5, rtol=1e-6)
    assert metrics["mask-resends"] == 1
    messages = list(strategy.configure_train(3, arrays, ConfigRecord({}), grid))
    blobs = {m.metadata.dst_node_id: MASK_BLOB in m.content["config"] for m in messages}
    assert blobs == {1: False, 2: True}


@pytest.mark.parametrize("base_cls", [FedAdam, FedYogi])
def test_composed_with_server_optimizers_fixed_entries_stay_fixed(base_cls):
    model, arrays = model_and_arrays()
    initial = {k: v.numpy().copy() for k, v in arrays.items()}
    strategy = FedPFN(base_cls(eta=0.5, eta_l=0.1), model, rho=0.4, seed=1)
    mask = strategy.mask
    grid = StubGrid([1, 2, 3])
    for server_round in range(1, 5):
        _, arrays, _ = run_round(
            strategy, server_round, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask)
        )
    final = {k: v.numpy() for k, v in arrays.items()}
    assert fixed_entries_equal(mask, initial, final)
    moved = final["classifier.weight"] != initial["classifier.weight"]
    assert moved[mask.tensors["classifier.weight"].numpy()].all()


def test_aggregation_restores_fixed_entries_even_if_the_base_moves_them():
    """A FedAdam server step with momentum from earlier rounds moves every entry."""
    model, arrays = model_and_arrays()
    initial = {k: v.numpy().copy() for k, v in arrays.items()}
    plain = FedAdam(eta=0.5, eta_l=0.1)
    wrapped = FedPFN(FedAdam(eta=0.5, eta_l=0.1), model)
    mask = wrapped.mask
    grid = StubGrid([1, 2])
    everything_moves = lambda m: client_reply(  # noqa: E731 - a client ignoring the mask
        m, {k: v.numpy() + 0.1 for k, v in m.content["arrays"].items()}
    )
    _, plain_out, _ = run_round(plain, 1, arrays, grid, everything_moves)
    assert not fixed_entries_equal(mask, initial, {k: v.numpy() for k, v in plain_out.items()})
    # The wrapper rejects such replies outright (they left the subspace) ...
    _, out, metrics = run_round(wrapped, 1, arrays, grid, everything_moves)
    assert out is None and metrics["rejected-replies"] == 2
    # ... and restores fixed entries after any base aggregation of honest replies.
    _, out, _ = run_round(wrapped, 2, arrays, grid, lambda m: client_reply(m, honest_update(m, mask), mask=mask))
    assert fixed_entries_equal(mask, initial, {k: v.numpy() for k, v in out.items()})


def test_fedpnu_alternates_mask_and_complement():
    model, arrays = model_and_arrays()
    initial = {k: v.numpy().copy() for k, v in arrays.items()}
    strategy = FedPNU(FedAvg(), model, rho=0.4, seed=2)
    grid = StubGrid([1, 2])
    changed = {k: np.zeros(v.shape, bool) for k, v in initial.items() if k in strategy.mask.tensors}
    for server_round in range(1, 5):
        round_mask = strategy.round_mask(server_round)
        before = {k: v.numpy().copy() for k, v in arrays.items()}
        messages, arrays, _ = run_round(
            strategy,
            server_round,
            arrays,
            grid,
            lambda m, rm=round_mask: client_reply(m, honest_update(m, rm), mask=rm),
        )
        assert all(m.content["config"][MASK_COMPLEMENT] == (server_round % 2 == 0) for m in messages)
        after = {k: v.numpy() for k, v in arrays.items()}
        assert fixed_entries_equal(round_mask, before, after)
        for k in changed:
            changed[k] |= after[k] != before[k]
    assert all(c.all() for c in changed.values())  # every entry updated at least once


def test_nan_inf_and_wrong_shapes_are_rejected_and_counted():
    model, arrays = model_and_arrays()
    strategy = GuardedStrategy(FedAvg())
    grid = StubGrid([1, 2, 3, 4])

    def replies(m):
        sent = {k: v.numpy() for k, v in m.content["arrays"].items()}
        node = m.metadata.dst_node_id
        if node == 2:
            sent["classifier.weight"] = sent["classifier.weight"].copy()
            sent["classifier.weight"][0, 0] = np.nan
        elif node == 3:
            sent["classifier.bias"] = np.full_like(sent["classifier.bias"], np.inf)
        elif node == 4:
            sent["classifier.weight"] = np.zeros((3, 3), np.float32)
        else:
            sent = {k: v + 1.0 for k, v in sent.items()}
        return client_reply(m, sent)

    _, out, metrics = run_round(strategy, 1, arrays, grid, replies)
    assert metrics["rejected-replies"] == 3
    assert strategy.rejected_replies == 3
    for k, v in out.items():  # only node 1 (all +1.0) was averaged
        np.testing.assert_allclose(v.numpy(), arrays[k].numpy() + 1.0, rtol=1e-6)


def test_reply_from_another_subspace_is_rejected():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(), model, seed=0)
    other = FedPFN(FedAvg(), model, seed=99).mask
    grid = StubGrid([1, 2])
    _, out, metrics = run_round(
        strategy, 1, arrays, grid, lambda m: client_reply(m, honest_update(m, strategy.mask), mask=other)
    )
    assert out is None and metrics["rejected-replies"] == 2


def test_too_few_nodes_fails_fast_instead_of_hanging():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(min_available_nodes=4, min_train_nodes=4), model, node_wait_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NotEnoughNodesError, match="only 2 of the 4 nodes"):
        strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid([1, 2]))
    assert time.monotonic() - started < 5


def test_client_side_protocol_stores_the_mask_and_detects_stale_digests():
    model, arrays = model_and_arrays()
    strategy = FedPNU(FedAvg(min_available_nodes=1, min_train_nodes=1), model, node_wait_timeout=1)
    grid = StubGrid([5])
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    first = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))[0]
    assert receive_round_mask(first, context).digest == strategy.round_mask(1).digest
    strategy.aggregate_train(1, [])
    second = list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))[0]
    assert MASK_BLOB not in second.content["config"]
    assert receive_round_mask(second, context).digest == strategy.round_mask(2).digest
    fresh = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(MaskMissingError):
        receive_round_mask(second, fresh)


def test_weight_matching_baseline_undoes_a_permuted_client():
    """A client returning the global model with hidden units permuted is matched back."""
    from fedalign.matching import apply_permutation, random_permutation, spec_for
    from fedalign.strategies.matched import WeightMatchedStrategy

    model, arrays = model_and_arrays()
    spec = spec_for(model)
    state = model.state_dict()
    perm = random_permutation(spec, state, seed=5)
    permuted = apply_permutation(spec, perm, state)
    assert not torch.equal(permuted["features.1.weight"], state["features.1.weight"])
    grid = StubGrid([1, 2])

    def replies(m):
        if m.metadata.dst_node_id == 1:
            return client_reply(m, {k: v.numpy() for k, v in permuted.items()})
        return client_reply(m, {k: v.numpy() for k, v in state.items()})

    _, plain_out, _ = run_round(GuardedStrategy(FedAvg()), 1, arrays, grid, replies)
    assert not np.allclose(plain_out["features.1.weight"].numpy(), state["features.1.weight"].numpy())
    _, out, metrics = run_round(WeightMatchedStrategy(FedAvg(), model), 1, arrays, grid, replies)
    for k, v in state.items():
        np.testing.assert_allclose(out[k].numpy(), v.numpy(), atol=1e-6)
    assert metrics["wm-iterations"] >= 2 and metrics["wm-seconds"] > 0


def test_resample_schedule_sends_a_fresh_mask_every_k_rounds():
    from fedalign.strategies import MaskSchedule, SubspaceStrategy

    model, arrays = model_and_arrays()
    strategy = SubspaceStrategy(FedAvg(), model, schedule=MaskSchedule("resample", every=2))
    grid = StubGrid([1, 2])
    digests = []
    for server_round in range(1, 6):
        round_mask = strategy.round_mask(server_round)
        messages, arrays, _ = run_round(
            strategy, server_round, arrays, grid,
            lambda m, rm=round_mask: client_reply(m, honest_update(m, rm), mask=rm),
        )
        config = messages[0].content["config"]
        digests.append(config[MASK_DIGEST])
        assert (MASK_BLOB in config) == (server_round in (1, 3, 5))
    assert digests[0] == digests[1] != digests[2] == digests[3] != digests[4]
    assert dict(strategy.mask_sends) == {1: 3, 2: 3}


def test_replies_are_averaged_in_partition_order_whatever_their_arrival():
    """Float sums depend on order; sorting by partition makes seeded runs reproducible."""
    from fedalign.protocol import REPLY_RECORD

    model, arrays = model_and_arrays()
    rng = np.random.default_rng(0)
    updates = {
        node: {k: (v.numpy() + rng.normal(0, 1, v.numpy().shape)).astype(np.float32) for k, v in arrays.items()}
        for node in (1, 2, 3, 4)
    }
    outs = []
    for order in ([1, 2, 3, 4], [4, 2, 1, 3]):
        strategy = GuardedStrategy(FedAvg())
        messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid(order))}
        replies = []
        for node in order:
            reply = client_reply(messages[node], updates[node], num_examples=7 * node)
            reply.content[REPLY_RECORD] = reply_record(None, partition_id=10 - node)
            replies.append(reply)
        out, _ = strategy.aggregate_train(1, replies)
        outs.append({k: v.numpy() for k, v in out.items()})
    for k in outs[0]:
        assert outs[0][k].tobytes() == outs[1][k].tobytes()
