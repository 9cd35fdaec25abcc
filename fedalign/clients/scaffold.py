"""SCAFFOLD's client side (Karimireddy et al. 2020, option II).

A train message that carries the server control variate c (ArrayRecord
`scaffold-c`, see `fedalign.strategies.scaffold`) is trained with the
correction c - c_i added to every step's gradient (momentum and weight decay
act on the corrected gradient, as in the client's optimizer). After K local
steps with the round's learning rate lr:

    c_i+ = c_i - c + (x - y) / S,   dc_i = c_i+ - c_i

(x - y) / S is option II's estimate of the average local gradient, S the
distance a constant unit gradient moves the weights in those K steps
(`option2_scale`). For plain SGD S = K * lr, SPEC §8's formula exactly. With
heavy-ball momentum beta (PyTorch's SGD) the same gradient moves the weights
lr * sum_k (1 - beta^k) / (1 - beta): for K = 32, beta = 0.9 that is 7.3x K*lr,
and dividing by K*lr overstates every c_i by that factor; the corrections then
grow each round and the CIFAR-10 grid (momentum 0.9) diverged by round 2
(*our choice*: normalise by the momentum-aware S, so the estimate stays the
average gradient; exact for a constant gradient). With Adam/AdamW the estimate
has no such meaning and S = K * lr is kept. The node keeps c_i in its `Context.state` (record `scaffold-ci`, zeros at
start) and replies with its model y and dc_i (record `scaffold-dc`).

Under a subspace mask, dc_i is zero on the round's fixed entries (*our
choice*: c_i only learns where the node trained; under FedPFN c and every c_i
therefore stay exactly zero on fixed entries, under FedPNU c_i keeps its value
on entries that are fixed this round). The stored c_i is c_i + dc_i computed in
the parameter dtype, the same float operation the server applies to c, so
identical clients keep c_i == c exactly.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from torch.utils.data import DataLoader

from fedalign.masks import SubspaceMask
from fedalign.strategies.scaffold import CONTROL_KEY, DELTA_KEY
from fedalign.training import TrainConfig, train

STATE_KEY = "scaffold-ci"  # ArrayRecord in the node's Context.state: its control variate c_i

__all__ = ["DELTA_KEY", "STATE_KEY", "option2_scale", "server_control", "train_scaffold"]


def server_control(msg: Message) -> dict[str, torch.Tensor] | None:
    """The server control variate c of a train message, or None when not SCAFFOLD."""
    if CONTROL_KEY not in msg.content.array_records:
        return None
    return dict(msg.content[CONTROL_KEY].to_torch_state_dict())


def option2_scale(steps: int, cfg: TrainConfig) -> float:
    """How far K SGD steps move the weights per unit of a constant gradient (option II's divisor).

    PyTorch's heavy-ball momentum (v <- beta v + g, w <- w - lr v, v0 = 0) moves
    lr (1 - beta^k) / (1 - beta) at step k; summed over k = 1..K that is
    lr / (1 - beta) * (K - beta (1 - beta^K) / (1 - beta)), and K * lr at beta = 0.
    """
    beta = cfg.momentum if cfg.optimizer == "sgd" else 0.0
    if beta == 0.0:
        return steps * cfg.lr
    return cfg.lr / (1.0 - beta) * (steps - beta * (1.0 - beta**steps) / (1.0 - beta))


def _stored(state: RecordDict, name: str) -> torch.Tensor | None:
    record = state.array_records.get(STATE_KEY)
    return torch.from_numpy(record[name].numpy().copy()) if record is not None and name in record else None


def train_scaffold(
    model: torch.nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    control: dict[str, torch.Tensor],
    state: RecordDict,
    mask: SubspaceMask | None = None,
    criterion=None,
) -> tuple[float, ArrayRecord]:
    """Train `model` in place with SCAFFOLD's correction; update c_i in `state`.

    Returns the mean training loss and the reply record dc_i. K is the number
    of optimizer steps actually taken (epochs x batches), lr the round's lr and
    the divisor `option2_scale(K, cfg)`;
    `criterion` is passed to `fedalign.training.train`.
    """
    params = dict(model.named_parameters())
    c, c_i = {}, {}
    for name, p in params.items():
        zeros = torch.zeros_like(p, device="cpu").detach()
        c[name] = control.get(name, zeros).to(p.dtype)
        stored = _stored(state, name)
        c_i[name] = zeros if stored is None else stored.to(p.dtype)
    x = {name: p.detach().cpu().clone() for name, p in params.items()}
    correction = [(c[name] - c_i[name]).to(p.device) for name, p in params.items()]

    loss = train(model, loader, cfg, mask=mask, grad_correction=correction, criterion=criterion)

    steps = cfg.epochs * len(loader)
    scale = option2_scale(steps, cfg)
    delta, new_c_i = {}, {}
    for name, p in params.items():
        if steps == 0:
            d = torch.zeros_like(c_i[name])
        else:
            y = p.detach().cpu()
            c_plus = c_i[name] - c[name] + (x[name] - y) / scale
            d = c_plus - c_i[name]
        if mask is not None:
            d = torch.where(mask.trainable(name), d, torch.zeros_like(d))
        delta[name] = d.contiguous()
        new_c_i[name] = (c_i[name] + d).contiguous()
    state[STATE_KEY] = ArrayRecord(new_c_i)
    return loss, ArrayRecord(delta)
