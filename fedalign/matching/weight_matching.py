"""Git Re-Basin weight matching (Ainsworth et al. 2023, Algorithm 2).

Coordinate descent over the permutations of a `PermutationSpec`: for one
permutation P, holding the others fixed, maximize sum_i <W_A[i], (P W_B)[i]>
summed over every tensor axis that P acts on; that is one linear assignment
problem (scipy's linear_sum_assignment). Sweep the permutations in a seeded
random order until a sweep improves none. GroupNorm block constraints are
solved exactly by a two-level assignment (best within-group matching for
every pair of groups, then the best matching of groups).

Works on plain state_dicts (torch tensors or NumPy arrays), so the LMC study
and a FedAvg + weight-matching server share it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from fedalign.errors import check
from fedalign.matching.spec import PermutationSpec, _viewed_shape, check_spec, spec_for

Perm = dict[str, np.ndarray]


def _as_tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _work(spec: PermutationSpec, state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The permuted tensors in float64, in their spec view (objective precision)."""
    out = {}
    for name, axes in spec.axes_to_perm.items():
        if any(p is not None for p in axes):
            t = _as_tensor(state[name]).to(torch.float64)
            out[name] = t.reshape(_viewed_shape(spec, name, t))
    return out


def perm_sizes(spec: PermutationSpec, state: Mapping[str, object]) -> dict[str, int]:
    return {
        p: _viewed_shape(spec, axes[0][0], state[axes[0][0]])[axes[0][1]]
        for p, axes in spec.perm_to_axes.items()
    }


def get_permuted_param(
    spec: PermutationSpec,
    perm: Perm,
    name: str,
    params: Mapping[str, torch.Tensor],
    except_axis: int | None = None,
) -> torch.Tensor:
    """params[name] with every spec'd axis permuted, except `except_axis`."""
    w = params[name]
    for axis, p in enumerate(spec.axes_to_perm[name]):
        if axis != except_axis and p is not None:
            w = torch.index_select(w, axis, torch.as_tensor(perm[p], dtype=torch.long))
    return w


def _assign(score: np.ndarray, block: int) -> np.ndarray:
    """Column for each row maximizing the total score, optionally block-structured."""
    n = score.shape[0]
    if block <= 1 or block >= n:
        return linear_sum_assignment(score, maximize=True)[1]
    groups = n // block
    tiles = score.reshape(groups, block, groups, block).transpose(0, 2, 1, 3)
    inner = np.empty((groups, groups, block), dtype=np.int64)
    value = np.empty((groups, groups))
    for i in range(groups):
        for j in range(groups):
            rows, cols = linear_sum_assignment(tiles[i, j], maximize=True)
            inner[i, j], value[i, j] = cols, tiles[i, j][rows, cols].sum()
    outer = linear_sum_assignment(value, maximize=True)[1]
    return np.concatenate([outer[i] * block + inner[i, outer[i]] for i in range(groups)])


def weight_matching(
    spec: PermutationSpec,
    reference: Mapping[str, object],
    other: Mapping[str, object],
    max_iter: int = 100,
    seed: int = 0,
    init_perm: Perm | None = None,
) -> tuple[Perm, int]:
    """Permutations that bring `other` closest to `reference`, and the sweeps used.

    Sweeps counts every pass over the permutations, the last (non-improving)
    one included, so identical inputs take 1 sweep.
    """
    check(max_iter >= 1, f"max_iter={max_iter} must be >= 1")
    check_spec(spec, reference)
    check_spec(spec, other)
    params_a, params_b = _work(spec, reference), _work(spec, other)
    sizes = perm_sizes(spec, reference)
    perm = {p: np.arange(n) for p, n in sizes.items()} if init_perm is None else dict(init_perm)
    names = spec.perm_names
    iterations = 0
    for iteration in range(max_iter):
        iterations = iteration + 1
        progress = False
        for k in np.random.default_rng([seed, iteration]).permutation(len(names)):
            p, n = names[k], sizes[names[k]]
            score = torch.zeros((n, n), dtype=torch.float64)
            for name, axis in spec.perm_to_axes[p]:
                if name in spec.stats:
                    continue
                w_a = torch.movedim(params_a[name], axis, 0).reshape(n, -1)
                w_b = get_permuted_param(spec, perm, name, params_b, except_axis=axis)
                score += w_a @ torch.movedim(w_b, axis, 0).reshape(n, -1).T
            score_np = score.numpy()
            cols = _assign(score_np, spec.blocks.get(p, 1))
            old = score_np[np.arange(n), perm[p]].sum()
            new = score_np[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perm[p] = cols
        if not progress:
            break
    return perm, iterations


def apply_permutation(spec: PermutationSpec, perm: Perm, state: Mapping[str, object]) -> dict:
    """`state` with every spec'd axis permuted; keeps each value's type and dtype."""
    out = {}
    for name, value in state.items():
        axes = spec.axes_to_perm.get(name, ())
        if not any(p is not None for p in axes):
            out[name] = value.clone() if isinstance(value, torch.Tensor) else np.array(value)
            continue
        t = _as_tensor(value)
        viewed = t.reshape(_viewed_shape(spec, name, t))
        permuted = get_permuted_param(spec, perm, name, {name: viewed}).reshape(t.shape)
        if isinstance(value, torch.Tensor):
            out[name] = permuted.to(value.device).contiguous()
        else:
            out[name] = permuted.numpy().astype(np.asarray(value).dtype, copy=False)
    return out


def random_permutation(
    spec: PermutationSpec, state: Mapping[str, object], seed: int = 0
) -> Perm:
    """Random permutations that respect the spec's GroupNorm blocks (for tests)."""
    rng = np.random.default_rng(seed)
    perm = {}
    for p, n in perm_sizes(spec, state).items():
        block = spec.blocks.get(p, 1)
        if block <= 1:
            perm[p] = rng.permutation(n)
        else:
            groups = rng.permutation(n // block)
            perm[p] = np.concatenate([g * block + rng.permutation(block) for g in groups])
    return perm


def match_to(
    reference_state: Mapping[str, object],
    other_state: Mapping[str, object],
    spec: PermutationSpec,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[dict, int, float]:
    """(other permuted to best match reference, sweeps, wall seconds)."""
    start = time.perf_counter()
    perm, iterations = weight_matching(spec, reference_state, other_state, max_iter, seed)
    permuted = apply_permutation(spec, perm, other_state)
    return permuted, iterations, time.perf_counter() - start


def match_models(
    reference: nn.Module,
    other: nn.Module,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[nn.Module, int, float]:
    """A copy of `other` permuted to match `reference`, the sweeps and the wall time."""
    spec = spec or spec_for(reference)
    permuted, iterations, seconds = match_to(
        reference.state_dict(), other.state_dict(), spec, max_iter, seed
    )
    model = copy.deepcopy(other)
    model.load_state_dict(permuted)
    return model, iterations, seconds
