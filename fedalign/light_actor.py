"""A Ray client actor that imports only what running a ClientApp needs.

Flower's `ClientAppActor` lives in `flwr.simulation.ray_transport.ray_actor`;
importing it runs `flwr.simulation`'s package init, which imports the
SuperLink (SQLAlchemy, Alembic, FastAPI, Pydantic, ...): ~550 modules and
~47 MiB of private memory in every actor, none of which a client uses.
`ClientAppActor` here does what Flower's does (`run`: load the ClientApp and
pass the message through it, errors wrapped the same way; `terminate`) from a
module that imports ray and `flwr.clientapp` only. `light_actors()` makes
Flower's Ray backend build its pool from it; the engine, the pool and the
message flow stay Flower's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import ray
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError


@ray.remote
class ClientAppActor:
    """Flower's `ClientAppActor` contract: `run(client_app_fn, message, cid, context)`, `terminate()`."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Callable[[], ClientApp], message: Message, cid: str,
            context: Context) -> tuple[str, Message, Context]:  # fmt: skip
        try:
            out_message = client_app_fn()(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:  # noqa: BLE001 - Flower reports it as a ClientApp error reply
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        ray.actor.exit_actor()


@contextlib.contextmanager
def light_actors() -> Iterator[None]:
    """Within the block, Flower's Ray backend spawns `ClientAppActor` from this module."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.ClientAppActor
    raybackend.ClientAppActor = ClientAppActor
    try:
        yield
    finally:
        raybackend.ClientAppActor = original
