"""Properties of masks and restoring, over generated shapes, rho and memory layouts."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedalign.masked_optim import Anchor
from fedalign.masks import SubspaceMask, fixed_entries_equal

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)

shape = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4).map(tuple)
shapes = st.lists(shape, min_size=1, max_size=5).map(lambda s: {f"layer{i}.w": v for i, v in enumerate(s)})
rho = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)
seed = st.integers(min_value=0, max_value=2**63)
granularity = st.sampled_from(["weight", "neuron"])


@st.composite
def masks(draw):
    named = draw(shapes)
    exclude = draw(st.lists(st.sampled_from(sorted(named)), max_size=2, unique=True))
    mask = SubspaceMask.sample(
        named, draw(rho), draw(seed), draw(granularity), exclude=exclude,
        version=draw(st.integers(min_value=0, max_value=2**31)),
    )
    return draw(st.sampled_from([mask, mask.complement()]))


def _values(mask, seed_value, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed_value)
    return {n: torch.randn(m.shape, generator=gen).to(dtype) for n, m in mask.tensors.items()}


@PROPERTY_SETTINGS
@given(masks())
def test_pack_unpack_round_trip_for_any_shapes_and_rho(mask):
    blob = mask.to_bytes()
    back = SubspaceMask.from_bytes(blob)
    assert back.meta == mask.meta and back.names == mask.names
    for name, m in mask.tensors.items():
        assert back.tensors[name].dtype == torch.bool
        assert torch.equal(back.tensors[name], m)
    assert back.digest == mask.digest
    assert mask.wire_nbytes == len(blob)
    assert len(blob) - mask.packed_nbytes == mask.wire_nbytes - mask.packed_nbytes > 0


@PROPERTY_SETTINGS
@given(masks())
def test_complement_of_complement_is_the_original(mask):
    comp = mask.complement()
    twice = comp.complement()
    for name, m in mask.tensors.items():
        assert torch.equal(twice.tensors[name], m)
        if mask.eligible(name):
            assert torch.equal(comp.tensors[name], ~m)
        else:  # never fixed, by M or by 1 - M
            assert m.all() and comp.tensors[name].all()
    assert twice.digest == mask.digest
    assert twice.meta.get("complement", False) == mask.meta.get("complement", False)


@PROPERTY_SETTINGS
@given(masks(), st.integers(0, 1000), st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_restore_fixed_is_exact_and_idempotent(mask, seed_value, dtype):
    current, reference = _values(mask, seed_value, dtype), _values(mask, seed_value + 1, dtype)
    once = mask.restore_fixed(current, reference)
    assert fixed_entries_equal(mask, once, reference)
    for name, m in mask.tensors.items():
        assert once[name].dtype == dtype
        assert torch.equal(once[name][m], current[name][m])  # trainable entries untouched
    twice = mask.restore_fixed(once, reference)
    assert all(torch.equal(twice[n], once[n]) for n in once)
    as_numpy = mask.restore_fixed(
        {n: v.numpy() for n, v in current.items()}, {n: v.numpy() for n, v in reference.items()}
    )
    assert all(np.array_equal(as_numpy[n], once[n].numpy()) for n in once)


@PROPERTY_SETTINGS
@given(
    shape.filter(lambda s: len(s) > 0),
    st.randoms(use_true_random=False),
    rho,
    st.booleans(),
)
def test_anchor_restore_is_exact_and_idempotent_for_any_memory_layout(dims, rnd, fixed_share, slice_it):
    """Contiguous, permuted (channels_last-like) and strided (non-dense) storage alike."""
    order = list(range(len(dims)))
    rnd.shuffle(order)
    stored = torch.randn([dims[d] for d in order])
    if slice_it:  # a non-dense view: every other entry of a twice-as-long last dim
        stored = torch.randn([dims[d] for d in order[:-1]] + [2 * dims[order[-1]]])[..., ::2]
    data = stored.permute([order.index(d) for d in range(len(dims))])
    assert tuple(data.shape) == tuple(dims)
    param = torch.nn.Parameter(data)
    assert param.data_ptr() == data.data_ptr()  # the odd layout is the parameter's own
    trainable = torch.rand(dims) >= fixed_share
    start = param.detach().clone()
    anchor = Anchor(param, trainable)
    noise = torch.randn(dims)
    with torch.no_grad():
        param.copy_(noise)  # in place: keeps the layout
    anchor.restore()
    expected = torch.where(trainable, noise, start)
    assert torch.equal(param.detach(), expected)
    assert param.stride() == data.stride()
    anchor.restore()
    assert torch.equal(param.detach(), expected)
