"""The `device` run-config key, GPU sweep pre-flight and the client evaluation subset (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from fedalign.config import resolve
from fedalign.device import resolve_device
from fedalign.errors import UsageError
from fedalign.run_setup import client_eval_set, splits_for

NO_GPU = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve({})["device"] == "auto"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_clear_usage_error():
    with pytest.raises(UsageError, match=r"device='cuda' but no CUDA GPU is visible.*use device=auto or cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(bad):
    with pytest.raises(UsageError, match="is not valid; use auto, cpu, cuda or cuda:N"):
        resolve({"device": bad})


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("extra", [["--set", "run-config={device: cuda}"], ["--set", "client-gpus=0.5"]])
def test_gpu_sweep_on_cpu_machine_exits_2_with_one_line_and_writes_nothing(tmp_path, extra):
    spec = {"dataset": "digits", "model": "mlp", "alphas": [0.5], "strategies": ["fedavg"], "seeds": [0],
            "rounds": 1, "clients": 2}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedalign", "sweep", str(tmp_path / "s.yaml"), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU is visible" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_client_eval_subset_is_fixed_and_stratified():
    config = resolve({"client-eval-size": 100})
    a, b = client_eval_set(config), client_eval_set(dict(config))
    assert len(a) == 100 and a.indices == b.indices  # the same samples for every client and round
    labels = splits_for(config).test_labels
    full = np.bincount(labels, minlength=10) / len(labels)
    sub = np.bincount(labels[a.indices], minlength=10) / 100
    assert np.abs(sub - full).max() <= 0.011  # class proportions kept (largest remainder)
    assert len(client_eval_set(resolve({}))) == len(labels)  # 0 = the whole test split
    assert len(client_eval_set(resolve({"client-eval-size": 10_000}))) == len(labels)
    with pytest.raises(UsageError, match="client-eval-size=-1 must be >= 0"):
        resolve({"client-eval-size": -1})
