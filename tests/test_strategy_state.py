"""What a wrapper returns is what its base strategy believes, and buffers are averaged plainly.

Unit tests of the strategy hooks (configure_train / aggregate_train on built
Messages, a grid stand-in with `get_node_ids` only), so each runs in well under
a second; `scripts/mutation_check.py` relies on them to kill its mutants.
"""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from torch import nn

from fedalign.masks import fixed_entries_equal
from fedalign.models import build_model
from fedalign.protocol import reply_record
from fedalign.strategies import FedPFN, FedPNU, GuardedStrategy

BASES = {
    "fedavg": lambda: FedAvg(),
    "fedavgm": lambda: FedAvgM(server_learning_rate=1.0, server_momentum=0.9),
    "fedadam": lambda: FedAdam(eta=0.5, eta_l=0.1),
    "fedyogi": lambda: FedYogi(eta=0.5, eta_l=0.1),
    "fedprox": lambda: FedProx(proximal_mu=0.01),
}
WRAPPERS = {"fedpfn": FedPFN, "fedpnu": FedPNU}


from stub_grid import StubGrid, task_identity  # noqa: E402,F401


def numpy_of(arrays) -> dict:
    return {k: v.numpy().copy() for k, v in arrays.items()}


def reply(request: Message, values: dict, num_examples: int, mask=None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: torch.as_tensor(np.array(v)) for k, v in values.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
        }
    )
    if mask is not None:
        content["fedalign"] = reply_record(mask, partition_id=request.metadata.dst_node_id)
    return Message(content=content, reply_to=request)


def trained(request: Message, mask, server_round: int) -> dict:
    """A client's honest update: trainable entries moved (differently per node and round)."""
    node = request.metadata.dst_node_id
    rng = np.random.default_rng([node, server_round])
    sent = numpy_of(request.content["arrays"])
    out = {}
    for k, v in sent.items():
        if k in mask.tensors:
            step = rng.normal(0.0, 0.05, v.shape).astype(v.dtype)
            out[k] = np.where(mask.tensors[k].numpy(), v + step, v).astype(v.dtype)
        else:
            out[k] = v
    return out


def base_model(base):
    """The base strategy's own notion of the current global model (None if it keeps none)."""
    current = getattr(base, "current_arrays", None)
    if current is None:
        return None
    if isinstance(current, ArrayRecord):
        return numpy_of(current)
    return {k: np.asarray(v) for k, v in current.items()}


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_fixed_entries_exact_and_base_state_in_sync(wrapper, base_name):
    """After every round the base's current model equals the model the wrapper returns."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    arrays = ArrayRecord(model.state_dict())
    base = BASES[base_name]()
    strategy = WRAPPERS[wrapper](base, model, rho=0.4, seed=1)
    grid = StubGrid([1, 2, 3])
    for server_round in range(1, 7):
        round_mask = strategy.round_mask(server_round)
        before = numpy_of(arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        replies = [reply(m, trained(m, round_mask, server_round), 10 * m.metadata.dst_node_id, round_mask) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        after = numpy_of(arrays)
        assert fixed_entries_equal(round_mask, before, after), f"round {server_round} moved fixed entries"
        moved = after["classifier.weight"] != before["classifier.weight"]
        assert moved[round_mask.tensors["classifier.weight"].numpy()].mean() > 0.9
        believed = base_model(base)
        if base_name in ("fedavgm", "fedadam", "fedyogi"):
            assert believed is not None
        if believed is not None:
            for k, v in after.items():
                assert believed[k].tobytes() == v.astype(believed[k].dtype).tobytes(), (
                    f"round {server_round}: base's {k} differs from the returned model"
                )


def test_fedpnu_over_fedavgm_is_projected_heavy_ball():
    """The documented semantics: the server optimizer sees a zero pseudo-gradient on
    the round's fixed entries, its step there is discarded, and its momentum is kept
    (it decays like any zero-gradient step). Checked against a NumPy reference over
    six rounds; before the base was re-synced this drifted by ~1e-2 from round 3."""
    lr, beta = 1.0, 0.9
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    arrays = ArrayRecord(model.state_dict())
    strategy = FedPNU(FedAvgM(server_learning_rate=lr, server_momentum=beta), model, rho=0.4, seed=1)
    grid = StubGrid([1, 2, 3])
    x = {k: v.astype(np.float64) for k, v in numpy_of(arrays).items()}
    momentum = None
    for server_round in range(1, 7):
        round_mask = strategy.round_mask(server_round)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        updates = {m.metadata.dst_node_id: trained(m, round_mask, server_round) for m in messages}
        weights = {n: 10.0 * n for n in updates}
        replies = [reply(m, updates[m.metadata.dst_node_id], int(weights[m.metadata.dst_node_id]), round_mask) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        total = sum(weights.values())
        average = {k: sum(weights[n] / total * updates[n][k].astype(np.float64) for n in updates) for k in x}
        pseudo = {k: x[k] - average[k] for k in x}
        momentum = pseudo if momentum is None else {k: beta * momentum[k] + pseudo[k] for k in x}
        x = {
            k: np.where(round_mask.tensors[k].numpy(), x[k] - lr * momentum[k], x[k]) if k in round_mask.tensors else x[k]
            for k in x
        }
        got = numpy_of(arrays)
        for k in x:
            np.testing.assert_allclose(got[k], x[k], atol=2e-5, rtol=0, err_msg=f"round {server_round} {k}")


# ------------------------------------------------------------------ buffers
class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


BUFFER_KEYS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def bn_update(request: Message, mask, server_round: int) -> dict:
    """Trainable parameters move; BN statistics are replaced by what the client saw."""
    node = request.metadata.dst_node_id
    out = trained(request, mask, server_round) if mask is not None else numpy_of(request.content["arrays"])
    rng = np.random.default_rng([node, server_round, 7])
    out["bn.running_mean"] = rng.normal(0, 1, 6).astype(np.float32)
    out["bn.running_var"] = (0.05 + 0.01 * rng.random(6)).astype(np.float32)  # always positive
    out["bn.num_batches_tracked"] = np.asarray(out["bn.num_batches_tracked"] + 7, dtype=np.int64)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda model: FedPFN(FedAdam(eta=0.5, eta_l=0.1), model, rho=0.4, seed=1),
        lambda model: FedPFN(FedYogi(eta=0.5, eta_l=0.1), model, rho=0.4, seed=1),
        lambda model: FedPNU(FedAdam(eta=0.5, eta_l=0.1), model, rho=0.4, seed=1),
        lambda model: GuardedStrategy(FedAdam(eta=0.5, eta_l=0.1), buffers=model),
        lambda model: GuardedStrategy(FedAvg(), buffers=model),
    ],
    ids=["fedpfn+fedadam", "fedpfn+fedyogi", "fedpnu+fedadam", "guarded-fedadam", "guarded-fedavg"],
)
def test_buffers_are_averaged_plainly_and_integers_rounded(make):
    model = TinyBN()
    arrays = ArrayRecord(model.state_dict())
    strategy = make(model)
    grid = StubGrid([1, 2, 3])
    for server_round in range(1, 5):
        mask = strategy.round_mask(server_round) if hasattr(strategy, "round_mask") else None
        before = numpy_of(arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        updates = {m.metadata.dst_node_id: bn_update(m, mask, server_round) for m in messages}
        weights = {1: 10, 2: 20, 3: 45}
        replies = [reply(m, updates[m.metadata.dst_node_id], weights[m.metadata.dst_node_id], mask) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        got = numpy_of(arrays)
        total = sum(weights.values())
        for key in ("bn.running_mean", "bn.running_var"):
            expected = sum(weights[n] / total * updates[n][key].astype(np.float64) for n in updates)
            np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-7, err_msg=f"round {server_round} {key}")
            assert got[key].dtype == np.float32
        assert (got["bn.running_var"] > 0).all()
        assert got["bn.num_batches_tracked"].dtype == np.int64
        assert int(got["bn.num_batches_tracked"]) == int(before["bn.num_batches_tracked"]) + 7
        believed = base_model(strategy.base)
        if believed is not None:
            for k in BUFFER_KEYS:
                assert believed[k].tobytes() == got[k].astype(believed[k].dtype).tobytes()


def test_three_clients_at_seven_batches_give_seven_not_six():
    """The float average of 7, 7, 7 with weights 1/3 is 6.999...; truncation made it 6."""
    model = TinyBN()
    arrays = ArrayRecord(model.state_dict())
    strategy = GuardedStrategy(FedAvg())  # integer arrays are buffers even without the model
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid([1, 2, 3])))
    replies = []
    for m in messages:
        values = numpy_of(m.content["arrays"])
        values["bn.num_batches_tracked"] = np.asarray(7, dtype=np.int64)
        replies.append(reply(m, values, 1))
    out, _ = strategy.aggregate_train(1, replies)
    assert int(out["bn.num_batches_tracked"].numpy()) == 7
