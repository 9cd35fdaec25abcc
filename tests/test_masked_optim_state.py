"""Masked optimizers keep no state on fixed entries (the gradient is zeroed before each step).

The restore after each step alone keeps fixed *values* exact, so only the
optimizer's state shows whether fixed gradients were zeroed first: momentum
or Adam moments accumulated there would move the entries as soon as the mask
is detached or changes. (Coupled weight decay, SGD's `weight_decay`, feeds
w * decay into the state by design, so these optimizers run without it.)
"""

import pytest
import torch

from fedalign.masked_optim import mask_optimizer, remove_mask
from fedalign.masks import SubspaceMask, fixed_entries_equal
from fedalign.models import build_model

OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}
STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


from test_masked_optim import _train  # noqa: E402  (the same seeded loop)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_no_optimizer_state_on_fixed_entries_so_detaching_moves_nothing(name):
    model = build_model("mlp", (1, 8, 8), 10, seed=0, width=16, depth=1)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    optimizer = mask_optimizer(OPTIMIZERS[name](model.parameters()), model, mask)
    _train(model, optimizer, steps=5)
    checked = 0
    for pname, p in model.named_parameters():
        fixed = ~mask.tensors[pname]
        for key in STATE_KEYS:
            if key in optimizer.state[p]:
                state = optimizer.state[p][key]
                assert torch.count_nonzero(state[fixed]) == 0, f"{key} of {pname} on fixed entries"
                assert torch.count_nonzero(state[~fixed]) > 0
                checked += 1
    assert checked >= len(mask.tensors)
    # Detach, then one step with zero gradients everywhere: stale state would move fixed entries.
    start = {k: v.clone() for k, v in model.state_dict().items()}
    remove_mask(optimizer)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if name == "adamw":
        for group in optimizer.param_groups:
            group["weight_decay"] = 0.0
    optimizer.step()
    assert fixed_entries_equal(mask, start, model.state_dict())
