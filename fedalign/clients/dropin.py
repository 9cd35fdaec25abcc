"""Drop-in subspace training for any Flower PyTorch ClientApp (one line).

    use_subspace(model, msg, context)   # after loading the global weights

receives the round's mask (storing it in the node's Context) and attaches it
to every optimizer that steps this model's parameters, through torch's global
optimizer step hooks: the app's own training code stays as it is. The hooks
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

from fedalign.masked_optim import anchors_for
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
    anchors = {id(a.param): a for a in anchors_for(model, mask)}

    def _anchored(optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in anchors:
                    yield anchors[id(p)]

    def before(optimizer, _args, _kwargs):
        for anchor in _anchored(optimizer):
            anchor.zero_fixed_grad()

    def after(optimizer, _args, _kwargs):
        for anchor in _anchored(optimizer):
            anchor.restore()

    handles = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
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
