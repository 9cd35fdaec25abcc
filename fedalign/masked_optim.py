"""Keep fixed entries exact under any torch optimizer.

Masking the gradient is not enough: weight decay, momentum and Adam's state
still move an entry whose gradient is zero. `mask_optimizer` therefore hooks
the optimizer itself: before each step the fixed gradients are zeroed (so
optimizer state never accumulates on them) and after each step the fixed
entries are written back from anchors taken when the wrapper was attached.
`torch.where` copies values, so fixed entries stay bit-identical.

    optimizer = mask_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, mask)

works in anyone's training loop; `remove_mask(optimizer)` detaches it.
"""

from __future__ import annotations

import torch

from fedalign.masks import SubspaceMask

_HANDLES_ATTR = "_fedalign_mask_handles"


class Anchor:
    """One parameter's fixed entries (flat indices) and the values they keep.

    Restoring copies the stored values into those indices (`index_copy_`), which
    is exact and touches only the fixed entries; zeroing fixed gradients is one
    multiply by a float mask. Both are a few percent of a training step at most.
    """

    __slots__ = ("param", "trainable", "grad_scale", "fixed_index", "values")

    def __init__(self, param: torch.nn.Parameter, trainable: torch.Tensor) -> None:
        self.param = param
        self.trainable = trainable.to(param.device)
        self.grad_scale = self.trainable.to(param.dtype)
        self.fixed_index = (~self.trainable).reshape(-1).nonzero().squeeze(1)
        self.values = param.detach().reshape(-1)[self.fixed_index].clone()

    def zero_fixed_grad(self) -> None:
        if self.param.grad is not None:
            self.param.grad.mul_(self.grad_scale)

    def restore(self) -> None:
        with torch.no_grad():
            data = self.param.data
            if data.is_contiguous():
                data.view(-1).index_copy_(0, self.fixed_index, self.values)
            else:
                data.reshape(-1)[self.fixed_index] = self.values


def anchors_for(model: torch.nn.Module, mask: SubspaceMask) -> list[Anchor]:
    """Anchors for every parameter of `model` that has a fixed entry under `mask`."""
    mask.check_compatible(model)
    return [
        Anchor(p, mask.trainable(n))
        for n, p in model.named_parameters()
        if not bool(mask.trainable(n).all())
    ]


def mask_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, mask: SubspaceMask
) -> torch.optim.Optimizer:
    """Attach `mask` to `optimizer` (in place) and return it.

    Anchors are the parameter values at call time: wrap right after loading
    the starting weights. Attaching a second mask replaces the first.
    """
    remove_mask(optimizer)
    anchors = anchors_for(model, mask)

    def before_step(_opt, _args, _kwargs):
        for anchor in anchors:
            anchor.zero_fixed_grad()

    def after_step(_opt, _args, _kwargs):
        for anchor in anchors:
            anchor.restore()

    handles = (
        optimizer.register_step_pre_hook(before_step),
        optimizer.register_step_post_hook(after_step),
    )
    setattr(optimizer, _HANDLES_ATTR, handles)
    return optimizer


def remove_mask(optimizer: torch.optim.Optimizer) -> None:
    """Detach a mask attached by `mask_optimizer` (no-op if none)."""
    for handle in getattr(optimizer, _HANDLES_ATTR, ()):
        handle.remove()
    if hasattr(optimizer, _HANDLES_ATTR):
        delattr(optimizer, _HANDLES_ATTR)


def prune_at_init(model: torch.nn.Module, mask: SubspaceMask) -> None:
    """Random pruning at initialization: zero the masked (fixed) entries.

    Combine with `mask_optimizer` (anchors are then zeros) to keep them zero.
    """
    mask.check_compatible(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(mask.trainable(name).to(p.device, p.dtype))
