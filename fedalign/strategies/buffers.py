"""Model buffers (BatchNorm running statistics, batch counters) are averaged plainly.

A buffer is not a weight: a server optimizer (FedAvgM, FedAdam, FedYogi) must
not step it (FedAdam can drive `running_var` below zero), and an integer
counter must not be truncated by a float average (three clients at 7 batches
average to 6.999..., which `astype(int64)` made 6). So after the base strategy
aggregates, every buffer is replaced by the weighted average of the replies
(the weights FedAvg uses), computed by Flower's own `aggregate_arrayrecords`,
and integer buffers are rounded to the nearest integer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords


def buffer_names(model_or_names: torch.nn.Module | Iterable[str] | None) -> frozenset[str]:
    """State-dict keys that are buffers: from a model (state_dict minus parameters) or given."""
    if model_or_names is None:
        return frozenset()
    if isinstance(model_or_names, torch.nn.Module):
        parameters = {name for name, _ in model_or_names.named_parameters()}
        return frozenset(k for k in model_or_names.state_dict() if k not in parameters)
    return frozenset(model_or_names)


def integer_keys(values: dict[str, np.ndarray]) -> frozenset[str]:
    """Integer arrays cannot be parameters (no gradient), so they are always buffers."""
    return frozenset(k for k, v in values.items() if np.issubdtype(v.dtype, np.integer))


def average_buffers(
    replies: Iterable[Message], keys: Iterable[str], weighted_by_key: str
) -> dict[str, np.ndarray]:
    """Weighted average of the buffers `keys` over the (error-free) replies, as float64."""
    keys = set(keys)
    records = []
    for msg in replies:
        if msg.has_error():
            continue
        arrays = next(iter(msg.content.array_records.values()))
        metrics = next(iter(msg.content.metric_records.values()))
        records.append(RecordDict({"arrays": ArrayRecord({k: arrays[k] for k in arrays if k in keys}),
                                   "metrics": metrics}))
    if not records or not keys:
        return {}
    averaged = aggregate_arrayrecords(records, weighted_by_key)
    return {k: np.asarray(v.numpy(), dtype=np.float64) for k, v in averaged.items()}


def cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`value` in `like`'s dtype; integers rounded, not truncated."""
    if np.issubdtype(like.dtype, np.integer):
        return np.rint(value).astype(like.dtype)
    return np.asarray(value).astype(like.dtype)
