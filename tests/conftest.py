"""Shared test set-up: one CPU thread per test process, Flower kept local and quiet."""

import os
import sys
from pathlib import Path

import pytest
import torch

from fedalign.deploy.localhost import free_port
from fedalign.tools.local_superlink import listener_pid, stop

torch.set_num_threads(1)
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


_MEASURED = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def measured(pytestconfig):
    """log(line): print a measurement now and again in the closing summary (`pytest -q` hides passing tests' output)."""
    lines = pytestconfig.stash.setdefault(_MEASURED, [])

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    return log


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(_MEASURED, [])
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def flwr_env(tmp_path, monkeypatch):
    """A run-local FLWR_HOME and free local-SuperLink ports; returns the env dict."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    return dict(os.environ)


@pytest.fixture(scope="module")
def local_superlink(tmp_path_factory):
    """Env for `flwr run` with its own FLWR_HOME and ports; stops the SuperLink after."""
    home = tmp_path_factory.mktemp("flwr_home")
    port = free_port()
    env = dict(
        os.environ,
        # `flwr` and the `flower-superlink` it starts come from this interpreter's venv
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        FLWR_HOME=str(home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    yield env
    pid = stop(port)
    assert listener_pid(port) is None, f"SuperLink {pid} still listening"
