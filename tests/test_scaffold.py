"""SCAFFOLD (SPEC §8): hand-computed control variates, FedAvg equivalence, subspace composition.

The in-process tests drive the real strategy (`build_strategy`) and the real
ClientApp train handler with a stand-in grid (only `get_node_ids`) and real
`Context`s, so c_i in each node's state can be inspected; the Ray simulation
test runs FedPFN over SCAFFOLD in Flower's Simulation Runtime.
"""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import DataLoader, TensorDataset

from fedalign.clients import scaffold as client_scaffold
from fedalign.clients.client_app import train_handler
from fedalign.config import resolve
from fedalign.masks import SubspaceMask, fixed_entries_equal
from fedalign.run_setup import model_for
from fedalign.strategies import FedPFN, build_strategy
from fedalign.strategies.scaffold import CONTROL_KEY, DELTA_KEY, Scaffold
from fedalign.training import TrainConfig


from stub_grid import StubGrid, task_identity  # noqa: E402,F401


# ------------------------------------------------- two-client quadratic by hand
class Scalar(torch.nn.Module):
    """One parameter w; the 'prediction' is w for every sample."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([w0]))

    def forward(self, x):
        return self.w.expand(len(x))


def quadratic(a: float):
    """f_i(w) = a/2 (w - b)^2 with b the sample's target: gradient a (w - b)."""
    return lambda out, target: 0.5 * a * ((out - target) ** 2).mean()


CLIENTS = {1: (1.0, 1.0), 2: (2.0, -1.0)}  # node -> (a_i, b_i)


def quadratic_client(msg: Message, state: RecordDict, a: float, b: float) -> Message:
    model = Scalar(0.0)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = DataLoader(TensorDataset(torch.zeros(1), torch.tensor([b])), batch_size=1)
    cfg = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, epochs=2)  # K = 2 steps
    control = client_scaffold.server_control(msg)
    _, delta = client_scaffold.train_scaffold(model, loader, cfg, control, state, criterion=quadratic(a))
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"num-examples": 5}),
        DELTA_KEY: delta,
    })
    return Message(content=content, reply_to=msg)


def test_two_client_quadratic_matches_the_hand_computation():
    """lr 0.1, K = 2, N = 2, x0 = 0, f_1 = (w-1)^2/2, f_2 = (w+1)^2 (a=2, b=-1).

    Round 1 (c = c_i = 0): client 1: 0 -> 0.1 -> 0.19; c_1 = (0 - 0.19)/0.2 = -0.95.
      client 2: 0 -> -0.2 -> -0.36; c_2 = 0.36/0.2 = 1.8.
      server: x = (0.19 - 0.36)/2 = -0.085; c = (-0.95 + 1.8)/2 = 0.425.
    Round 2 (correction c - c_1 = 1.375, c - c_2 = -1.375):
      client 1: g = (w - 1) + 1.375: -0.085 -> -0.114 -> -0.1401;
        c_1 = -0.95 - 0.425 + (-0.085 + 0.1401)/0.2 = -1.0995.
      client 2: g = 2 (w + 1) - 1.375: -0.085 -> -0.1305 -> -0.1669;
        c_2 = 1.8 - 0.425 + (-0.085 + 0.1669)/0.2 = 1.7845.
      server: x = -0.1535; c = 0.425 + (-0.1495 - 0.0155)/2 = 0.3425 (= mean c_i).
    """
    strategy = Scaffold(min_available_nodes=2, min_train_nodes=2, parameter_names=["w"])
    grid = StubGrid(CLIENTS)
    states = {node: RecordDict() for node in CLIENTS}
    arrays = ArrayRecord(Scalar(0.0).state_dict())
    expected = [  # (c_1, c_2, x, c) after each round
        (-0.95, 1.8, -0.085, 0.425),
        (-1.0995, 1.7845, -0.1535, 0.3425),
    ]
    for server_round, (c1, c2, x, c) in enumerate(expected, start=1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        assert all(CONTROL_KEY in m.content.array_records for m in messages)
        replies = [
            quadratic_client(m, states[m.metadata.dst_node_id], *CLIENTS[m.metadata.dst_node_id])
            for m in messages
        ]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        c_i = {n: float(states[n][client_scaffold.STATE_KEY]["w"].numpy()[0]) for n in CLIENTS}
        assert c_i[1] == pytest.approx(c1, abs=1e-6)
        assert c_i[2] == pytest.approx(c2, abs=1e-6)
        assert float(arrays["w"].numpy()[0]) == pytest.approx(x, abs=1e-6)
        assert float(strategy.control["w"][0]) == pytest.approx(c, abs=1e-6)


@pytest.mark.parametrize("momentum, steps", [(0.0, 3), (0.9, 1), (0.9, 7), (0.9, 40), (0.5, 12)])
def test_option2_recovers_a_constant_gradient_under_momentum(momentum, steps):
    """f(w) = g . w has gradient g everywhere, so option II's c_i must be g exactly.

    With momentum 0.9 and 40 steps, dividing by K * lr (SPEC §8 read for plain
    SGD) would give ~8x g; that overstatement made SCAFFOLD diverge on CIFAR-10.
    """
    g = torch.tensor([0.5, -2.0, 3.0])
    model = Scalar(0.0)
    model.w = torch.nn.Parameter(torch.zeros(3))
    model.forward = lambda x: model.w
    loader = DataLoader(TensorDataset(torch.zeros(steps)), batch_size=1)
    cfg = TrainConfig(lr=0.05, momentum=momentum, weight_decay=0.0, epochs=1)
    state = RecordDict()
    criterion = lambda out, _target: (g * out).sum()  # noqa: E731
    batches = [(x, x) for (x,) in loader]  # train() wants (inputs, targets)
    _, delta = client_scaffold.train_scaffold(model, batches, cfg, {}, state, criterion=criterion)
    c_i = state[client_scaffold.STATE_KEY]["w"].numpy()
    np.testing.assert_allclose(c_i, g.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(delta["w"].numpy(), c_i)  # c_i was 0: dc = c_i+
    distance = -model.w.detach() / g  # how far a unit gradient moved w in the K steps
    np.testing.assert_allclose(distance.numpy(), client_scaffold.option2_scale(steps, cfg), rtol=1e-5)


def test_server_control_scales_by_sampled_over_federation_size():
    """c <- c + (|S|/N) mean(dc): 2 of 4 nodes reply, so c = (dc_1 + dc_2) / 4."""
    strategy = Scaffold(fraction_train=0.5, min_available_nodes=2, min_train_nodes=2, parameter_names=["w"])
    arrays = ArrayRecord(Scalar(0.0).state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid([1, 2, 3, 4])))
    assert len(messages) == 2
    dcs = [np.array([0.4], np.float32), np.array([1.2], np.float32)]
    replies = []
    for msg, dc in zip(messages, dcs):
        content = RecordDict({
            "arrays": ArrayRecord({"w": torch.tensor([0.5])}),
            "metrics": MetricRecord({"num-examples": 1}),
            DELTA_KEY: ArrayRecord({"w": torch.from_numpy(dc)}),
        })
        replies.append(Message(content=content, reply_to=msg))
    new, _ = strategy.aggregate_train(1, replies)
    assert float(strategy.control["w"][0]) == pytest.approx(1.6 / 4, abs=1e-7)
    assert float(new["w"].numpy()[0]) == pytest.approx(0.5)  # dc is not averaged into the model


def test_server_lr_scales_the_averaged_update():
    strategy = Scaffold(server_lr=0.5, min_available_nodes=1, min_train_nodes=1, parameter_names=["w"])
    arrays = ArrayRecord({"w": torch.tensor([1.0])})
    msg = list(strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid([1])))[0]
    content = RecordDict({
        "arrays": ArrayRecord({"w": torch.tensor([3.0])}),
        "metrics": MetricRecord({"num-examples": 1}),
        DELTA_KEY: ArrayRecord({"w": torch.tensor([0.0])}),
    })
    new, _ = strategy.aggregate_train(1, [Message(content=content, reply_to=msg)])
    assert float(new["w"].numpy()[0]) == pytest.approx(2.0)  # 1 + 0.5 * (3 - 1)


# ------------------------------------------- real client handler, in process
BASE = {
    "dataset": "digits", "model": "mlp", "model-args": "width=16,depth=1", "train-size": 300,
    "test-size": 100, "batch-size": 32, "lr": 0.1, "lr-decay": 0.9, "momentum": 0.9,
    "weight-decay": 5e-4, "local-epochs": 1, "client-test-eval": False, "min-nodes": 3,
    "partitioner": "iid",
}  # fmt: skip


def drive(overrides, node_config, rounds=3):
    """Run `rounds` rounds of the real strategy and train handler; return arrays, strategy, contexts."""
    config = resolve({**BASE, **overrides})
    model = model_for(config)
    strategy = build_strategy(config, model)
    contexts = {
        node: Context(run_id=1, node_id=node, node_config=nc, state=RecordDict(), run_config={})
        for node, nc in node_config.items()
    }
    grid = StubGrid(contexts)
    arrays = ArrayRecord(model.state_dict())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    controls = []
    for server_round in range(1, rounds + 1):
        messages = strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}), grid)
        replies = [train_handler(m, contexts[m.metadata.dst_node_id], config) for m in messages]
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        assert metrics["rejected-replies"] == 0
        if hasattr(strategy, "control"):
            controls.append({k: v.copy() for k, v in strategy.control.items()})
    return arrays, strategy, contexts, initial, controls


IDENTICAL = {node: {"partition-id": 0, "num-partitions": 1} for node in (1, 2, 3)}


def test_identical_clients_give_fedavgs_model_bit_for_bit():
    """Identical clients: every c_i equals c, the correction is exactly zero.

    Exact, not approximate: the server averages dc in float64 (the mean of
    identical float32 values is exact) and applies c + dc with the same float
    rounding the client uses for c_i + dc, so c - c_i == 0 and g + 0 == g.
    """
    fedavg, *_ = drive({"strategy": "fedavg"}, IDENTICAL)
    scaffold, strategy, contexts, _, controls = drive({"strategy": "scaffold"}, IDENTICAL)
    for key in fedavg.keys():
        assert fedavg[key].numpy().tobytes() == scaffold[key].numpy().tobytes(), key
    assert any(np.abs(v).max() > 1e-3 for v in controls[0].values())  # c moved: the check has teeth
    for node, context in contexts.items():
        c_i = context.state[client_scaffold.STATE_KEY]
        for name, c in strategy.control.items():
            assert c_i[name].numpy().tobytes() == c.tobytes(), (node, name)


def test_different_clients_differ_from_fedavg():
    nodes = {node: {"partition-id": node, "num-partitions": 3} for node in (0, 1, 2)}
    fedavg, *_ = drive({"strategy": "fedavg", "partitioner": "dirichlet", "alpha": 0.3}, nodes, rounds=2)
    scaffold, *_ = drive({"strategy": "scaffold", "partitioner": "dirichlet", "alpha": 0.3}, nodes, rounds=2)
    diff = max(float(np.abs(fedavg[k].numpy() - scaffold[k].numpy()).max()) for k in fedavg.keys())
    assert diff > 1e-4


def test_fedpfn_over_scaffold_keeps_fixed_entries_and_control_variates_zero_in_process():
    nodes = {node: {"partition-id": node, "num-partitions": 3} for node in (0, 1, 2)}
    arrays, strategy, contexts, initial, controls = drive(
        {"strategy": "fedpfn", "base-strategy": "scaffold", "partitioner": "dirichlet", "alpha": 0.3}, nodes
    )
    mask = strategy.mask
    final = arrays.to_torch_state_dict()
    assert fixed_entries_equal(mask, final, initial)
    for c in controls:
        for name, trainable in mask.tensors.items():
            assert not c[name][~trainable.numpy()].any(), name
    assert any(np.abs(c).max() > 1e-3 for c in controls[-1].values())
    for context in contexts.values():
        c_i = context.state[client_scaffold.STATE_KEY]
        for name, trainable in mask.tensors.items():
            values = c_i[name].numpy()
            assert not values[~trainable.numpy()].any(), name
            assert values[trainable.numpy()].any(), name


# ----------------------------------------------------- reply screening
def test_subspace_wrapper_rejects_a_control_delta_on_fixed_entries():
    model = Scalar2()
    strategy = FedPFN(Scaffold(min_available_nodes=1, min_train_nodes=1), model, rho=0.5, seed=1)
    strategy.max_failed_rounds = 10  # replies are rejected on purpose, round after round
    mask = strategy.mask
    fixed = ~mask.tensors["w"].numpy()
    assert fixed.any() and (~fixed).any()
    arrays = ArrayRecord(model.state_dict())

    def reply(msg, dc, with_delta=True):
        content = RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": 1}),
        })
        if with_delta:
            content[DELTA_KEY] = ArrayRecord({"w": torch.from_numpy(dc)})
        return Message(content=content, reply_to=msg)

    good = np.where(fixed, 0.0, 0.3).astype(np.float32)
    bad = np.where(fixed, 0.3, 0.0).astype(np.float32)
    nan = np.where(fixed, 0.0, np.nan).astype(np.float32)
    for server_round, (dc, with_delta, rejected) in enumerate(
        [(good, True, 0), (bad, True, 1), (good, False, 2), (nan, True, 3), (good[:10], True, 4)], start=1
    ):
        msg = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), StubGrid([1])))[0]
        _, metrics = strategy.aggregate_train(server_round, [reply(msg, dc, with_delta)])
        assert metrics["rejected-replies"] == rejected
    assert not strategy.base.control["w"][fixed].any()


class Scalar2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(64, dtype=torch.float32))


# ----------------------------------------------------- Ray simulation
@pytest.mark.slow
def test_fedpfn_over_scaffold_in_the_simulation_runtime(tmp_path, flwr_env):
    from fedalign.simulation import simulate

    out = tmp_path / "run"
    record = simulate(
        {**BASE, "strategy": "fedpfn", "base-strategy": "scaffold", "partitioner": "dirichlet",
         "alpha": 0.3, "num-rounds": 3, "output-dir": str(out)},
        num_supernodes=3,
    )
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, final, initial)
    assert record["rejected_replies"] == 0
    assert len(record["rounds"]) == 4 and record["rounds"][-1]["accuracy"] > 0.2
    control = torch.load(out / "scaffold_c.pt", weights_only=True)
    assert set(control) == set(mask.tensors)
    for name, trainable in mask.tensors.items():
        assert not control[name][~trainable].any(), name
    assert any(bool(control[n][mask.tensors[n]].any()) for n in control)


def test_client_update_uses_the_rounds_decayed_lr_and_the_steps_taken():
    """c_i+ = c_i - c + (x - y) / S(K, lr_r): round 3 with lr-decay 0.5 has lr_r = lr / 4."""
    config = resolve({**BASE, "strategy": "scaffold", "lr-decay": 0.5, "local-epochs": 2, "min-nodes": 1})
    model = model_for(config)
    strategy = build_strategy(config, model)
    strategy.node_wait_timeout = 1
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                      state=RecordDict(), run_config={})  # fmt: skip
    x = ArrayRecord(model.state_dict())
    msg = list(strategy.configure_train(3, x, ConfigRecord({"lr": 0.1}), StubGrid([1])))[0]
    reply = train_handler(msg, context, config)
    y = reply.content["arrays"].to_torch_state_dict()
    c_i = context.state[client_scaffold.STATE_KEY].to_torch_state_dict()
    steps = 2 * -(-300 // 32)  # epochs x ceil(300 / batch 32)
    lr_round = 0.1 * 0.5**2
    beta = 0.9  # BASE's momentum: step k moves lr (1 - beta^k) / (1 - beta) per unit gradient
    divisor = sum(lr_round * (1 - beta**k) / (1 - beta) for k in range(1, steps + 1))
    sent = x.to_torch_state_dict()
    for name, _ in model.named_parameters():
        expected = (sent[name] - y[name]) / divisor  # c = c_i = 0 before the round
        torch.testing.assert_close(c_i[name], expected, rtol=1e-5, atol=1e-6)
        dc = reply.content[DELTA_KEY][name].numpy()
        np.testing.assert_array_equal(dc, c_i[name].numpy())
