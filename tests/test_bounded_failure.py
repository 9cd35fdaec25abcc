"""GuardedStrategy stops a run in which no client succeeds (issue 10), for every strategy.

Unit tests of the wrapper's round accounting with real Flower messages; the
end-to-end run in Flower's simulation engine is in test_refusals_flower.py.
"""

import pytest
from flwr.app import ConfigRecord, Error, Message
from flwr.serverapp.strategy import FedAvg
from test_strategies import StubGrid, client_reply, model_and_arrays, run_round, task_identity  # noqa: F401

from fedalign.strategies import FedPFN, GuardedStrategy
from fedalign.strategies.guarded import NoClientSucceededError


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
