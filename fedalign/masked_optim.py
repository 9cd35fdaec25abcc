"""Keep fixed entries exact under any torch optimizer.

Masking the gradient is not enough: weight decay, momentum and Adam's state
still move an entry whose gradient is zero. `mask_optimizer` therefore guards
every masked parameter its optimizer steps, in three places:

* **when a gradient is accumulated** (a post-accumulate-grad hook on the
  parameter, so also per micro-batch) its fixed entries are set to zero:
  clipping (`clip_grad_norm_`), logging and any other gradient-based logic see
  only the subspace. Before each step they are zeroed again, for gradients
  assigned by hand instead of by `backward`;
* **after each step** the fixed entries are written back exactly from anchors
  taken when the mask was attached. The write goes through a flat view in the
  parameter's own memory order, so it is exact for any layout (channels_last,
  transposed, strided views);
* **after each step** the fixed entries of every floating-point state tensor
  shaped like the parameter (`momentum_buffer`, `exp_avg`, `exp_avg_sq`,
  `max_exp_avg_sq`, `square_avg`, `sum`, ...) are set to zero, so optimizer
  state never builds up on fixed entries, even under coupled weight decay.
  Optimizer bookkeeping that torch does not start at zero is left alone
  (`_BOOKKEEPING`: step counters, Rprop's step sizes, ASGD's eta/mu, NAdam's
  mu_product).

    optimizer = mask_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, mask)

works in anyone's training loop. Several optimizers over disjoint parameter
groups are each wrapped; the first step warns once (`UnprotectedParametersWarning`)
naming masked, trainable parameters that no wrapped optimizer steps.

Changing masks: `mask_optimizer(optimizer, model, new_mask)` replaces the
attached mask. New anchors are the values at that call, and the optimizer
state's entries that the new mask fixes are zeroed at once, so no momentum
carries over onto them; entries the old mask fixed start training with zero
state, as under a fresh optimizer (FedPNU's M then 1 - M with one optimizer).
`remove_mask(optimizer)` detaches everything (gradient hooks included) and
leaves parameters and state as they are.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping

import torch

from fedalign.masks import SubspaceMask

_GUARD_ATTR = "_fedalign_mask_guard"

# Per-parameter optimizer state that torch initialises to something other than
# zero (or that counts steps): zeroing it would be wrong, and the mask does not
# move it anyway (fixed gradients are zero, and no optimizer decays it).
_BOOKKEEPING = frozenset({"step", "step_size", "eta", "mu", "mu_product"})


class UnprotectedParametersWarning(UserWarning):
    """Masked parameters that no optimizer wrapped with `mask_optimizer` steps."""


def _memory_order(t: torch.Tensor) -> list[int] | None:
    """Dims of `t`, outermost to innermost in memory; None when `t` is not dense.

    `t.permute(order)` is then contiguous, so `.view(-1)` of it is a flat view
    of `t`'s storage in memory order. Slices and expanded views have no such
    order.
    """
    order = sorted(range(t.dim()), key=t.stride, reverse=True)
    return order if t.permute(order).is_contiguous() else None


class Anchor:
    """One parameter's fixed entries and the exact values they keep.

    `index`/`values` list the fixed entries in logical (row-major) order.
    Restoring copies the values into a flat view of the parameter's storage
    (`scatter_`, faster than `index_copy_` on CPU): exact, and it touches only
    the fixed entries. For a non-contiguous parameter the indices are re-laid
    in its memory order once (cached while the layout stays); a non-dense one
    is written by boolean indexing. Zeroing gradients and state is one
    multiply by a cached 0/1 tensor each.
    """

    __slots__ = ("param", "fixed", "index", "values", "_scales", "_layout_key", "_layout")

    def __init__(self, param: torch.Tensor, trainable: torch.Tensor) -> None:
        self.param = param
        self.fixed = (~trainable.to(device=param.device, dtype=torch.bool)).contiguous()
        self.index = self.fixed.reshape(-1).nonzero().squeeze(1)
        # reshape copies a non-contiguous parameter, but reads it in logical order
        self.values = param.detach().reshape(-1)[self.index].clone()
        self._scales: dict = {}
        self._layout_key = None
        self._layout = None

    def _scale_for(self, t: torch.Tensor) -> torch.Tensor:
        # 1 on trainable, 0 on fixed entries, in t's dtype and device: one
        # multiply is several times cheaper on CPU than masked_fill_ or where.
        key = (t.dtype, t.device)
        scale = self._scales.get(key)
        if scale is None:
            scale = self._scales[key] = (~self.fixed).to(device=t.device, dtype=t.dtype)
        return scale

    def zero_fixed_grad(self, _param: torch.Tensor | None = None) -> None:
        """Zero the fixed entries of `param.grad` (the signature fits a grad hook).

        A multiply by 0: a non-finite fixed gradient stays non-finite (NaN), so
        overflow checks such as AMP's GradScaler still see it.
        """
        grad = self.param.grad
        if grad is None:
            return
        if grad.is_sparse:
            self.param.grad = grad.mul(self._scale_for(grad))
        else:
            grad.mul_(self._scale_for(grad))

    def zero_fixed_state(self, state: Mapping[str, object] | None) -> None:
        """Zero the fixed entries of every floating state tensor shaped like the parameter."""
        if not state:
            return
        shape = self.param.shape
        for key, value in state.items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == shape
                and (value.is_floating_point() or value.is_complex())
                and key not in _BOOKKEEPING
            ):
                value.mul_(self._scale_for(value))

    def _layout_for(self, data: torch.Tensor):
        if data.device != self.fixed.device:  # the model moved: anchors follow it
            self.fixed, self.index = self.fixed.to(data.device), self.index.to(data.device)
            self.values = self.values.to(data.device)
        values = self.values.to(data.dtype)
        if data.is_contiguous():
            return None, self.index, values
        order = _memory_order(data)
        if order is None:  # not dense: boolean indexing, logical order like `values`
            return "mask", self.fixed, values
        index = self.fixed.permute(order).reshape(-1).nonzero().squeeze(1)
        full = torch.zeros(data.shape, dtype=values.dtype, device=data.device)
        full[self.fixed] = values
        return order, index, full.permute(order).reshape(-1)[index]

    def restore(self) -> None:
        """Write the anchored values back into the fixed entries, bit for bit."""
        with torch.no_grad():
            data = self.param.detach()  # shares storage and strides with the parameter
            key = (data.stride(), data.device, data.dtype)
            if key != self._layout_key:
                self._layout, self._layout_key = self._layout_for(data), key
            order, index, values = self._layout
            if order == "mask":
                data[index] = values
            elif order is None:
                data.view(-1).scatter_(0, index, values)
            else:
                data.permute(order).view(-1).scatter_(0, index, values)


def _masked_parameters(model: torch.nn.Module, mask: SubspaceMask) -> dict[int, tuple]:
    """id(param) -> (name, param) for the parameters `mask` fixes entries of."""
    mask.check_compatible(model)
    return {
        id(p): (n, p) for n, p in model.named_parameters() if not bool(mask.trainable(n).all())
    }


def _stepped_ids(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    return tuple(id(p) for group in optimizer.param_groups for p in group["params"])


class MaskGuard:
    """One mask over one model: anchors, gradient hooks, and the step-hook logic.

    A parameter is anchored (and gets its gradient hook) when `anchor` is
    called for it; `before_step`/`after_step` act on the anchored parameters
    the given optimizer steps. With `anchor_on_sight`, masked parameters that
    later appear in the optimizer (`add_param_group`) are anchored at the
    first step that sees them, at their values then.
    """

    def __init__(self, model: torch.nn.Module, mask: SubspaceMask, anchor_on_sight: bool = False):
        self.mask = mask
        self.masked = _masked_parameters(model, mask)
        self.anchor_on_sight = anchor_on_sight
        self.anchors: dict[int, Anchor] = {}
        self._grad_hooks: list = []
        self._stepped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def anchor(self, params: Iterable[torch.Tensor]) -> None:
        for p in params:
            key = id(p)
            if key in self.masked and key not in self.anchors:
                name, param = self.masked[key]
                anchor = Anchor(param, self.mask.trainable(name))
                self.anchors[key] = anchor
                if param.requires_grad:
                    self._grad_hooks.append(
                        param.register_post_accumulate_grad_hook(anchor.zero_fixed_grad)
                    )

    def stepped(
        self, optimizer: torch.optim.Optimizer, ids: tuple[int, ...] | None = None
    ) -> list[Anchor]:
        """The anchors of the parameters `optimizer` steps (cached per param-group layout)."""
        ids = _stepped_ids(optimizer) if ids is None else ids
        cached = self._stepped.get(optimizer)
        if cached is None or cached[0] != ids:
            if self.anchor_on_sight:
                self.anchor(p for group in optimizer.param_groups for p in group["params"])
            anchors = [self.anchors[i] for i in dict.fromkeys(ids) if i in self.anchors]
            for anchor in anchors:  # state carried over from before is not the subspace's
                anchor.zero_fixed_state(optimizer.state.get(anchor.param))
            cached = (ids, anchors)
            self._stepped[optimizer] = cached
        return cached[1]

    def before_step(
        self, optimizer: torch.optim.Optimizer, ids: tuple[int, ...] | None = None
    ) -> None:
        for anchor in self.stepped(optimizer, ids):
            anchor.zero_fixed_grad()

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        state = optimizer.state
        for anchor in self.stepped(optimizer):
            anchor.restore()
            anchor.zero_fixed_state(state.get(anchor.param))

    def remove(self) -> None:
        """Remove the gradient hooks (step hooks belong to whoever registered them)."""
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks.clear()


# ------------------------------------------------------------- mask_optimizer
class _ModelGuards:
    """The mask_optimizer guards attached for one model, and what was warned about."""

    def __init__(self) -> None:
        self.guards: weakref.WeakSet = weakref.WeakSet()
        self.warned: set[frozenset[str]] = set()


_BY_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _warn_unprotected(model_guards: _ModelGuards, guard: MaskGuard) -> None:
    """Warn once per model about masked trainable parameters no wrapped optimizer steps."""
    covered: set[int] = set()
    for other in model_guards.guards:
        covered |= other.covered
    names = frozenset(
        name for key, (name, p) in guard.masked.items() if p.requires_grad and key not in covered
    )
    if names and names not in model_guards.warned:
        model_guards.warned.add(names)
        listed = sorted(names)
        warnings.warn(
            f"mask_optimizer: {len(listed)} masked parameter(s) are stepped by no optimizer "
            f"wrapped with mask_optimizer, so nothing keeps their fixed entries fixed: "
            f"{', '.join(listed)}. Wrap every optimizer that steps them: "
            "mask_optimizer(other_optimizer, model, mask).",
            UnprotectedParametersWarning,
            stacklevel=2,
        )


class _OptimizerGuard(MaskGuard):
    """A MaskGuard owned by one optimizer (mask_optimizer)."""

    def __init__(self, model, mask, optimizer) -> None:
        super().__init__(model, mask, anchor_on_sight=True)
        self._model_guards = _BY_MODEL.setdefault(model, _ModelGuards())
        self._model_guards.guards.add(self)
        self.covered = set(_stepped_ids(optimizer))
        self._checked: tuple[int, ...] | None = None
        self.handles = (
            optimizer.register_step_pre_hook(lambda opt, _a, _k: self.before_step(opt)),
            optimizer.register_step_post_hook(lambda opt, _a, _k: self.after_step(opt)),
        )
        self.stepped(optimizer)  # anchors now, state zeroed on the fixed entries now

    def before_step(self, optimizer, ids=None) -> None:
        ids = _stepped_ids(optimizer)
        if ids != self._checked:  # first step, or the param groups changed
            self.covered, self._checked = set(ids), ids
            _warn_unprotected(self._model_guards, self)
        super().before_step(optimizer, ids)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._model_guards.guards.discard(self)
        super().remove()


def mask_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, mask: SubspaceMask
) -> torch.optim.Optimizer:
    """Attach `mask` to `optimizer` (in place) and return it.

    Anchors are the values, at call time, of the masked parameters `optimizer`
    steps: wrap right after loading the starting weights. Attaching another
    mask replaces the first (see the module docstring).
    """
    remove_mask(optimizer)
    setattr(optimizer, _GUARD_ATTR, _OptimizerGuard(model, mask, optimizer))
    return optimizer


def remove_mask(optimizer: torch.optim.Optimizer) -> None:
    """Detach a mask attached by `mask_optimizer` (no-op if none)."""
    guard = getattr(optimizer, _GUARD_ATTR, None)
    if guard is not None:
        guard.remove()
        delattr(optimizer, _GUARD_ATTR)


def prune_at_init(model: torch.nn.Module, mask: SubspaceMask) -> None:
    """Random pruning at initialization: zero the masked (fixed) entries.

    Combine with `mask_optimizer` (anchors are then zeros) to keep them zero.
    """
    mask.check_compatible(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(mask.trainable(name).to(p.device, p.dtype))
