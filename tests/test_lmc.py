"""LMC metrics: interpolation, curves, barriers, fusion, BatchNorm re-estimation."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedalign import lmc
from fedalign.errors import UsageError
from fedalign.models import build_model

torch.set_num_threads(1)


def _data(shape=(1, 8, 8), n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


# ------------------------------------------------------------ toy curves
def test_loss_barrier_of_hand_computed_curves():
    assert lmc.loss_barrier([0, 0.5, 1], [1.0, 2.0, 1.0]) == pytest.approx(1.0)
    # line 1, 1.5, 2, 2.5, 3 -> excess 0, 0.5, 0.5, -0.5, 0
    assert lmc.loss_barrier([0, 0.25, 0.5, 0.75, 1], [1, 2, 2.5, 2, 3]) == pytest.approx(0.5)
    # a convex (below the line) curve has no barrier
    assert lmc.loss_barrier([0, 0.5, 1], [1.0, 0.5, 1.0]) == 0.0


def test_accuracy_barrier_absolute_and_relative():
    absolute, relative = lmc.accuracy_barrier([0, 0.5, 1], [0.8, 0.5, 0.6])
    assert absolute == pytest.approx(0.2)  # line at 0.5 is 0.7
    assert relative == pytest.approx(0.2 / 0.7)
    # argmax at alpha = 0.25: line 0.9, acc 0.45 -> 0.45, relative 0.5
    absolute, relative = lmc.accuracy_barrier([0, 0.25, 0.5, 0.75, 1], [1.0, 0.45, 0.7, 0.65, 0.6])
    assert (absolute, relative) == (pytest.approx(0.45), pytest.approx(0.5))
    assert lmc.accuracy_barrier([0, 0.5, 1], [0.9, 0.95, 0.9]) == (0.0, 0.0)


def test_barriers_dict_and_midpoint():
    curve = lmc.Curve([0, 0.5, 1], [1.0, 3.0, 2.0], [0.8, 0.4, 0.6])
    b = lmc.barriers(curve)
    assert b["loss_barrier"] == pytest.approx(1.5)
    assert b["acc_barrier"] == pytest.approx(0.3)
    assert b["midpoint_acc"] == 0.4 and b["acc_a"] == 0.8 and b["acc_b"] == 0.6
    assert math.isnan(lmc.midpoint([0, 1 / 3, 2 / 3, 1], [1, 2, 3, 4]))


@pytest.mark.parametrize("points", [0, 1, 2, 2.5, True])
def test_fewer_than_three_points_is_a_usage_error(points):
    with pytest.raises(UsageError, match="at least 3"):
        lmc.alphas_for(points)
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=1)
    with pytest.raises(UsageError, match="at least 3"):
        lmc.evaluate_curve(model, model, _data(), points=points)


def test_curve_lists_must_be_sane():
    with pytest.raises(UsageError):
        lmc.loss_barrier([0, 1], [1, 1])
    with pytest.raises(UsageError):
        lmc.loss_barrier([0.1, 0.5, 1], [1, 1, 1])


# ----------------------------------------------------------- interpolation
def test_interpolation_is_exact_at_endpoints_and_keeps_int_buffers_from_a():
    a = build_model("resnet20", (3, 8, 8), 10, seed=0)
    b = build_model("resnet20", (3, 8, 8), 10, seed=1)
    a.bn1.num_batches_tracked.fill_(7)
    b.bn1.num_batches_tracked.fill_(9)
    b.bn1.running_mean.fill_(2.0)
    sa, sb = a.state_dict(), b.state_dict()
    for key, value in lmc.interpolate_state(sa, sb, 0.0).items():
        assert torch.equal(value, sa[key])
    one = lmc.interpolate_state(sa, sb, 1.0)
    assert all(torch.equal(one[k], sb[k]) for k in sa if sa[k].is_floating_point())
    half = lmc.interpolate(a, b, 0.5).state_dict()
    assert int(half["bn1.num_batches_tracked"]) == 7
    torch.testing.assert_close(half["bn1.running_mean"], torch.full_like(sa["bn1.running_mean"], 1.0))
    torch.testing.assert_close(half["conv1.weight"], (sa["conv1.weight"] + sb["conv1.weight"]) / 2)


def test_models_of_different_architectures_are_refused_by_name():
    a = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=1)
    wider = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    deeper = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=2)
    with pytest.raises(UsageError, match=r"'features.1.weight' has shape \(8, 64\) vs \(16, 64\)"):
        lmc.interpolate(a, wider, 0.5)
    with pytest.raises(UsageError, match="features.3.weight"):
        lmc.evaluate_curve(a, deeper, _data())
    with pytest.raises(UsageError, match="different architectures"):
        lmc.fusion([a, a, wider], _data())


# -------------------------------------------------------------- the curve
def test_barrier_of_a_model_with_itself_is_zero():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    curve = lmc.evaluate_curve(model, model, _data(), points=5)
    assert len(set(curve.losses)) == 1 and len(set(curve.accuracies)) == 1
    b = lmc.barriers(curve)
    assert b["loss_barrier"] == 0.0 and b["acc_barrier"] == 0.0 and b["acc_barrier_rel"] == 0.0


def test_barrier_of_a_batchnorm_model_with_itself_is_zero_with_reestimation():
    model = build_model("resnet20", (3, 8, 8), 10, seed=0).eval()
    bn_loader = _data((3, 8, 8), seed=1)
    curve = lmc.evaluate_curve(model, model, _data((3, 8, 8)), points=3, bn_loader=bn_loader, bn_num_batches=2)
    assert lmc.barriers(curve)["loss_barrier"] == 0.0
    with pytest.raises(UsageError, match="needs training batches"):
        lmc.evaluate_curve(model, model, _data((3, 8, 8)), points=3)
    lmc.evaluate_curve(model, model, _data((3, 8, 8)), points=3, reestimate=False)


def test_two_different_models_have_a_curve_between_their_accuracies():
    a = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    b = build_model("mlp", (1, 8, 8), 10, seed=1, width=16, depth=1)
    test = _data()
    curve = lmc.evaluate_curve(a, b, test, points=11)
    assert len(curve.alphas) == 11 and curve.alphas[5] == 0.5
    from fedalign.training import evaluate

    assert curve.losses[0] == pytest.approx(evaluate(a, test)[0])
    assert curve.accuracies[-1] == pytest.approx(evaluate(b, test)[1])


# ------------------------------------------------------- BN re-estimation
def test_bn_reestimation_changes_running_statistics():
    model = build_model("resnet20", (3, 8, 8), 10, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    momentum = model.bn1.momentum
    batches = lmc.bn_batches(_data((3, 8, 8)), 2)
    lmc.reestimate_bn(model, batches)
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert model.bn1.momentum == momentum and not model.training
    # cumulative average: the result does not depend on what was there before
    model.bn1.running_mean.fill_(100.0)
    lmc.reestimate_bn(model, batches)
    torch.testing.assert_close(model.bn1.running_mean, after["bn1.running_mean"])


def test_bn_reestimation_is_a_no_op_without_batchnorm():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=8, depth=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lmc.reestimate_bn(model, lmc.bn_batches(_data(), 1))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ fusion
def test_fusion_of_identical_models_loses_nothing():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    out = lmc.fusion([model, model, model], _data())
    assert out["fused_acc"] == out["mean_acc"] and out["fusion_barrier"] == 0.0
    assert out["num_models"] == 3


def test_fusion_averages_uniformly():
    models = [build_model("mlp", (1, 8, 8), 10, seed=s, width=8, depth=1) for s in range(3)]
    fused = lmc.fuse(models).state_dict()
    expected = sum(m.state_dict()["classifier.bias"] for m in models) / 3
    torch.testing.assert_close(fused["classifier.bias"], expected)
    out = lmc.fusion(models, _data(), model_accuracies=[0.5, 0.7, 0.9])
    assert out["mean_acc"] == pytest.approx(0.7)
    assert out["fusion_barrier"] == pytest.approx(0.7 - out["fused_acc"])
    with pytest.raises(UsageError, match="at least 2"):
        lmc.fusion(models[:1], _data())
