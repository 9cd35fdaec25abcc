"""Masked training keeps fixed entries bit-identical under real optimizers."""

import warnings

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


# ------------------------------------------------------- issue 9: exactness in every setting
def _batches(steps, in_shape=(1, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, *in_shape, generator=gen), torch.randint(0, 10, (16,), generator=gen))
        for _ in range(steps)
    ]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _column_major(model):
    """Same values, every 2-D+ parameter stored with its dims reversed in memory."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                dims = tuple(reversed(range(p.dim())))
                p.data = p.data.permute(dims).contiguous().permute(dims)
    return model


@pytest.mark.parametrize("layout", ["channels_last", "column_major"])
@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adamw"])
def test_fixed_entries_stay_exact_for_non_contiguous_parameters(layout, name):
    model = build_model("cnn", (3, 8, 8), 10, seed=0)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    else:
        _column_major(model)
    assert any(not p.is_contiguous() for p in model.parameters())
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    optimizer = mask_optimizer(OPTIMIZERS[name](model.parameters()), model, mask)
    for x, y in _batches(30, (3, 8, 8)):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert fixed_entries_equal(mask, start, model.state_dict())
    for p_name, p in model.named_parameters():
        assert (p.detach() != start[p_name])[mask.trainable(p_name)].any(), p_name


def _conv_fc_optimizers(model, wrap_fc: bool, mask):
    conv = [p for n, p in model.named_parameters() if n.startswith("conv")]
    fc = [p for n, p in model.named_parameters() if n.startswith("fc")]
    opt_conv = mask_optimizer(
        torch.optim.SGD(conv, lr=0.05, momentum=0.9, weight_decay=5e-4), model, mask
    )
    opt_fc = torch.optim.AdamW(fc, lr=1e-3, weight_decay=1e-2)
    if wrap_fc:
        opt_fc = mask_optimizer(opt_fc, model, mask)
    return opt_conv, opt_fc


def _train_two(model, optimizers, steps=10):
    for x, y in _batches(steps):
        for opt in optimizers:
            opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for opt in optimizers:
            opt.step()


def test_two_wrapped_optimizers_over_disjoint_groups_are_both_exact():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    opt_conv, opt_fc = _conv_fc_optimizers(model, wrap_fc=True, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every masked parameter is protected: no warning
        for x, y in _batches(10):
            opt_conv.zero_grad()
            opt_fc.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt_fc.step()
            assert fixed_entries_equal(mask, start, model.state_dict())
            opt_conv.step()
            assert fixed_entries_equal(mask, start, model.state_dict())
    end = model.state_dict()
    for name, trainable in mask.tensors.items():
        assert (end[name] != start[name])[trainable].any(), name


def test_an_unwrapped_second_optimizer_gets_one_warning_naming_its_parameters():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    opt_conv, opt_fc = _conv_fc_optimizers(model, wrap_fc=False, mask=mask)
    with pytest.warns(UserWarning) as record:
        _train_two(model, [opt_conv, opt_fc], steps=5)
    about_mask = [w for w in record if "fc1.weight" in str(w.message)]
    assert len(about_mask) == 1
    message = str(about_mask[0].message)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert name in message
    assert "conv1.weight" not in message


def test_frozen_parameters_and_later_param_groups_need_no_second_optimizer():
    """requires_grad=False parameters cannot move: no warning. add_param_group is guarded too."""
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    for p in model.fc2.parameters():
        p.requires_grad_(False)
    start = _snapshot(model)
    conv = [p for n, p in model.named_parameters() if n.startswith("conv")]
    optimizer = mask_optimizer(torch.optim.SGD(conv, lr=0.05, momentum=0.9, weight_decay=5e-4), model, mask)
    optimizer.add_param_group({"params": list(model.fc1.parameters())})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, optimizer, steps=5)
    assert fixed_entries_equal(mask, start, model.state_dict())
    assert _state_on(optimizer, model, mask, "fixed") == 0.0


def test_a_wrapped_optimizer_leaves_parameters_it_does_not_step_alone():
    """The wrapper anchors what its optimizer steps, nothing else.

    The conv entries of a mask sampled with and without `exclude=["fc*"]` are
    the same (per-name seeding), so the two runs differ only in whether the
    conv optimizer's wrapper touches the fc parameters it does not step.
    """
    runs = []
    for exclude in (None, ["fc*"]):
        model = build_model("cnn", (1, 8, 8), 10, seed=0)
        mask = SubspaceMask.sample(model, rho=0.4, seed=1, exclude=exclude)
        opt_conv, opt_fc = _conv_fc_optimizers(model, wrap_fc=False, mask=mask)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _train_two(model, [opt_fc, opt_conv], steps=5)  # conv steps last
        runs.append(_snapshot(model))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_clipping_and_logging_see_only_subspace_gradients():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    reference = build_model("cnn", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    optimizer = mask_optimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, mask)
    (x1, y1), (x2, y2) = _batches(2)
    optimizer.zero_grad(set_to_none=False)
    for net in (model, reference):  # two micro-batches accumulate into .grad
        nn.functional.cross_entropy(net(x1), y1).backward()
        nn.functional.cross_entropy(net(x2), y2).backward()
    full = {n: p.grad.clone() for n, p in reference.named_parameters()}
    for n, p in model.named_parameters():
        assert torch.all(p.grad[mask.fixed(n)] == 0), n
        assert torch.equal(p.grad[mask.trainable(n)], full[n][mask.trainable(n)]), n
    subspace_norm = torch.linalg.vector_norm(
        torch.cat([(g * mask.trainable(n)).reshape(-1) for n, g in full.items()])
    )
    full_norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in full.values()]))
    used = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    assert float(used) == pytest.approx(float(subspace_norm), rel=1e-6)
    assert float(subspace_norm) < 0.95 * float(full_norm)
    remove_mask(optimizer)  # detached: gradients are left as they are again
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x1), y1).backward()
    assert any(bool((p.grad[mask.fixed(n)] != 0).any()) for n, p in model.named_parameters())


STATEFUL = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-2, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2),
    "rmsprop-wd": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, weight_decay=1e-2),
    "adagrad-wd": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=1e-2),
    "nadam-wd": lambda ps: torch.optim.NAdam(ps, lr=1e-3, weight_decay=1e-2),
}


def _state_on(optimizer, model, mask, entries: str) -> float:
    """Largest |state| over the fixed (or trainable) entries of every param-shaped state tensor."""
    worst = 0.0
    for name, p in model.named_parameters():
        select = mask.fixed(name) if entries == "fixed" else mask.trainable(name)
        for key, value in optimizer.state[p].items():
            if torch.is_tensor(value) and value.shape == p.shape and key != "step":
                if select.any():
                    worst = max(worst, float(value[select].abs().max()))
    return worst


@pytest.mark.parametrize("name", list(STATEFUL))
def test_optimizer_state_stays_zero_on_fixed_entries(name):
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    optimizer = mask_optimizer(STATEFUL[name](model.parameters()), model, mask)
    _train(model, optimizer, steps=10)
    assert fixed_entries_equal(mask, start, model.state_dict())
    assert _state_on(optimizer, model, mask, "fixed") == 0.0
    assert _state_on(optimizer, model, mask, "trainable") > 0.0


def test_rprop_step_sizes_are_left_as_rprop_keeps_them():
    """Rprop's per-entry step size starts at lr, not zero: the mask must not zero it."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    optimizer = mask_optimizer(torch.optim.Rprop(model.parameters(), lr=1e-3), model, mask)
    _train(model, optimizer, steps=5)
    assert fixed_entries_equal(mask, start, model.state_dict())
    for name, p in model.named_parameters():
        step_size = optimizer.state[p]["step_size"]
        assert torch.all(step_size[mask.fixed(name)] == 1e-3), name


def test_attaching_the_complement_to_a_live_optimizer_starts_it_clean():
    """FedPNU with one optimizer across rounds: M, then 1 - M on the same optimizer."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    optimizer = mask_optimizer(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4), model, mask
    )
    _train(model, optimizer, steps=5)
    assert _state_on(optimizer, model, mask, "trainable") > 0.0
    comp = mask.complement()
    mask_optimizer(optimizer, model, comp)  # replaces M
    assert _state_on(optimizer, model, comp, "fixed") == 0.0  # no momentum carried onto 1 - M's fixed
    start = _snapshot(model)
    _train(model, optimizer, steps=5, seed=1)
    assert fixed_entries_equal(comp, start, model.state_dict())
    assert _state_on(optimizer, model, comp, "fixed") == 0.0
    assert not fixed_entries_equal(mask, start, model.state_dict())  # M's fixed entries now train


def test_dropin_attach_mask_is_exact_layout_correct_and_keeps_state_clean():
    from fedalign.clients.dropin import attach_mask, detach_mask

    model = build_model("cnn", (3, 8, 8), 10, seed=0).to(memory_format=torch.channels_last)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    attach_mask(model, mask)
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for x, y in _batches(10, (3, 8, 8)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for n, p in model.named_parameters():
                assert torch.all(p.grad[mask.fixed(n)] == 0), n
            optimizer.step()
        assert fixed_entries_equal(mask, start, model.state_dict())
        assert _state_on(optimizer, model, mask, "fixed") == 0.0
        comp = mask.complement()  # next FedPNU round, same optimizer
        attach_mask(model, comp)
        start = _snapshot(model)
        for x, y in _batches(3, (3, 8, 8), seed=1):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            assert _state_on(optimizer, model, comp, "fixed") == 0.0
        assert fixed_entries_equal(comp, start, model.state_dict())
    finally:
        detach_mask()


class _NormalizedSGD(torch.optim.Optimizer):
    """p -= lr * g / ||g|| over all parameters: the update of every entry depends on all
    gradients (like LARS, LAMB or Muon), so fixed gradients must be zero before the step."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params]))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad / norm)


def test_gradients_set_by_hand_are_zeroed_on_fixed_entries_before_the_step():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, rho=0.4, seed=1)
    start = _snapshot(model)
    optimizer = mask_optimizer(_NormalizedSGD(model.parameters(), lr=1.0), model, mask)
    gen = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()  # no backward: the accumulate hooks never run
    optimizer.step()
    sub_norm = torch.linalg.vector_norm(
        torch.cat([(g * mask.trainable(n)).reshape(-1) for n, g in grads.items()])
    )
    for n, p in model.named_parameters():
        expected = torch.where(mask.trainable(n), start[n] - grads[n] / sub_norm, start[n])
        assert torch.allclose(p.detach(), expected, atol=1e-7), n
        assert torch.all(p.grad[mask.fixed(n)] == 0), n
