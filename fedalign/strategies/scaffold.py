"""SCAFFOLD (Karimireddy et al. 2020, option II) as a Flower message-API strategy.

Server state: the global model x (the `arrays` Flower passes around) and the
server control variate c (zeros at start, one array per model parameter).

* `configure_train`: FedAvg's sampling and messages, plus c as a second
  ArrayRecord (`CONTROL_KEY`) in every train message.
* Clients (`fedalign.clients.scaffold`) reply with their trained model y_i
  (a full model, so wrappers that screen "the model record" stay generic)
  and dc_i = c_i+ - c_i (`DELTA_KEY`).
* `aggregate_train`: x <- x + lr_g * (weighted mean of y_i - x), FedAvg's
  weighting (with lr_g = 1 this is exactly FedAvg's average);
  c <- c + (|S| / N) * uniform mean of dc_i = c + sum(dc_i) / N, with N the
  number of nodes connected when the round was configured (the federation).

c is accumulated in float64 and stored in the parameters' dtype: the mean of
identical float32 values is then exact, so identical clients keep c_i == c and
their correction (c - c_i) is exactly zero, i.e. SCAFFOLD reduces to FedAvg
bit for bit (tests/test_scaffold.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import copy
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

CONTROL_KEY = "scaffold-c"  # ArrayRecord in a train message: the server control variate c
DELTA_KEY = "scaffold-dc"  # ArrayRecord in a train reply: dc_i = c_i+ - c_i


def _record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in values.items()})


class Scaffold(FedAvg):
    """SCAFFOLD: FedAvg with client drift corrected by control variates.

    Parameters
    ----------
    server_lr : float
        lr_g, the global step size on the averaged update (1.0 = FedAvg's model).
    parameter_names : sequence of str, optional
        Names of the model's trainable parameters (control variates exist for
        these only, not for buffers such as BatchNorm statistics). With None,
        c starts empty (= zeros) and takes its keys from the first dc replies.
    **kwargs
        FedAvg's own arguments (sampling fractions, minimum nodes, record keys).
    """

    reply_delta_records = (DELTA_KEY,)  # extra reply records: per-entry deltas (see GuardedStrategy)

    def __init__(
        self, *, server_lr: float = 1.0, parameter_names: Sequence[str] | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.server_lr = float(server_lr)
        self._parameter_names = list(parameter_names) if parameter_names is not None else None
        self.control: dict[str, np.ndarray] = {}  # c; missing keys are zeros
        self._x: dict[str, np.ndarray] | None = None  # global model sent this round
        self._federation_size = 0  # N of this round

    def summary(self) -> None:
        log(INFO, "\t├──> SCAFFOLD: server lr %.3g, control variates in '%s' / '%s'",
            self.server_lr, CONTROL_KEY, DELTA_KEY)
        super().summary()

    # ----------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._federation_size = len(list(grid.get_node_ids()))
        self._x = {k: v.numpy() for k, v in arrays.items()}
        if not self.control and self._parameter_names is not None:
            self.control = {n: np.zeros_like(self._x[n]) for n in self._parameter_names}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = _record(self.control)
        out = []
        for msg in messages:
            content = RecordDict(dict(msg.content.items()))
            content[CONTROL_KEY] = control
            out.append(Message(content=content, dst_node_id=msg.metadata.dst_node_id,
                               message_type=msg.metadata.message_type))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = [
            {k: v.numpy() for k, v in msg.content[DELTA_KEY].items()}
            for msg in replies
            if not msg.has_error() and DELTA_KEY in msg.content.array_records
        ]
        model_only = [msg if msg.has_error() else _without(msg, DELTA_KEY) for msg in replies]
        arrays, metrics = super().aggregate_train(server_round, model_only)
        if arrays is not None:
            self._update_control(deltas)
            if self.server_lr != 1.0 and self._x is not None:
                arrays = self._server_step(arrays)
        return arrays, metrics

    def _update_control(self, deltas: list[dict[str, np.ndarray]]) -> None:
        """c <- c + (|S| / N) * uniform mean of dc_i  (= c + sum dc_i / N)."""
        if not deltas:
            return
        n = max(self._federation_size, len(deltas))
        for name in deltas[0]:
            total = np.zeros(deltas[0][name].shape, dtype=np.float64)
            for delta in deltas:
                total += delta[name]
            old = self.control.get(name, np.zeros_like(deltas[0][name]))
            self.control[name] = (old.astype(np.float64) + total / n).astype(old.dtype)

    def _server_step(self, averaged: ArrayRecord) -> ArrayRecord:
        """x <- x + lr_g * (mean y - x) for floating arrays; others as averaged."""
        out = {}
        for key, value in averaged.items():
            y, x = value.numpy(), self._x.get(key)
            if x is not None and np.issubdtype(x.dtype, np.floating):
                y = (x.astype(np.float64) + self.server_lr * (y - x)).astype(x.dtype)
            out[key] = y
        return _record(out)


def _without(msg: Message, record_key: str) -> Message:
    """A copy of a reply without one record (FedAvg averages every ArrayRecord it finds)."""
    content = RecordDict({k: v for k, v in msg.content.items() if k != record_key})
    return Message(metadata=copy(msg.metadata), content=content)
