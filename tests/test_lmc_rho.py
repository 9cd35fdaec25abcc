"""LMC study over a list of rhos: pruning vs TNA-PFN vs vanilla, and the rho plot."""

import io
from pathlib import Path

import pytest
import torch

from fedalign.lmc_study import load_spec, resolve, run_study
from fedalign.lmc_study.config import method_list

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": "digits", "model": "mlp", "model-args": "width=16,depth=1", "seeds": [0],
    "epochs": 1, "points": 3, "threads": 1, "methods": ["vanilla", "pfn", "prune"],
}  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmc_rho")
    config = resolve({**TINY, "rho": [0.2, 0.6], "prune-rho": [0.2, 0.6], "match": True})
    return out, run_study(config, out, io.StringIO())


def test_every_method_at_every_rho_and_a_rho_plot(study):
    out, paths = study
    rows = (out / "table.csv").read_text().splitlines()[1:]
    methods = [r.split(",")[1] for r in rows]
    assert methods == [
        "vanilla", "vanilla + WM", "TNA-PFN rho=0.2", "TNA-PFN rho=0.2 + WM", "TNA-PFN rho=0.6",
        "TNA-PFN rho=0.6 + WM", "prune rho=0.2", "prune rho=0.2 + WM", "prune rho=0.6", "prune rho=0.6 + WM",
    ]  # fmt: skip
    assert paths["rho.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_pruning_cell_uses_its_own_rho(study):
    import json

    out, _ = study
    for rho in (0.2, 0.6):
        cell = json.loads((out / "cells" / f"base__prune-rho{rho:g}__seed0.json").read_text())
        assert cell["train"]["mask"]["fixed_fraction"] == pytest.approx(rho, abs=0.05)


def test_one_rho_writes_no_rho_plot(tmp_path):
    paths = run_study(resolve({**TINY, "methods": ["vanilla", "pfn"], "rho": [0.4]}), tmp_path, io.StringIO())
    assert "rho.png" not in paths and not (tmp_path / "rho.png").exists()


def test_cifar10_rho_spec_is_the_promised_grid():
    config = resolve(load_spec(ROOT / "experiments" / "lmc_cifar10_rho.yaml"))
    pairs = method_list(config)
    rhos = [0.1, 0.2, 0.4, 0.6, 0.8]
    assert pairs == [("vanilla", 0.0)] + [("pfn", r) for r in rhos] + [("prune", r) for r in rhos]
    assert config["seeds"] == [0, 1, 2] and config["match"] and config["dataset"] == "cifar10"
