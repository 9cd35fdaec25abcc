"""Seeded node sampling over partition ids: one seed, the same clients every round.

Unit tests drive `GuardedStrategy.configure_train` against a grid stand-in
that answers the partition query through the real ClientApp handler; the
slow test runs Flower's Ray simulation engine (100 clients, fraction 0.1).
"""

import json
import os

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedalign.models import build_model
from fedalign.partition_query import PARTITION_QUERY, answer_partition_query
from fedalign.strategies import FedPFN, GuardedStrategy


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class QueryGrid:
    """Node ids random per 'run' (as Flower's are); each node answers the partition query."""

    def __init__(self, num_nodes: int, run: int, silent=()):
        rng = np.random.default_rng(1000 + run)
        ids = rng.choice(2**40, size=num_nodes, replace=False).tolist()
        order = rng.permutation(num_nodes)  # the grid lists nodes in no particular order
        self.partition = {int(ids[i]): i for i in range(num_nodes)}
        self.listed = [int(ids[i]) for i in order]
        self.silent = {int(ids[i]) for i in silent}
        self.queries = 0
        self.batches = []  # size of each send_and_receive call

    def get_node_ids(self):
        return list(self.listed)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        messages = list(messages)
        self.batches.append(len(messages))
        for msg in messages:
            assert msg.metadata.message_type == PARTITION_QUERY
            self.queries += 1
            node = msg.metadata.dst_node_id
            if node in self.silent:  # e.g. another ClientApp without the query handler
                replies.append(Message(Error(code=1, reason="no query function"), reply_to=msg))
                continue
            context = Context(run_id=1, node_id=node, node_config={"partition-id": self.partition[node],
                              "num-partitions": len(self.partition)}, state=RecordDict(), run_config={})  # fmt: skip
            replies.append(answer_partition_query(msg, context))
        return replies


def sampled_partitions(strategy_factory, run: int, rounds=3, num_nodes=40, fraction=0.25, silent=()):
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=1)
    arrays = ArrayRecord(model.state_dict())
    grid = QueryGrid(num_nodes, run, silent)
    strategy = strategy_factory(FedAvg(fraction_train=fraction, min_train_nodes=2, min_available_nodes=2), model)
    strategy.max_failed_rounds = rounds + 1  # rounds here get no replies; that is not a failing run
    chosen = []
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        chosen.append(sorted(grid.partition[m.metadata.dst_node_id] for m in messages))
        strategy.aggregate_train(server_round, [])
    return chosen, grid, strategy


def seeded_fedpfn(seed):
    return lambda base, model: FedPFN(base, model, rho=0.4, seed=0, sample_seed=seed)


def seeded_guarded(seed):
    return lambda base, model: GuardedStrategy(base, sample_seed=seed)


@pytest.mark.parametrize("make", [seeded_fedpfn, seeded_guarded], ids=["fedpfn", "fedavg"])
def test_same_seed_same_partitions_every_round_whatever_the_node_ids(make):
    first, grid, strategy = sampled_partitions(make(0), run=1)
    second, _, _ = sampled_partitions(make(0), run=2)
    other, _, _ = sampled_partitions(make(1), run=1)
    assert [len(r) for r in first] == [10, 10, 10]  # FedAvg's count: int(40 * 0.25)
    assert first == second
    assert first != other
    assert len({tuple(r) for r in first}) == 3  # rounds draw afresh
    assert grid.queries == 40  # each node asked once, not every round
    assert strategy.sampler.sampled["train"] == {r: p for r, p in zip((1, 2, 3), first)}


def test_nodes_without_a_partition_id_are_still_sampled_and_asked_once():
    chosen, grid, _ = sampled_partitions(seeded_guarded(0), run=1, silent=range(0, 40, 2))
    assert all(len(r) == 10 for r in chosen)
    assert grid.queries == 40


def test_many_nodes_are_asked_in_bounded_batches_and_all_learned():
    """600 nodes: queries go out QUERY_BATCH at a time, every node asked once, every id learned."""
    from fedalign.strategies.sampling import QUERY_BATCH

    chosen, grid, strategy = sampled_partitions(seeded_guarded(0), run=1, rounds=2, num_nodes=600, fraction=0.02)
    assert grid.batches == [QUERY_BATCH, QUERY_BATCH, 600 - 2 * QUERY_BATCH]
    assert grid.queries == 600
    assert sorted(strategy.sampler.partitions.values()) == list(range(600))
    again, _, _ = sampled_partitions(seeded_guarded(0), run=2, rounds=2, num_nodes=600, fraction=0.02)
    assert chosen == again and all(len(r) == 12 for r in chosen)


def test_full_participation_sends_no_query():
    class NoQueryGrid(QueryGrid):
        def send_and_receive(self, messages, timeout=None):
            raise AssertionError("queried at full participation")

    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=1)
    strategy = GuardedStrategy(FedAvg(), sample_seed=0)
    grid = NoQueryGrid(5, run=1)
    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(grid.listed)


# ------------------------------------------------------ the real Ray engine
SIM_CONFIG = {"strategy": "fedpfn", "num-rounds": 3, "fraction-train": 0.1, "min-nodes": 2,
              "model-args": "width=32,depth=1", "client-test-eval": False, "partitioner": "iid",
              "min-partition-size": 5}  # fmt: skip


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """100 clients at fraction 0.1: seed 0 twice, seed 1 once.

    Run "b" learns the partition ids by querying every node (as deployed
    SuperNodes are asked), "a" and "c" from the engine's own node map.
    """
    import contextlib
    from unittest import mock

    from fedalign import simulated_nodes
    from fedalign.deploy.localhost import free_port
    from fedalign.simulation import simulate

    root = tmp_path_factory.mktemp("sampling")
    saved = {k: os.environ.get(k) for k in ("FLWR_HOME", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT")}
    runs = {}
    try:
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            home = root / f"flwr_home_{name}"
            home.mkdir()
            os.environ["FLWR_HOME"] = str(home)
            os.environ["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
            os.environ["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
            out = root / name
            engine_map = mock.patch.object(simulated_nodes, "recorded_partitions", contextlib.nullcontext) \
                if name == "b" else contextlib.nullcontext()
            with engine_map:
                record = simulate({**SIM_CONFIG, "seed": seed, "output-dir": str(out)}, num_supernodes=100)
            runs[name] = (record, torch.load(out / "final_model.pt", weights_only=True))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return runs


@pytest.mark.slow
def test_ray_one_seed_bit_identical_another_seed_differs(three_runs):
    (rec_a, final_a), (rec_b, final_b), (rec_c, final_c) = (three_runs[k] for k in "abc")
    sampled_a = rec_a["sampled_partitions"]["train"]
    assert sorted(sampled_a) == ["1", "2", "3"] and all(len(p) == 10 for p in sampled_a.values())
    assert all(isinstance(p, int) for ps in sampled_a.values() for p in ps)  # every node told its partition
    # The engine's node map and the nodes' own answers are the same partition ids.
    assert rec_a["partition_ids_learned"] == {"from-engine": 100, "queried": 0, "silent": 0}
    assert rec_b["partition_ids_learned"] == {"from-engine": 0, "queried": 100, "silent": 0}
    assert sampled_a == rec_b["sampled_partitions"]["train"]
    assert sampled_a != rec_c["sampled_partitions"]["train"]
    for k in final_a:
        assert final_a[k].numpy().tobytes() == final_b[k].numpy().tobytes(), k
    assert any(final_a[k].numpy().tobytes() != final_c[k].numpy().tobytes() for k in final_a)
    assert [r["accuracy"] for r in rec_a["rounds"]] == [r["accuracy"] for r in rec_b["rounds"]]
    assert rec_a["mask"]["schedule"]["kind"] == "fixed"
    assert len(rec_a["mask"]["schedule"]["rounds"]) == 3
    json.dumps(rec_a)  # the record stays JSON
