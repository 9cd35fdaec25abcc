"""fedalign.allocator: step buffers are reused from the heap, and the heap is handed back after a call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

MB = 1 << 20
PAGES_PER_STEP = 8 * 4 * MB // 4096  # 8192: every page of the step faulted again

# One training step's allocation pattern, straight through glibc (no torch,
# so no allocation history moves glibc's thresholds first): eight 4 MiB
# buffers alive at once, written, all freed. glibc's own heuristic ends at
# mmap threshold 4 MiB and trim threshold 8 MiB, so the 32 MiB freed at the
# heap top goes back to the kernel and is faulted in again next step.
_STEPS = """
import ctypes, ctypes.util, json, resource, sys
import fedalign.allocator as allocator
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes, libc.memset.argtypes = (ctypes.c_void_p,), (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
def step():
    blocks = [libc.malloc(4 << 20) for _ in range(8)]
    for b in blocks:
        libc.memset(b, 1, 4 << 20)
    for b in blocks:
        libc.free(b)
def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
applied = allocator.keep_heap_warm() if sys.argv[1] == "tuned" else False
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
held = rss_mib()
allocator.reuses_heap(step)()
print(json.dumps({"applied": applied, "faults_per_step": faults, "released_mib": held - rss_mib()}))
"""


def _run(mode: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_heap_reuses_step_buffers_where_glibc_defaults_refault_them():
    tuned, untuned = _run("tuned"), _run("untuned")
    assert tuned["applied"] is True
    assert untuned["faults_per_step"] > 0.9 * PAGES_PER_STEP, untuned
    assert tuned["faults_per_step"] < 0.02 * PAGES_PER_STEP, tuned


def test_a_wrapped_call_hands_the_free_heap_back():
    tuned = _run("tuned")
    assert tuned["released_mib"] > 24, tuned  # the 32 MiB the steps left in the heap


def test_switch_off_leaves_glibc_defaults():
    off = _run("tuned", {"FEDALIGN_MALLOC_TUNING": "0"})
    assert off["applied"] is False
    assert off["faults_per_step"] > 0.9 * PAGES_PER_STEP, off


def test_training_and_evaluation_run_with_the_tuned_heap():
    code = """
import json, torch
from torch.utils.data import DataLoader, TensorDataset
import fedalign.allocator as allocator
from fedalign.training import TrainConfig, evaluate, train
data = TensorDataset(torch.randn(8, 4), torch.tensor([0, 1] * 4))
seen = []
for fn in (lambda m: train(m, DataLoader(data, 4), TrainConfig(epochs=1)), lambda m: evaluate(m, DataLoader(data, 4))):
    allocator._state.clear()
    fn(torch.nn.Linear(4, 2))
    seen.append(allocator._state.get("applied"))
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]
