"""The CIFAR-10 experiment specs say what their headers promise; `download: true` fetches once.

Specs are loaded with data-dir pointed at a temporary directory, so these
tests need no CIFAR-10 files.
"""

import io
from pathlib import Path

import numpy as np
import pytest

from fedalign.errors import UsageError
from fedalign.sweep import cells_of, load_spec
from fedalign.sweep.runner import Progress, ensure_data

ROOT = Path(__file__).resolve().parents[1]


def spec(name, tmp_path, **overrides):
    return load_spec(ROOT / "experiments" / f"{name}.yaml", {"data-dir": str(tmp_path), **overrides})


def test_dirichlet_grid_is_3_alphas_by_5_strategies_by_3_seeds(tmp_path):
    s = spec("cifar10_dirichlet", tmp_path)
    cells = cells_of(s)
    assert len(cells) == 45
    assert [x["name"] for x in s["strategies"]] == ["fedavg", "fedprox", "scaffold", "fedpfn", "fedpnu"]
    assert (s["alphas"], s["seeds"], s["rounds"]) == ([0.1, 0.5, 100.0], [0, 1, 2], 30)
    scaffold = next(c for c in cells if c.strategy == "scaffold")
    assert scaffold.run_config["strategy"] == "scaffold"
    assert (s["train-size"], s["test-size"], s["local-epochs"], s["clients"]) == (10000, 2000, 2, 10)


def test_authors_spec_is_the_published_default_setting(tmp_path):
    s = spec("cifar10_authors", tmp_path)
    assert [x["name"] for x in s["strategies"]] == ["fedavg", "fedpfn"]
    assert (s["alphas"], s["seeds"], s["clients"], s["participation"]) == ([0.5], [0], 20, 1.0)
    assert s["rounds"] >= 50
    pfn = next(c for c in cells_of(s) if c.strategy == "fedpfn").run_config
    expected = {
        "train-size": 0, "test-size": 0, "local-epochs": 1, "batch-size": 128, "lr": 0.1,
        "lr-decay": 0.99, "momentum": 0.9, "weight-decay": 0.0005, "rho": 0.4, "alpha": 0.5,
        "num-rounds": s["rounds"], "partitioner": "dirichlet", "dataset": "cifar10",
    }  # fmt: skip
    assert {k: pfn[k] for k in expected} == expected


def test_quick_spec_is_fedavg_vs_fedpfn_at_strong_skew(tmp_path):
    s = spec("cifar10_quick", tmp_path)
    assert [x["name"] for x in s["strategies"]] == ["fedavg", "fedpfn"]
    assert (s["alphas"], s["seeds"]) == ([0.1], [0]) and s["rounds"] >= 10
    assert len(cells_of(s)) == 2


def test_missing_data_dir_needs_download(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match="download: true"):
        spec("cifar10_quick", missing)
    assert spec("cifar10_quick", missing, download=True)["download"] is True
    assert not missing.exists()  # checking a spec creates nothing
    with pytest.raises(UsageError, match="download applies to"):
        load_spec(ROOT / "experiments" / "demo.yaml", {"download": True})


def test_ensure_data_downloads_once_into_data_dir(tmp_path, monkeypatch):
    """The network call is replaced (no internet in tests) by writing a small CIFAR-10 copy."""
    from test_datasets import _write_cifar

    from fedalign.datasets import torchvision_sets

    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        _write_cifar(root, hundred=False, rng=np.random.default_rng(0))

    monkeypatch.setattr(torchvision_sets, "download", fake_download)
    root = tmp_path / "data" / "cifar10"
    s = spec("cifar10_quick", root, download=True)
    progress = Progress(2, 0, 15, io.StringIO())
    ensure_data(s, progress)
    assert calls == [("cifar10", root)] and (root / "cifar-10-batches-py" / "test_batch").is_file()
    ensure_data(s, progress)  # files there: no second download
    assert len(calls) == 1
