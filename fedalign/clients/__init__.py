"""Client side: fedalign's ClientApp and the drop-in helper for other Flower apps."""

from fedalign.clients.dropin import use_subspace

__all__ = ["use_subspace"]
