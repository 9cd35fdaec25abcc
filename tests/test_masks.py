"""Subspace masks: determinism, serialization, ratios, granularity."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedalign.errors import UsageError
from fedalign.masks import SubspaceMask, fixed_entries_equal
from fedalign.models import build_model


def mlp_100k():
    # 784*120 + 120 + 120*50 + 50 + 50*10 + 10 = 100,760 parameters
    return nn.Sequential(nn.Linear(784, 120), nn.ReLU(), nn.Linear(120, 50), nn.ReLU(), nn.Linear(50, 10))


def test_rho_fixes_that_fraction_of_a_100k_model():
    model = mlp_100k()
    assert 100_000 <= sum(p.numel() for p in model.parameters()) < 110_000
    for rho in (0.0, 0.4, 0.7):
        mask = SubspaceMask.sample(model, rho=rho, seed=3)
        assert abs(mask.fixed_fraction - rho) <= 0.01


def test_same_arguments_same_digest_in_two_processes():
    code = (
        "from fedalign.models import build_model; from fedalign.masks import SubspaceMask;"
        "m = build_model('cnn', (3, 32, 32), 10, seed=0);"
        "print(SubspaceMask.sample(m, 0.4, 11, 'weight', exclude=['fc2.*']).digest)"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    model = build_model("cnn", (3, 32, 32), 10, seed=0)
    here = SubspaceMask.sample(model, 0.4, 11, "weight", exclude=["fc2.*"]).digest
    assert digests == {here}
    assert len(here) == 64
    assert SubspaceMask.sample(model, 0.4, 12).digest != here


def test_pack_unpack_round_trip_is_exact_and_bit_packed():
    model = build_model("resnet20", (3, 32, 32), 10, seed=0)
    for granularity in ("weight", "neuron"):
        mask = SubspaceMask.sample(model, 0.4, 5, granularity)
        blob = mask.to_bytes()
        back = SubspaceMask.from_bytes(blob)
        assert back.digest == mask.digest
        assert back.meta == mask.meta
        for name in mask.names:
            assert torch.equal(back.tensors[name], mask.tensors[name])
        assert mask.packed_nbytes == (mask.numel + 7) // 8
        assert mask.packed_nbytes < len(blob) < mask.packed_nbytes + 8192  # bits + small header


def test_corrupt_blob_is_rejected():
    mask = SubspaceMask.sample(mlp_100k(), 0.4, 0)
    with pytest.raises(UsageError):
        SubspaceMask.from_bytes(mask.to_bytes()[:-10])
    with pytest.raises(UsageError):
        SubspaceMask.from_bytes(b"garbage" + mask.to_bytes())


def test_neuron_granularity_fixes_whole_rows_with_their_bias():
    model = build_model("cnn", (3, 32, 32), 10, seed=0)
    mask = SubspaceMask.sample(model, 0.4, 1, "neuron")
    w, b = mask.tensors["conv2.weight"], mask.tensors["conv2.bias"]
    rows = w.reshape(w.shape[0], -1)
    assert torch.all(rows.all(dim=1) | (~rows).all(dim=1))  # each filter all-fixed or all-trainable
    assert torch.equal(rows[:, 0], b)  # the bias entry goes with its filter
    assert 0.2 < mask.fixed_fraction < 0.6


def test_complement_swaps_fixed_and_trainable_but_not_excluded():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, 0.4, 2, exclude=["classifier.*"])
    comp = mask.complement()
    assert torch.equal(comp.tensors["features.1.weight"], ~mask.tensors["features.1.weight"])
    assert comp.tensors["classifier.weight"].all() and mask.tensors["classifier.weight"].all()
    assert comp.complement().digest == mask.digest
    assert comp.digest != mask.digest


def test_include_patterns_limit_the_mask():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, 0.5, 2, include=["features.1.weight"])
    assert not mask.tensors["features.1.weight"].all()
    assert all(mask.tensors[n].all() for n in mask.names if n != "features.1.weight")


@pytest.mark.parametrize("rho", [-0.1, 1.0, 1.5])
def test_rho_outside_unit_interval_is_a_usage_error(rho):
    with pytest.raises(UsageError, match="rho"):
        SubspaceMask.sample(mlp_100k(), rho, 0)


def test_mask_for_another_architecture_is_rejected():
    mask = SubspaceMask.sample(build_model("mlp", (1, 8, 8), 10), 0.4, 0)
    with pytest.raises(UsageError, match="does not fit"):
        mask.check_compatible(build_model("cnn", (1, 8, 8), 10))


def test_fixed_entries_equal_detects_a_single_bit_change():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    mask = SubspaceMask.sample(model, 0.4, 0)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in a.items()}
    assert fixed_entries_equal(mask, a, b)
    fixed_index = (~mask.tensors["classifier.weight"]).nonzero()[0]
    b["classifier.weight"][tuple(fixed_index)] = torch.nextafter(
        b["classifier.weight"][tuple(fixed_index)], torch.tensor(1.0)
    )
    assert not fixed_entries_equal(mask, a, b)


# ------------------------------------------------------------------ issue 9: mask parts
SHAPES_WITH_SCALARS = {"scale": (), "w": (6, 5), "b": (6,), "temperature": ()}


@pytest.mark.parametrize("exclude", [None, ["b"]])
def test_parameters_sample_never_masks_stay_trainable_in_the_complement(exclude):
    """0-dim parameters (and excluded ones) are never fixed, by M or by 1 - M."""
    mask = SubspaceMask.sample(SHAPES_WITH_SCALARS, 0.5, 3, exclude=exclude)
    comp = SubspaceMask.from_bytes(mask.to_bytes()).complement()  # also after the wire
    for name in ("scale", "temperature") + (("b",) if exclude else ()):
        assert mask.tensors[name].all() and comp.tensors[name].all(), name
        assert not mask.eligible(name) and not comp.eligible(name)
    assert torch.equal(comp.tensors["w"], ~mask.tensors["w"])
    assert mask.eligible("w")
    assert comp.complement() == mask


def test_version_zero_is_the_mask_existing_records_hold():
    """Digests recorded before mask versions existed stay valid (golden values)."""
    model = build_model("cnn", (3, 32, 32), 10, seed=0)
    assert SubspaceMask.sample(model, 0.4, 11).digest == (
        "b0b58543cbabb778fa3d535eb5593c114763214575b2416e818d358cbd186eae"
    )
    assert SubspaceMask.sample(model, 0.4, 11, "neuron", exclude=["fc2.*"], version=0).digest == (
        "b2d1f729e4c49fe7fc14007ef3478f930a967030b36fe0ed836aacdcd378b257"
    )
    assert SubspaceMask.sample({"a": (3, 5), "b": (7,)}, 0.5, 2**40, version=0).digest == (
        "ba41d59dc96dbe1fd858977c8567a5780ea1898a495f265ca31e7910536fe7cf"
    )


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
def test_seed_and_version_pairs_never_share_a_mask(granularity):
    shapes = {"w": (64, 32), "b": (64,)}
    digests = {
        (seed, version): SubspaceMask.sample(shapes, 0.5, seed, granularity, version=version).digest
        for seed in range(6)
        for version in range(6)
    }
    assert len(set(digests.values())) == len(digests)  # seed + version would give 11, not 36
    again = SubspaceMask.sample(shapes, 0.5, 2, granularity, version=3)
    assert again.digest == digests[(2, 3)] and again.meta["version"] == 3


def test_mask_rng_is_the_one_derivation_from_seed_version_and_name():
    from fedalign.masks import mask_rng

    a = mask_rng(5, "w", version=1).random(8)
    assert np.array_equal(a, mask_rng(5, "w", version=1).random(8))
    assert not np.array_equal(a, mask_rng(6, "w", version=0).random(8))
    assert not np.array_equal(a, mask_rng(5, "w", version=2).random(8))
    with pytest.raises(UsageError, match="version"):
        SubspaceMask.sample({"w": (4,)}, 0.5, 0, version=-1)


@pytest.mark.parametrize("rho", [0.0, 0.4])
def test_wire_nbytes_is_the_size_of_to_bytes(rho):
    model = build_model("resnet20", (3, 32, 32), 10, seed=0)
    for mask in (SubspaceMask.sample(model, rho, 5), SubspaceMask.sample(model, rho, 5).complement()):
        assert mask.wire_nbytes == len(mask.to_bytes())
        assert mask.wire_nbytes > mask.packed_nbytes  # the JSON header rides along
