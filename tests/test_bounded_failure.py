"""GuardedStrategy stops a run in which no client succeeds (issue 10), for every strategy.

Unit tests of the wrapper's round accounting with real Flower messages; the
end-to-end run in Flower's simulation engine is in test_refusals_flower.py.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message
from flwr.serverapp.strategy import FedAvg
from test_strategies import StubGrid, client_reply, model_and_arrays, run_round, task_identity  # noqa: F401

from fedalign.strategies import FedPFN, GuardedStrategy
from fedalign.strategies.guarded import NoClientSucceededError, TrainingDivergedError


def error_reply(m: Message) -> Message:
    return Message(Error(code=0, reason=f"boom on node {m.metadata.dst_node_id}\nsecond line"), reply_to=m)


def good_reply(m: Message) -> Message:
    return client_reply(m, {k: v.numpy() for k, v in m.content["arrays"].items()})


@pytest.mark.parametrize("make", [
    lambda model: GuardedStrategy(FedAvg(), max_failed_rounds=3),
    lambda model: FedPFN(FedAvg(), model),  # every strategy inherits the guard (default 3)
])  # fmt: skip
def test_consecutive_failed_rounds_end_the_run_a_good_round_resets(make):
    model, arrays = model_and_arrays()
    strategy = make(model)
    grid = StubGrid([1, 2])
    run_round(strategy, 1, arrays, grid, error_reply)
    run_round(strategy, 2, arrays, grid, error_reply)
    assert strategy.failed_rounds == 2
    run_round(strategy, 3, arrays, grid, lambda m: good_reply(m) if m.metadata.dst_node_id == 1 else error_reply(m))
    assert strategy.failed_rounds == 0
    run_round(strategy, 4, arrays, grid, error_reply)
    run_round(strategy, 5, arrays, grid, error_reply)
    with pytest.raises(NoClientSucceededError, match=r"3 consecutive rounds \(up to round 6\); last error: boom") as err:
        run_round(strategy, 6, arrays, grid, error_reply)
    assert "\n" not in str(err.value)


def test_no_replies_at_all_count_as_a_failed_round():
    model, arrays = model_and_arrays()
    strategy = GuardedStrategy(FedAvg(), max_failed_rounds=1)
    list(strategy.configure_train(1, arrays, ConfigRecord({}), StubGrid([1, 2])))
    with pytest.raises(NoClientSucceededError, match="no replies within round-timeout"):
        strategy.aggregate_train(1, [])


def nan_reply(m: Message) -> Message:
    return client_reply(m, {k: np.full_like(v.numpy(), np.nan) for k, v in m.content["arrays"].items()})


def test_rounds_of_only_non_finite_replies_end_as_diverged_with_the_first_round():
    model, arrays = model_and_arrays()
    strategy = FedPFN(FedAvg(), model)
    grid = StubGrid([1, 2])
    run_round(strategy, 1, arrays, grid, good_reply)
    run_round(strategy, 2, arrays, grid, nan_reply)
    run_round(strategy, 3, arrays, grid, good_reply)  # one bad round that recovers: not diverged
    run_round(strategy, 4, arrays, grid, nan_reply)
    run_round(strategy, 5, arrays, grid, nan_reply)
    with pytest.raises(TrainingDivergedError, match=r"NaN/Inf in rounds 4-6; the global model is the one of round 3") as err:
        run_round(strategy, 6, arrays, grid, nan_reply)
    assert err.value.first_round == 4
    assert strategy.rejected_replies == 2 * 4


def test_errors_in_the_streak_are_a_failure_not_a_divergence():
    model, arrays = model_and_arrays()
    strategy = GuardedStrategy(FedAvg(), max_failed_rounds=3)
    grid = StubGrid([1, 2])
    run_round(strategy, 1, arrays, grid, error_reply)
    run_round(strategy, 2, arrays, grid, nan_reply)
    with pytest.raises(NoClientSucceededError) as err:
        run_round(strategy, 3, arrays, grid, nan_reply)
    assert not isinstance(err.value, TrainingDivergedError)
    strategy = GuardedStrategy(FedAvg(), max_failed_rounds=2)  # one node NaN, one crashed: not every reply diverged
    run_round(strategy, 1, arrays, grid, lambda m: nan_reply(m) if m.metadata.dst_node_id == 1 else error_reply(m))
    with pytest.raises(NoClientSucceededError) as err:
        run_round(strategy, 2, arrays, grid, lambda m: nan_reply(m) if m.metadata.dst_node_id == 1 else error_reply(m))
    assert not isinstance(err.value, TrainingDivergedError)
