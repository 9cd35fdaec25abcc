"""Drop-in subspace training for any Flower PyTorch ClientApp (one line).

    use_subspace(model, msg, context)   # after loading the global weights

receives the round's mask (storing it in the node's Context) and attaches it
to every optimizer that steps this model's parameters, through torch's global
optimizer step hooks: the app's own training code stays as it is. Fixed
gradients are zeroed as they accumulate, fixed entries restored exactly and
optimizer state kept zero on them (`fedalign.masked_optim.MaskGuard`), so an
optimizer that outlives a mask change (FedPNU's M, then 1 - M) carries no
momentum onto newly fixed entries. The hooks
detach when the model is garbage-collected (at the end of the handler) or at
the next call. A node lacking the mask raises `MaskMissingError`; Flower turns
that into an error reply and the server re-sends the mask.

One more line makes the replies compact (only the round's trainable
coordinates travel up; the server rebuilds the rest from what it sent):

    model_record = compact_arrays(model, msg, context)   # instead of ArrayRecord(model.state_dict())
"""

from __future__ import annotations

import weakref

import torch
from flwr.app import ArrayRecord, Context, Message
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from fedalign.masked_optim import MaskGuard
from fedalign.masks import SubspaceMask
from fedalign.protocol import receive_round_mask
from fedalign.transport import reply_arrays

_active: list = []  # hook handles of the currently attached model


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()


def attach_mask(model: torch.nn.Module, mask: SubspaceMask) -> None:
    """Keep `mask`'s fixed entries of `model` exact under any optimizer, from now on."""
    detach_mask()
    guard = MaskGuard(model, mask)
    guard.anchor(model.parameters())
    handles = [
        register_optimizer_step_pre_hook(lambda opt, _a, _k: guard.before_step(opt)),
        register_optimizer_step_post_hook(lambda opt, _a, _k: guard.after_step(opt)),
        guard,  # its .remove() drops the gradient hooks
    ]
    _active.extend(handles)
    weakref.finalize(model, _remove, handles)


def detach_mask() -> None:
    """Detach the hooks of the last `attach_mask` (no-op if none)."""
    _remove(_active)
    _active.clear()


def use_subspace(model: torch.nn.Module, msg: Message, context: Context, configrecord_key: str = "config"):
    """Receive the round's mask and train `model` in its subspace; returns the mask."""
    mask = receive_round_mask(msg, context, configrecord_key)
    if mask is None:
        detach_mask()
        return None
    attach_mask(model, mask)
    return mask


def compact_arrays(
    model: torch.nn.Module, msg: Message, context: Context, configrecord_key: str = "config"
) -> ArrayRecord:
    """The reply's ArrayRecord of `model`: compact when the server accepts it, else full."""
    mask = receive_round_mask(msg, context, configrecord_key)
    return reply_arrays(model.state_dict(), msg, mask, configrecord_key)
