"""fedalign: training-time neuron alignment (TNA-PFN) for model fusion and FL.

The core objects are re-exported here; Flower strategies live in
`fedalign.strategies`, the Flower apps in `fedalign.server_app` and
`fedalign.clients`.
"""

from fedalign.errors import UsageError
from fedalign.masks import SubspaceMask
from fedalign.masked_optim import mask_optimizer, prune_at_init

__version__ = "0.1.0"

__all__ = ["SubspaceMask", "UsageError", "mask_optimizer", "prune_at_init", "__version__"]
