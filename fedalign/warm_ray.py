"""Keep one Ray runtime and its client actors alive across Flower simulations in one process.

Flower's Ray backend starts Ray, spawns the actor pool, and at the end of every
`run_simulation` terminates the actors and shuts Ray down. For a sweep of small
cells that start-up (Ray, then actors importing torch) costs more than the
training. Inside `warm_engine()`, Flower builds `WarmRayBackend` instead: the
first simulation creates the pool as usual, later ones with the same client
resources reuse the same actors, and Ray stays up until the block ends.

Reusing actors is safe because Flower's `ClientAppActor` is generic (the
ClientApp travels with every message) and fedalign's per-process caches are
keyed by the run config. A simulation that fails marks the pool as suspect:
it is torn down and the next simulation builds a fresh one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_POOL: dict = {}  # "key": client resources, "pool": BasicActorPool


def _backend_class():
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    class WarmRayBackend(RayBackend):
        """RayBackend whose actor pool and Ray runtime outlive one simulation."""

        def build(self, app_fn) -> None:
            key = tuple(sorted(self.client_resources.items()))
            if _POOL.get("key") == key and _POOL.get("healthy"):
                self.pool = _POOL["pool"]
                self.app_fn = app_fn
            else:
                _drop_pool()
                super().build(app_fn)
                _POOL.update(key=key, pool=self.pool)
            _POOL["healthy"] = False  # set again only when the simulation ends cleanly

        def terminate(self) -> None:
            """Keep actors and Ray for the next simulation (see `release`)."""

    return WarmRayBackend


def _drop_pool() -> None:
    pool = _POOL.pop("pool", None)
    _POOL.clear()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.terminate_all_actors()


def mark_healthy() -> None:
    """Called after a simulation finished without error: its pool may serve the next one."""
    if "pool" in _POOL:
        _POOL["healthy"] = True


def release() -> None:
    """Terminate the kept actors and shut Ray down."""
    _drop_pool()
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def warm_engine() -> Iterator[None]:
    """Within the block, Flower simulations share one Ray runtime and actor pool."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.RayBackend
    raybackend.RayBackend = _backend_class()
    try:
        yield
    finally:
        raybackend.RayBackend = original
        release()


def is_active() -> bool:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    return raybackend.RayBackend.__name__ == "WarmRayBackend"
