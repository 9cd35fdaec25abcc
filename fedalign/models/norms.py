"""Normalization layers chosen by name, so ResNet/VGG can swap BatchNorm out.

GroupNorm and LayerNorm matter for FL and LMC: they carry no running
statistics, so interpolated or averaged models need no re-estimation.
"""

from torch import nn

NORMS = ("batch", "group", "layer", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels) if channels % min(32, channels) == 0 else 1, channels)
    if kind == "layer":
        # LayerNorm over (C, H, W) with per-channel affine = GroupNorm with one group.
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
