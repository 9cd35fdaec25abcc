"""Permutation specs: which permutation acts on which axis of which tensor.

As in Git Re-Basin's weight_matching.py, one data structure drives
everything: `axes_to_perm[name][axis]` names the permutation acting on that
axis (None = not permuted), and `perm_to_axes` is its inverse, used by the
matching objective. Two additions for our models:

- `views`: a tensor is reshaped before permuting. The CNN's first dense
  layer reads the flattened conv map (C x H x W), so its input axis is viewed
  as (C, H*W) and the conv permutation acts on C.
- `blocks`: GroupNorm normalizes over groups of g = C / G consecutive
  channels, so an arbitrary channel permutation changes the function. A
  permutation with block size g may only move whole groups onto groups and
  permute channels within them; the solver and the random sampler respect
  it. (g = 1, i.e. InstanceNorm-like groups, and G = 1, i.e. our "layer"
  norm, leave permutations free.)

Every entry of the model's state_dict appears in `axes_to_perm` (buffers
included: BatchNorm running statistics are permuted with their channels and
listed in `stats`, which the objective skips), so `check_spec` can catch a
spec that forgot a tensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from fedalign.errors import UsageError
from fedalign.models.cnn import CNN
from fedalign.models.mlp import MLP
from fedalign.models.resnet import BasicBlock, ResNet20
from fedalign.models.vgg import VGG11

Axes = tuple[str | None, ...]


@dataclass(frozen=True)
class PermutationSpec:
    perm_to_axes: dict[str, list[tuple[str, int]]]
    axes_to_perm: dict[str, Axes]
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    stats: frozenset[str] = frozenset()

    @property
    def perm_names(self) -> list[str]:
        return list(self.perm_to_axes)


def permutation_spec_from_axes_to_perm(
    axes_to_perm: Mapping[str, Axes],
    views: Mapping[str, tuple[int, ...]] | None = None,
    blocks: Mapping[str, int] | None = None,
    stats: frozenset[str] | set[str] = frozenset(),
) -> PermutationSpec:
    perm_to_axes: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, axes in axes_to_perm.items():
        for axis, perm in enumerate(axes):
            if perm is not None:
                perm_to_axes[perm].append((name, axis))
    return PermutationSpec(
        perm_to_axes=dict(perm_to_axes),
        axes_to_perm=dict(axes_to_perm),
        views=dict(views or {}),
        blocks={p: g for p, g in (blocks or {}).items() if g > 1},
        stats=frozenset(stats),
    )


# ------------------------------------------------------------ layer helpers
class _Builder:
    """Collects axes, views, blocks and stats while a spec function walks a model."""

    def __init__(self) -> None:
        self.axes: dict[str, Axes] = {}
        self.views: dict[str, tuple[int, ...]] = {}
        self.blocks: dict[str, int] = {}
        self.stats: set[str] = set()

    def dense(self, name: str, layer: nn.Linear, p_in: str | None, p_out: str | None) -> None:
        self.axes[f"{name}.weight"] = (p_out, p_in)
        if layer.bias is not None:
            self.axes[f"{name}.bias"] = (p_out,)

    def conv(self, name: str, layer: nn.Conv2d, p_in: str | None, p_out: str | None) -> None:
        self.axes[f"{name}.weight"] = (p_out, p_in, None, None)
        if layer.bias is not None:
            self.axes[f"{name}.bias"] = (p_out,)

    def norm(self, name: str, layer: nn.Module, p: str) -> None:
        if isinstance(layer, nn.Identity):
            return
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if layer.affine:
                self.axes[f"{name}.weight"] = self.axes[f"{name}.bias"] = (p,)
            if layer.track_running_stats:
                for stat in ("running_mean", "running_var"):
                    self.axes[f"{name}.{stat}"] = (p,)
                    self.stats.add(f"{name}.{stat}")
                self.axes[f"{name}.num_batches_tracked"] = ()
            return
        if isinstance(layer, nn.GroupNorm):
            if layer.affine:
                self.axes[f"{name}.weight"] = self.axes[f"{name}.bias"] = (p,)
            size = layer.num_channels // layer.num_groups
            if 1 < size < layer.num_channels:
                if self.blocks.get(p, size) != size:
                    raise UsageError(f"permutation {p!r} is shared by GroupNorms of different group sizes")
                self.blocks[p] = size
            return
        raise UsageError(f"no permutation rule for norm layer {name!r} ({type(layer).__name__})")

    def build(self) -> PermutationSpec:
        return permutation_spec_from_axes_to_perm(self.axes, self.views, self.blocks, self.stats)


# ----------------------------------------------------------- architectures
def mlp_spec(model: MLP) -> PermutationSpec:
    """Hidden layer i has permutation P_i; input and logits are not permuted."""
    b, prev = _Builder(), None
    linears = [(n, m) for n, m in model.features.named_children() if isinstance(m, nn.Linear)]
    for i, (idx, layer) in enumerate(linears):
        b.dense(f"features.{idx}", layer, prev, f"P_{i}")
        prev = f"P_{i}"
    b.dense("classifier", model.classifier, prev, None)
    return b.build()


def cnn_spec(model: CNN) -> PermutationSpec:
    """Conv channels permute freely; fc1 sees conv3's channels through the flatten."""
    b = _Builder()
    b.conv("conv1", model.conv1, None, "P_conv1")
    b.conv("conv2", model.conv2, "P_conv1", "P_conv2")
    b.conv("conv3", model.conv3, "P_conv2", "P_conv3")
    b.dense("fc1", model.fc1, "P_conv3", "P_fc1")
    channels = model.conv3.out_channels
    b.axes["fc1.weight"] = ("P_fc1", "P_conv3", None)  # (out, C, H*W) view of (out, C*H*W)
    b.views["fc1.weight"] = (model.fc1.out_features, channels, model.fc1.in_features // channels)
    b.dense("fc2", model.fc2, "P_fc1", None)
    return b.build()


def _block(b: _Builder, name: str, block: BasicBlock, p_res_in: str, p_res_out: str) -> None:
    inner = f"P_{name}_inner"
    b.conv(f"{name}.conv1", block.conv1, p_res_in, inner)
    b.norm(f"{name}.bn1", block.bn1, inner)
    b.conv(f"{name}.conv2", block.conv2, inner, p_res_out)
    b.norm(f"{name}.bn2", block.bn2, p_res_out)
    if len(block.shortcut) > 0:
        b.conv(f"{name}.shortcut.0", block.shortcut[0], p_res_in, p_res_out)
        b.norm(f"{name}.shortcut.1", block.shortcut[1], p_res_out)


def resnet20_spec(model: ResNet20) -> PermutationSpec:
    """One residual-stream permutation per stage, tied through every block's
    output conv, norm and shortcut; one free permutation inside each block."""
    b = _Builder()
    b.conv("conv1", model.conv1, None, "P_res0")
    b.norm("bn1", model.bn1, "P_res0")
    prev = "P_res0"
    for stage, layer in enumerate((model.layer1, model.layer2, model.layer3)):
        stream = f"P_res{stage}"
        for i, block in enumerate(layer):
            _block(b, f"layer{stage + 1}.{i}", block, prev, stream)
            prev = stream
    b.dense("linear", model.linear, prev, None)
    return b.build()


def vgg11_spec(model: VGG11) -> PermutationSpec:
    """Each conv (with the norm after it) has its own output permutation."""
    b, prev, k = _Builder(), None, 0
    children = list(model.features.named_children())
    for j, (idx, layer) in enumerate(children):
        if isinstance(layer, nn.Conv2d):
            p = f"P_{k}"
            b.conv(f"features.{idx}", layer, prev, p)
            norm_idx, norm = children[j + 1]
            b.norm(f"features.{norm_idx}", norm, p)
            prev, k = p, k + 1
    b.dense("classifier", model.classifier, prev, None)
    return b.build()


SPEC_BUILDERS: dict[type, Callable[[nn.Module], PermutationSpec]] = {
    MLP: mlp_spec,
    CNN: cnn_spec,
    ResNet20: resnet20_spec,
    VGG11: vgg11_spec,
}


def spec_for(model: nn.Module) -> PermutationSpec:
    """The permutation spec of a fedalign model, chosen by its class."""
    for cls, builder in SPEC_BUILDERS.items():
        if isinstance(model, cls):
            spec = builder(model)
            check_spec(spec, model.state_dict())
            return spec
    raise UsageError(
        f"no permutation spec for {type(model).__name__}; weight matching supports "
        f"{', '.join(c.__name__ for c in SPEC_BUILDERS)}"
    )


def check_spec(spec: PermutationSpec, state: Mapping[str, object]) -> None:
    """The spec must name every tensor of the state, with the right number of axes."""
    missing = sorted(set(state) - set(spec.axes_to_perm))
    extra = sorted(set(spec.axes_to_perm) - set(state))
    if missing or extra:
        raise UsageError(
            f"permutation spec does not fit the state: not in spec {missing[:3]}, "
            f"not in state {extra[:3]}; use spec_for(model) of the same architecture"
        )
    for name, axes in spec.axes_to_perm.items():
        shape = tuple(spec.views.get(name, tuple(state[name].shape)))
        if len(axes) != len(shape):
            raise UsageError(f"permutation spec gives {name!r} {len(axes)} axes, tensor has {len(shape)}")
    for perm, axes in spec.perm_to_axes.items():
        sizes = {_viewed_shape(spec, name, state[name])[axis] for name, axis in axes}
        if len(sizes) != 1:
            raise UsageError(f"permutation {perm!r} acts on axes of different sizes {sorted(sizes)}")


def _viewed_shape(spec: PermutationSpec, name: str, tensor) -> tuple[int, ...]:
    return tuple(spec.views.get(name, tuple(tensor.shape)))
