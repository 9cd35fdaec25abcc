"""fedalign: training-time neuron alignment (TNA-PFN) for model fusion and FL.

The core objects are re-exported here; Flower strategies live in
`fedalign.strategies`, the Flower apps in `fedalign.server_app` and
`fedalign.clients`.
"""

from fedalign.errors import UsageError

__version__ = "0.1.0"

# Imported on first use, so that `fedalign <command>` can refuse bad input
# before torch is loaded (about 1 GB and seconds of start-up).
_LAZY = {
    "SubspaceMask": "fedalign.masks",
    "mask_optimizer": "fedalign.masked_optim",
    "prune_at_init": "fedalign.masked_optim",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedalign' has no attribute {name!r}")

__all__ = ["SubspaceMask", "UsageError", "mask_optimizer", "prune_at_init", "__version__"]
