"""Model registry: every model is built from a name plus keyword arguments.

    build_model("resnet20", input_shape=(3, 32, 32), num_classes=10, width=2, norm="group")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from fedalign.errors import UsageError
from fedalign.safe_yaml import brief
from fedalign.models.cnn import CNN
from fedalign.models.mlp import MLP
from fedalign.models.resnet import ResNet20
from fedalign.models.vgg import VGG11

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": ResNet20,
    "vgg11": VGG11,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str, input_shape, num_classes: int, seed: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model; `seed` makes the initialization reproducible."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    check_model_args(name, kwargs)
    try:
        return _build(name, input_shape, num_classes, seed, kwargs)
    except (TypeError, ValueError, KeyError) as err:  # e.g. an unknown norm name
        raise UsageError(f"model {name!r} cannot be built with {kwargs or 'its defaults'}: {err}") from None


def check_model_args(name: str, kwargs: dict) -> None:
    """Model arguments must be the constructor's own, of its defaults' types, and positive."""
    params = {
        p.name: p.default
        for p in list(inspect.signature(MODELS[name]).parameters.values())[2:]
        if p.default is not inspect.Parameter.empty
    }
    valid = ", ".join(f"{k}={v!r}" for k, v in params.items())
    for key, value in kwargs.items():
        if key not in params:
            raise UsageError(f"unknown argument {key!r} for model {name!r}; valid arguments (defaults): {valid}")
        default = params[key]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            want_int = isinstance(default, int)
            ok = isinstance(value, int) if want_int else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok:
                kind = "an integer" if want_int else "a number"
                raise UsageError(f"model argument {key}={brief(value)} of {name!r} must be {kind} (default {default!r})")
            low = 0 if key == "depth" else 1
            if not (value >= low if want_int else value > 0) or value != value:
                raise UsageError(f"model argument {key}={brief(value)} of {name!r} must be >= {low}" if want_int
                                 else f"model argument {key}={brief(value)} of {name!r} must be > 0")
        elif isinstance(default, str) and not isinstance(value, str):
            raise UsageError(f"model argument {key}={brief(value)} of {name!r} must be a string (default {default!r})")


def _build(name: str, input_shape, num_classes: int, seed: int | None, kwargs: dict) -> nn.Module:
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MODELS[name](tuple(input_shape), num_classes, **kwargs)
    return MODELS[name](tuple(input_shape), num_classes, **kwargs)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
