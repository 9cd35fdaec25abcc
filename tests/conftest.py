"""Shared test set-up: one CPU thread per test process, Flower kept local and quiet."""

import os

import pytest
import torch

from fedalign.deploy.localhost import free_port

torch.set_num_threads(1)
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def flwr_env(tmp_path, monkeypatch):
    """A run-local FLWR_HOME and free local-SuperLink ports; returns the env dict."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    return dict(os.environ)
