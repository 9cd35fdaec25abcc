"""Linear mode connectivity and fusion metrics (SPEC §3).

One curve object carries everything: `evaluate_curve` walks K evenly spaced
points theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B over every
floating parameter AND buffer, re-estimating BatchNorm statistics at each
point (interpolated running statistics are not the statistics of the
interpolated network), and `barriers` reduces a curve to the reported numbers.
Endpoints are re-estimated too, so the curve is measured under one protocol
and the barrier of a model with itself is exactly 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedalign.errors import UsageError, check
from fedalign.models import has_batchnorm
from fedalign.training import _device_of, evaluate

DEFAULT_POINTS = 11
DEFAULT_BN_BATCHES = 20


# ---------------------------------------------------------------- state algebra
def _state(x: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return x.state_dict() if isinstance(x, nn.Module) else x


def check_same_architecture(*models: nn.Module | Mapping[str, torch.Tensor]) -> None:
    """Fail with the first differing key or shape: interpolating those is meaningless."""
    check(len(models) >= 2, "need at least two models to interpolate or fuse")
    ref = _state(models[0])
    for i, other in enumerate(models[1:], start=1):
        st = _state(other)
        missing, extra = sorted(set(ref) - set(st)), sorted(set(st) - set(ref))
        if missing or extra:
            raise UsageError(
                f"models 0 and {i} have different architectures: keys only in model 0 "
                f"{missing[:3]}, only in model {i} {extra[:3]}; build both with the same "
                "model name and arguments"
            )
        for key, value in ref.items():
            if tuple(value.shape) != tuple(st[key].shape):
                raise UsageError(
                    f"models 0 and {i} have different architectures: {key!r} has shape "
                    f"{tuple(value.shape)} vs {tuple(st[key].shape)}; build both with the "
                    "same model name and arguments"
                )


def interpolate_state(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b for floating tensors; others (num_batches_tracked) from a.

    `torch.lerp` is exact at alpha in {0, 1} and when a == b, which the
    "barrier of a model with itself is 0" guarantee relies on.
    """
    check_same_architecture(a, b)
    out = {}
    for key, va in a.items():
        vb = b[key]
        if va.is_floating_point():
            out[key] = torch.lerp(va.detach(), vb.detach().to(va.dtype), float(alpha))
        else:
            out[key] = va.detach().clone()
    return out


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of floating tensors; non-floating tensors from the first state."""
    check(len(states) >= 1, "nothing to average")
    if len(states) > 1:
        check_same_architecture(*states)
    out = {}
    for key, v0 in states[0].items():
        if v0.is_floating_point():
            out[key] = torch.stack([s[key].detach().to(v0.dtype) for s in states]).mean(0)
        else:
            out[key] = v0.detach().clone()
    return out


def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A new model (copy of A's class and structure) at theta(alpha)."""
    model = copy.deepcopy(model_a)
    model.load_state_dict(interpolate_state(model_a.state_dict(), model_b.state_dict(), alpha))
    return model


def fuse(models: Sequence[nn.Module]) -> nn.Module:
    """A new model holding the uniform average of `models` (BN stats NOT re-estimated)."""
    model = copy.deepcopy(models[0])
    model.load_state_dict(average_states([m.state_dict() for m in models]))
    return model


# ------------------------------------------------------------ BN re-estimation
def bn_batches(loader: DataLoader, num_batches: int = DEFAULT_BN_BATCHES) -> list[torch.Tensor]:
    """Materialize the inputs of the first `num_batches` batches once.

    Re-using the same batches at every alpha keeps the curve deterministic
    (a shuffling loader would give each point other data).
    """
    check(num_batches >= 1, f"bn_batches={num_batches} must be >= 1")
    return [batch[0] if isinstance(batch, (list, tuple)) else batch for batch in islice(loader, num_batches)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset BatchNorm running statistics and recompute them on `batches` (in place).

    momentum=None makes BatchNorm keep a cumulative (equal-weight) average
    over the batches; the original momentum and the train/eval mode are
    restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = _device_of(model)
    for x in batches:
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model


# ------------------------------------------------------------------ the curve
@dataclass
class Curve:
    """Loss and accuracy at each alpha of the straight line from A to B."""

    alphas: list[float]
    losses: list[float]
    accuracies: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def alphas_for(points: int = DEFAULT_POINTS) -> list[float]:
    check(
        isinstance(points, int) and not isinstance(points, bool) and points >= 3,
        f"points={points!r}: need at least 3 interpolation points (SPEC asks for >= 11; "
        "use an odd number so alpha = 0.5 is one of them)",
    )
    return [float(a) for a in np.linspace(0.0, 1.0, points)]


def _resolve_bn(model: nn.Module, reestimate: bool | None, batches) -> bool:
    if reestimate is None:
        reestimate = has_batchnorm(model)
    if reestimate:
        check(
            batches is not None,
            "BatchNorm re-estimation needs training batches (pass bn_loader, or reestimate=False)",
        )
    return bool(reestimate)


def evaluate_state(
    template: nn.Module,
    state: Mapping[str, torch.Tensor],
    test_loader: DataLoader,
    batches: list[torch.Tensor] | None = None,
    reestimate: bool | None = None,
) -> tuple[float, float]:
    """Loss and accuracy of `template`'s architecture holding `state`."""
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    if _resolve_bn(model, reestimate, batches):
        reestimate_bn(model, batches)
    return evaluate(model, test_loader)


def evaluate_curve(
    model_a: nn.Module,
    model_b: nn.Module,
    test_loader: DataLoader,
    points: int = DEFAULT_POINTS,
    bn_loader: DataLoader | None = None,
    bn_num_batches: int = DEFAULT_BN_BATCHES,
    reestimate: bool | None = None,
) -> Curve:
    """Evaluate `points` evenly spaced models between A and B (alpha = 0 is A).

    `reestimate=None` re-estimates BatchNorm statistics iff the model has
    BatchNorm, on the first `bn_num_batches` batches of `bn_loader`.
    """
    alphas = alphas_for(points)
    check_same_architecture(model_a, model_b)
    batches = bn_batches(bn_loader, bn_num_batches) if bn_loader is not None else None
    _resolve_bn(model_a, reestimate, batches)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    losses, accs = [], []
    for alpha in alphas:
        loss, acc = evaluate_state(
            model_a, interpolate_state(sa, sb, alpha), test_loader, batches, reestimate
        )
        losses.append(loss)
        accs.append(acc)
    return Curve(alphas, losses, accs)


# ------------------------------------------------------------------- barriers
def _line(alphas: np.ndarray, values: np.ndarray) -> np.ndarray:
    return (1.0 - alphas) * values[0] + alphas * values[-1]


def _checked(alphas: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, v = np.asarray(alphas, dtype=float), np.asarray(values, dtype=float)
    check(a.ndim == 1 and a.shape == v.shape, "alphas and values must be 1-D of equal length")
    check(len(a) >= 3, f"a curve needs at least 3 points, got {len(a)}")
    check(a[0] == 0.0 and a[-1] == 1.0, "a curve must start at alpha = 0 and end at alpha = 1")
    return a, v


def loss_barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """max_alpha L(alpha) - ((1 - alpha) L_A + alpha L_B)."""
    a, v = _checked(alphas, losses)
    return float(np.max(v - _line(a, v)))


def accuracy_barrier(alphas: Sequence[float], accuracies: Sequence[float]) -> tuple[float, float]:
    """(absolute, relative): max_alpha ((1 - alpha) Acc_A + alpha Acc_B) - Acc(alpha).

    Relative = the absolute barrier divided by the interpolated endpoint
    accuracy at the argmax (0 where that accuracy is 0).
    """
    a, v = _checked(alphas, accuracies)
    line = _line(a, v)
    gap = line - v
    i = int(np.argmax(gap))
    absolute = float(gap[i])
    relative = absolute / float(line[i]) if line[i] > 0 else 0.0
    return absolute, relative


def midpoint(alphas: Sequence[float], values: Sequence[float]) -> float:
    """Value at alpha = 0.5 (NaN when 0.5 is not a point: use an odd number of points)."""
    for alpha, value in zip(alphas, values):
        if math.isclose(alpha, 0.5, abs_tol=1e-9):
            return float(value)
    return math.nan


def barriers(curve: Curve) -> dict[str, float]:
    """Every number SPEC §3 reports for one pair, endpoint accuracies included."""
    acc_abs, acc_rel = accuracy_barrier(curve.alphas, curve.accuracies)
    return {
        "acc_a": float(curve.accuracies[0]),
        "acc_b": float(curve.accuracies[-1]),
        "loss_a": float(curve.losses[0]),
        "loss_b": float(curve.losses[-1]),
        "loss_barrier": loss_barrier(curve.alphas, curve.losses),
        "acc_barrier": acc_abs,
        "acc_barrier_rel": acc_rel,
        "midpoint_acc": midpoint(curve.alphas, curve.accuracies),
        "midpoint_loss": midpoint(curve.alphas, curve.losses),
    }


# --------------------------------------------------------------------- fusion
def fusion(
    models: Sequence[nn.Module],
    test_loader: DataLoader,
    bn_loader: DataLoader | None = None,
    bn_num_batches: int = DEFAULT_BN_BATCHES,
    reestimate: bool | None = None,
    model_accuracies: Sequence[float] | None = None,
) -> dict[str, float]:
    """Accuracy of the uniform average of K models vs the mean accuracy of the K.

    fusion_barrier = mean_acc - fused_acc (positive = fusion loses accuracy).
    Pass `model_accuracies` when they are already known (they must have been
    measured under the same BN protocol).
    """
    check(len(models) >= 2, f"fusion needs at least 2 models, got {len(models)}")
    check_same_architecture(*models)
    batches = bn_batches(bn_loader, bn_num_batches) if bn_loader is not None else None
    _resolve_bn(models[0], reestimate, batches)
    if model_accuracies is None:
        model_accuracies = [
            evaluate_state(m, m.state_dict(), test_loader, batches, reestimate)[1] for m in models
        ]
    fused_state = average_states([m.state_dict() for m in models])
    fused_loss, fused_acc = evaluate_state(models[0], fused_state, test_loader, batches, reestimate)
    mean_acc = float(np.mean(model_accuracies))
    return {
        "fused_acc": float(fused_acc),
        "fused_loss": float(fused_loss),
        "mean_acc": mean_acc,
        "fusion_barrier": mean_acc - float(fused_acc),
        "num_models": len(models),
    }
