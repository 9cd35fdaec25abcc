"""Run-config keys that shape the strategy: resample-every, mask-include, and what a train message carries.

Fast unit tests (no simulation): strategies built by `build_strategy` from a
resolved config, driven through configure_train / aggregate_train.
"""

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedalign.placement import PLACEMENT_RECORD
from fedalign.cli import main as cli_main
from fedalign.clients.client_app import train_handler
from fedalign.config import resolve
from fedalign.errors import UsageError
from fedalign.masks import fixed_entries_equal
from fedalign.protocol import MASK_BLOB, MASK_COMPLEMENT, MASK_DIGEST, reply_record
from fedalign.run_setup import model_for
from fedalign.server_app import train_config_record
from fedalign.strategies import build_strategy


from stub_grid import StubGrid, task_identity  # noqa: E402,F401


SMALL = {"dataset": "digits", "model": "mlp", "model-args": "width=16,depth=1", "train-size": 240,
         "test-size": 60, "partitioner": "iid", "min-nodes": 1, "batch-size": 32}  # fmt: skip


# ----------------------------------------------------------- resample-every
def test_fedpfn_refuses_resample_every_in_one_line():
    with pytest.raises(UsageError, match="fedpfn trains one fixed subspace") as info:
        resolve({"strategy": "fedpfn", "resample-every": 2})
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="does not apply"):
        resolve({"strategy": "fedavg", "resample-every": 3})
    with pytest.raises(UsageError, match=">= 0"):
        resolve({"strategy": "fedpnu", "resample-every": -1})


def test_sweep_cli_refuses_fedpfn_with_resample_every(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "digits", "model": "mlp", "alphas": [0.5], "seeds": [0], "rounds": 2, "clients": 2,
        "strategies": [{"name": "fedpfn", "resample-every": 2}],
    }))  # fmt: skip
    assert cli_main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resample-every" in err[0] and "fedpnu" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "every, expected",
    [
        (0, [(0, False), (0, True), (0, False), (0, True), (0, False), (0, True)]),
        (2, [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True)]),
        (3, [(0, False), (0, True), (0, False), (1, False), (1, True), (1, False)]),
        (1, [(0, False), (1, False), (2, False), (3, False), (4, False), (5, False)]),
    ],
)
def test_fedpnu_alternates_within_each_resampled_mask(every, expected):
    config = resolve({**SMALL, "strategy": "fedpnu", "resample-every": every, "num-rounds": 6})
    model = model_for(config)
    strategy = build_strategy(config, model)
    arrays = ArrayRecord(model.state_dict())
    grid = StubGrid([1, 2])
    record = strategy.schedule_record(6)
    assert record["kind"] == ("alternate-resample" if every else "alternate")
    assert [(r["version"], r["complement"]) for r in record["rounds"]] == expected
    assert not any("digest" in r for r in record["rounds"])  # none has run yet
    for server_round, (version, complement) in enumerate(expected, start=1):
        base_mask = strategy.mask_version(version)
        round_mask = base_mask.complement() if complement else base_mask
        before = {k: v.numpy().copy() for k, v in arrays.items()}
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        for msg in messages:
            config_sent = msg.content["config"]
            assert config_sent[MASK_DIGEST] == base_mask.digest
            assert config_sent[MASK_COMPLEMENT] is complement
        replies = []
        for msg in messages:
            sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            moved = {k: np.where(round_mask.tensors[k].numpy(), v + 0.01, v) if k in round_mask.tensors else v
                     for k, v in sent.items()}  # fmt: skip
            content = RecordDict({"arrays": ArrayRecord({k: torch.as_tensor(np.array(v)) for k, v in moved.items()}),
                                  "metrics": MetricRecord({"num-examples": 5})})
            content["fedalign"] = reply_record(round_mask)
            replies.append(Message(content=content, reply_to=msg))
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        assert metrics["rejected-replies"] == 0
        assert fixed_entries_equal(round_mask, before, {k: v.numpy() for k, v in arrays.items()})
    ran = strategy.schedule_record(6)["rounds"]
    for row, (version, complement) in zip(ran, expected):
        base_mask = strategy.mask_version(version)
        assert row["digest"] == (base_mask.complement() if complement else base_mask).digest
    versions = {v for v, _ in expected}
    assert len({strategy.mask_version(v).digest for v in versions}) == len(versions)


# --------------------------------------------------------------- mask-include
def test_mask_include_masks_only_the_matching_parameters():
    config = resolve({**SMALL, "strategy": "fedpfn", "mask-include": "classifier.*", "rho": 0.5})
    strategy = build_strategy(config, model_for(config))
    for name, trainable in strategy.mask.tensors.items():
        if name.startswith("classifier."):
            assert 0.3 < (~trainable).float().mean() < 0.7, name
        else:
            assert bool(trainable.all()), name
    both = resolve({**SMALL, "strategy": "fedpnu", "mask-include": "classifier.*", "mask-exclude": "*.bias"})
    mask = build_strategy(both, model_for(both)).mask
    assert bool(mask.tensors["classifier.bias"].all()) and not bool(mask.tensors["classifier.weight"].all())


# ------------------------------------------------- what is sent is what is used
def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 3.0 + 0.1
    if isinstance(value, str):
        return value[::-1]
    if isinstance(value, bytes):
        return value[:-1] + bytes([value[-1] ^ 0xFF])
    raise AssertionError(f"no perturbation for {type(value)}")


def _client_result(msg: Message, config) -> bytes:
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})  # fmt: skip
    try:
        reply = train_handler(msg, context, config)
    except Exception as err:  # a corrupt field may be refused outright: that is "used" too
        return f"raised {type(err).__name__}".encode()
    if reply.has_error():
        return f"error {reply.error.reason}".encode()
    # What the client does: the arrays it replies, what it reports, and what it keeps.
    arrays = b"".join(v.numpy().tobytes() for v in reply.content["arrays"].values())
    reported = repr(sorted((k, sorted(dict(r).items())) for k, r in reply.content.config_records.items()
                           if k != PLACEMENT_RECORD)).encode()
    kept = repr(sorted(context.state.keys())).encode()
    return arrays + reported + kept


@pytest.mark.parametrize("strategy", ["fedpfn", "fedpnu", "fedpfn+fedprox", "fedavg", "fedprox"])
def test_every_train_config_field_the_server_sends_changes_what_the_client_does(strategy):
    """Perturb each sent field in turn: the client's result must change (else it is dead weight)."""
    name, _, base = strategy.partition("+")
    config = resolve({**SMALL, "strategy": name, "base-strategy": base or "fedavg", "client-test-eval": False})
    model = model_for(config)
    built = build_strategy(config, model)
    arrays = ArrayRecord(model.state_dict())
    msg = list(built.configure_train(1, arrays, train_config_record(config), StubGrid([1])))[0]
    sent = dict(msg.content["config"])
    assert sent, "the strategies add at least the round number"
    baseline = _client_result(msg, config)
    assert _client_result(msg, config) == baseline  # deterministic
    for key, value in sent.items():
        changed = dict(sent)
        changed[key] = _perturbed(value)
        if key == MASK_BLOB:
            continue  # checked below: corrupting the blob changes its digest
        content = RecordDict({"arrays": msg.content["arrays"], "config": ConfigRecord(changed)})
        altered = Message(content=content, dst_node_id=1, message_type=msg.metadata.message_type)
        assert _client_result(altered, config) != baseline, f"the client ignores {key!r}={value!r}"
    if MASK_BLOB in sent:
        other = build_strategy({**config, "mask-seed": 99}, model).mask.to_bytes()
        content = RecordDict({"arrays": msg.content["arrays"], "config": ConfigRecord({**sent, MASK_BLOB: other})})
        altered = Message(content=content, dst_node_id=1, message_type=msg.metadata.message_type)
        assert _client_result(altered, config) != baseline
