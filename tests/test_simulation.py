"""FedPFN / FedPNU in Flower's real Simulation Runtime (Ray backend)."""

import os
import time

import numpy as np
import pytest
import torch

from fedalign import simulation
from fedalign.config import resolve
from fedalign.masks import SubspaceMask, fixed_entries_equal
from fedalign.run_setup import partitions_for
from fedalign.simulation import simulate
from fedalign.strategies import NotEnoughNodesError

pytestmark = pytest.mark.slow


def load(path):
    return torch.load(path, weights_only=True)


def test_fedpfn_ten_nodes_half_participation(tmp_path, flwr_env, monkeypatch):
    """5 rounds, 10 nodes, fraction 0.5: fixed entries exact; mask sent once per node."""
    out = tmp_path / "run"
    dispatch = {}
    real_polling = simulation.quick_polling

    def noting_polling(work_of=None):
        dispatch["work_of"] = work_of
        return real_polling(work_of=work_of)

    monkeypatch.setattr(simulation, "quick_polling", noting_polling)
    cfg = {"strategy": "fedpfn", "num-rounds": 5, "fraction-train": 0.5, "min-nodes": 5,
           "alpha": 0.5, "output-dir": str(out)}  # fmt: skip
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedalign.light_actor import ClientAppActor

    actor_classes = []  # the class Flower's backend spawns actors from, seen while the run is on
    record = simulate(cfg, num_supernodes=10, on_round=lambda row: actor_classes.append(raybackend.ClientAppActor))
    assert actor_classes and all(cls is ClientAppActor for cls in actor_classes)
    # the engine dispatches the largest partitions first: their sizes are the work estimate
    sizes = [len(p) for p in partitions_for(resolve(cfg), 10)]
    assert len(set(sizes)) > 1 and [dispatch["work_of"](pid) for pid in range(10)] == sizes
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    assert mask.digest == record["mask"]["digest"]
    assert abs(mask.fixed_fraction - 0.4) < 0.01
    initial, final = load(out / "initial_model.pt"), load(out / "final_model.pt")
    assert fixed_entries_equal(mask, initial, final)
    trainable_moved = [(final[n] != initial[n])[m].float().mean() for n, m in mask.tensors.items()]
    assert min(trainable_moved) > 0.9

    nodes = record["mask"]["nodes"]
    sends = record["mask"]["sends_per_node"]
    assert set(sends) == set(nodes)  # every node that was sampled got the mask ...
    assert set(sends.values()) == {1}  # ... exactly once
    assert record["mask"]["bytes_sent"] == len(sends) * mask.wire_nbytes  # whole blob, header included
    late = [n for n, info in nodes.items() if info["first_round"] > 1]
    assert late, "with 5 of 10 nodes per round some node joins after round 1"
    for info in nodes.values():  # each reply's digest and fixed entries were checked
        assert info["digest_echoed"]
        assert info["verified_rounds"][0] == info["first_round"]
    assert sum(len(info["verified_rounds"]) for info in nodes.values()) == 5 * 5
    assert record["rejected_replies"] == 0
    accuracies = [r["accuracy"] for r in record["rounds"]]
    assert accuracies[-1] > accuracies[0] + 0.3  # it learns (digits, MLP)
    # client-cpus 1 (the default): every actor trains with one torch thread
    threads = [p["torch_threads"] for p in record["placement"]["processes"]]
    assert threads and set(threads) == {1}


def test_fedpnu_alternates_and_updates_every_entry(tmp_path, flwr_env):
    out = tmp_path / "run"
    cpus = min(2, os.cpu_count() or 1)  # one actor that owns every core
    record = simulate(
        {"strategy": "fedpnu", "num-rounds": 5, "min-nodes": 4, "save-round-models": True,
         "fraction-evaluate": 1.0, "output-dir": str(out)},
        num_supernodes=4, client_cpus=float(cpus),
    )
    assert [p["torch_threads"] for p in record["placement"]["processes"]] == [cpus]
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    states = [load(out / "initial_model.pt")] + [load(out / f"round_{r}.pt") for r in range(1, 6)]
    changed = {n: torch.zeros_like(m) for n, m in mask.tensors.items()}
    for r in range(1, 6):
        round_mask = mask if r % 2 == 1 else mask.complement()
        assert fixed_entries_equal(round_mask, states[r - 1], states[r]), f"round {r} moved fixed entries"
        for n in changed:
            changed[n] |= states[r][n] != states[r - 1][n]
    assert all(bool(c.all()) for c in changed.values()), "some entry never changed"
    assert set(record["mask"]["sends_per_node"].values()) == {1}
    # the ClientApp's evaluate handler ran on every node's share of the test split
    for row in record["rounds"][1:]:
        assert abs(row["eval-accuracy"] - row["accuracy"]) < 0.05


def test_too_few_nodes_gives_a_clear_error_in_bounded_time(tmp_path, flwr_env):
    started = time.monotonic()
    with pytest.raises(NotEnoughNodesError, match="only 2 of the 4 nodes"):
        simulate(
            {"num-rounds": 1, "min-nodes": 4, "node-wait-timeout": 2.0, "output-dir": str(tmp_path)},
            num_supernodes=2,
        )
    assert time.monotonic() - started < 120
    assert not (tmp_path / "metrics.json").exists()


def test_a_diverging_run_is_recorded_as_diverged_with_its_last_finite_model(tmp_path, flwr_env):
    """lr 1e9 blows every client's weights up to NaN/Inf in round 1: the run ends as a result, not a crash."""
    out = tmp_path / "run"
    record = simulate(
        {"strategy": "fedpfn", "num-rounds": 6, "min-nodes": 2, "lr": 1e9, "max-failed-rounds": 2,
         "output-dir": str(out)},
        num_supernodes=2,
    )
    assert record["outcome"]["status"] == "diverged" and record["outcome"]["round"] == 1
    assert "rounds 1-2" in record["outcome"]["detail"]
    assert record["final_accuracy"] is None
    assert [r["round"] for r in record["rounds"]] == [0, 1]  # round 2's aggregate ended the run
    assert record["rejected_replies"] == 4
    assert record["rounds"][1]["rejected-replies"] == 2  # the client metrics of the rounds before survive
    initial, final = load(out / "initial_model.pt"), load(out / "final_model.pt")
    assert all(torch.equal(initial[k], final[k]) for k in initial)  # nothing non-finite was ever averaged
    assert (out / "metrics.csv").read_text().count("\n") == 3
