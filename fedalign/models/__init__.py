"""Model registry: every model is built from a name plus keyword arguments.

    build_model("resnet20", input_shape=(3, 32, 32), num_classes=10, width=2, norm="group")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedalign.errors import UsageError
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
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MODELS[name](tuple(input_shape), num_classes, **kwargs)
    return MODELS[name](tuple(input_shape), num_classes, **kwargs)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
