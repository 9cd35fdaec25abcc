"""Keep a base strategy's own copy of the global model equal to what the wrapper returns.

Server optimizers remember the global model they stepped from: FedAvgM keeps
`current_arrays` (an ArrayRecord) and updates it to its *own* output; FedOpt
(FedAdam, FedYogi, FedAdagrad) keeps `current_arrays` (a dict of arrays) set in
`configure_train`. The wrappers change the base's output afterwards (fixed
entries restored, buffers averaged plainly), so without a re-sync FedAvgM's
next pseudo-gradient contains the step the restore discarded and the dropped
move returns when the entry becomes trainable again.

Only the model is re-synced. Optimizer state (FedAvgM's momentum, FedOpt's
m_t / v_t) is left as the base computed it: on entries fixed in a round the
base saw a zero pseudo-gradient (clients did not move them), so their momentum
decays as after any zero-gradient step, and the step the base took there was
discarded by the restore - a projected optimizer step.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy


def sync_base_model(base: Strategy, arrays: ArrayRecord) -> None:
    """Make `base`'s notion of the current global model equal `arrays` (a copy)."""
    if not hasattr(base, "current_arrays"):
        return
    current = base.current_arrays
    values = {k: np.array(v.numpy()) for k, v in arrays.items()}
    if isinstance(current, dict):  # FedOpt family
        base.current_arrays = values
    else:  # FedAvgM (None before its first configure_train) and ArrayRecord users
        base.current_arrays = ArrayRecord({k: Array(v) for k, v in values.items()})
