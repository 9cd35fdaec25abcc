"""fedalign.light_actor: client actors load the ClientApp side of Flower only."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = ("flwr.simulation", "flwr.superlink", "sqlalchemy", "alembic", "fastapi")


def _imported_after(module: str) -> dict[str, bool]:
    code = (f"import json, sys, {module}\n"
            f"print(json.dumps({{m: m in sys.modules for m in {list(SERVER_SIDE)!r}}}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_actor_module_and_client_app_import_no_server_side_flower():
    # what an actor process imports: the actor class's module, then the ClientApp's
    assert _imported_after("fedalign.light_actor") == dict.fromkeys(SERVER_SIDE, False)
    assert _imported_after("fedalign.clients.client_app") == dict.fromkeys(SERVER_SIDE, False)


def test_flowers_own_actor_module_does_import_them():
    """The reason for the module: if Flower's actor became light, it could go."""
    imported = _imported_after("flwr.simulation.ray_transport.ray_actor")
    assert imported["flwr.simulation"] and imported["sqlalchemy"]


def test_light_actors_swaps_the_backends_actor_class_and_restores_it():
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedalign.light_actor import ClientAppActor, light_actors

    flowers = raybackend.ClientAppActor
    with light_actors():
        assert raybackend.ClientAppActor is ClientAppActor
    assert raybackend.ClientAppActor is flowers
