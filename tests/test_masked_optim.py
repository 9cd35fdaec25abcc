"""Masked training keeps fixed entries bit-identical under real optimizers."""

import pytest
import torch
from torch import nn

from fedalign.masked_optim import mask_optimizer, prune_at_init, remove_mask
from fedalign.masks import SubspaceMask, fixed_entries_equal
from fedalign.models import build_model

OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
}


def _train(model, optimizer, steps=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_fixed_entries_stay_bit_identical_for_50_steps(name, model_name):
    model = build_model(model_name, (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = mask_optimizer(OPTIMIZERS[name](model.parameters()), model, mask)
    _train(model, optimizer)
    end = model.state_dict()
    assert fixed_entries_equal(mask, start, end)
    moved = torch.cat([(end[n] != start[n])[m] for n, m in mask.tensors.items()])
    assert moved.float().mean() > 0.8  # a few dead ReLU units may not move
    for param_name, trainable in mask.tensors.items():
        assert (end[param_name] != start[param_name])[trainable].any(), param_name


def test_masking_only_the_gradient_is_not_enough():
    """Why the wrapper hooks the step: weight decay and momentum move zero-grad entries."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for n, p in model.named_parameters():
        p.register_hook(lambda g, m=mask.trainable(n): g * m)
    _train(model, optimizer, steps=5)
    assert not fixed_entries_equal(mask, start, model.state_dict())


def test_remove_mask_detaches_the_hooks():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = mask_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1), model, mask)
    remove_mask(optimizer)
    _train(model, optimizer, steps=3)
    assert not fixed_entries_equal(mask, start, model.state_dict())


def test_random_pruning_zeroes_masked_entries_and_keeps_them_zero():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.5, seed=4)
    prune_at_init(model, mask)
    optimizer = mask_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, mask)
    _train(model, optimizer, steps=20)
    for name, p in model.named_parameters():
        assert torch.all(p[~mask.tensors[name]] == 0)
        assert torch.count_nonzero(p[mask.tensors[name]]) > 0
