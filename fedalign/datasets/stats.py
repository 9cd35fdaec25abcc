"""Known per-channel normalization of the torchvision data sets (pixels in [0, 1]).

Standard deviations are over all training pixels (not the mean per-image std
that some code bases use). Data sets not listed are normalized with the mean
and std of their own training split.
"""

STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
