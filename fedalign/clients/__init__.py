"""Client side: fedalign's ClientApp and the drop-in helpers for other Flower apps."""

from fedalign.clients.dropin import compact_arrays, use_subspace

__all__ = ["compact_arrays", "use_subspace"]
