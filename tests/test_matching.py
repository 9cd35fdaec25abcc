"""Weight matching: permutation specs preserve the function; matching undoes a permutation."""

import numpy as np
import pytest
import torch
from torch import nn

from fedalign.errors import UsageError
from fedalign.matching import (
    apply_permutation,
    match_models,
    match_to,
    random_permutation,
    spec_for,
    weight_matching,
)
from fedalign.models import build_model

torch.set_num_threads(1)

CASES = [
    ("mlp", (1, 8, 8), {"width": 32, "depth": 3}),
    ("cnn", (3, 16, 16), {}),
    ("cnn", (1, 8, 8), {"width": 2}),
    ("resnet20", (3, 16, 16), {"norm": "batch"}),
    ("resnet20", (3, 16, 16), {"norm": "layer"}),
    ("resnet20", (3, 16, 16), {"norm": "group"}),
    ("resnet20", (3, 16, 16), {"norm": "none"}),
    ("vgg11", (3, 16, 16), {"width": 0.25, "norm": "batch"}),
    ("vgg11", (3, 16, 16), {"width": 0.25, "norm": "group"}),
]


def _ids(case):
    name, shape, kw = case
    return f"{name}-{'x'.join(map(str, shape))}-" + ",".join(f"{k}={v}" for k, v in kw.items())


def _model(name, shape, kw, seed=0):
    model = build_model(name, shape, 10, seed=seed, **kw)
    # Non-trivial norm parameters and running statistics, so a spec that
    # forgets them cannot pass.
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_permuted_model_computes_same_function(case):
    name, shape, kw = case
    model = _model(name, shape, kw)
    spec = spec_for(model)
    perm = random_permutation(spec, model.state_dict(), seed=1)
    assert any((p != np.arange(len(p))).any() for p in perm.values())
    permuted = build_model(name, shape, 10, **kw).eval()
    permuted.load_state_dict(apply_permutation(spec, perm, model.state_dict()))
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), permuted(x)
    assert not torch.equal(
        model.state_dict()[next(iter(spec.perm_to_axes.values()))[0][0]],
        permuted.state_dict()[next(iter(spec.perm_to_axes.values()))[0][0]],
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_group_norm_blocks_are_needed():
    """An unconstrained permutation across GroupNorm groups changes the function."""
    model = _model("resnet20", (3, 16, 16), {"norm": "group"})
    spec = spec_for(model)
    assert spec.blocks, "width-64 GroupNorm(32) has 2-channel groups"
    free = type(spec)(spec.perm_to_axes, spec.axes_to_perm, spec.views, {}, spec.stats)
    rng = np.random.default_rng(3)
    state = model.state_dict()
    perm = {p: rng.permutation(n) for p, n in
            {p: state[a[0][0]].shape[a[0][1]] for p, a in spec.perm_to_axes.items()}.items()}
    other = build_model("resnet20", (3, 16, 16), 10, norm="group").eval()
    other.load_state_dict(apply_permutation(free, perm, state))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() > 1e-4


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3], CASES[5]], ids=_ids)
def test_matching_recovers_a_permuted_copy(case):
    name, shape, kw = case
    model = _model(name, shape, kw)
    spec = spec_for(model)
    state = model.state_dict()
    scrambled = apply_permutation(spec, random_permutation(spec, state, seed=2), state)
    matched, iterations, seconds = match_to(state, scrambled, spec)
    assert iterations >= 2 and seconds >= 0
    for key in state:
        torch.testing.assert_close(matched[key], state[key])


def test_identical_models_take_one_sweep_and_numpy_states_work():
    model = _model("mlp", (1, 8, 8), {"width": 16, "depth": 2})
    spec = spec_for(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    matched, iterations, _ = match_to(state, state, spec)
    assert iterations == 1
    assert all(isinstance(v, np.ndarray) and np.array_equal(v, state[k]) for k, v in matched.items())


def test_matching_two_trained_like_models_increases_similarity():
    a = _model("cnn", (1, 8, 8), {}, seed=0)
    b = _model("cnn", (1, 8, 8), {}, seed=1)
    spec = spec_for(a)
    perm, iterations = weight_matching(spec, a.state_dict(), b.state_dict())
    b2, iters2, seconds = match_models(a, b)
    assert iters2 == iterations and seconds > 0

    def dot(x, y):
        return sum(float((x[k] * y[k]).sum()) for k in spec.axes_to_perm if k.endswith("weight"))

    assert dot(a.state_dict(), b2.state_dict()) > dot(a.state_dict(), b.state_dict())
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(b2(x), b(x), atol=1e-5, rtol=1e-5)


def test_spec_for_rejects_unknown_models_and_foreign_states():
    with pytest.raises(UsageError, match="no permutation spec"):
        spec_for(nn.Linear(2, 2))
    spec = spec_for(build_model("mlp", (4,), 3, width=8, depth=1))
    other = build_model("mlp", (4,), 3, width=8, depth=2).state_dict()
    with pytest.raises(UsageError, match="does not fit"):
        match_to(other, other, spec)
