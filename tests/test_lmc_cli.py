"""`fedalign lmc`: spec validation (one-line errors, exit 2), outputs, resume."""

import csv
import json

import pytest
import torch

from fedalign import cli
from fedalign.lmc_study import resolve
from fedalign.lmc_study.config import variants

torch.set_num_threads(1)

TINY = [
    "--dataset", "digits", "--model", "mlp", "--model-args", "width=16,depth=1",
    "--seeds", "0", "1", "--epochs", "1", "--points", "3", "--threads", "1",
]  # fmt: skip


def _run(capsys, *argv):
    code = cli.main(["lmc", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------- bad input
def test_unknown_spec_keys_are_named(tmp_path, capsys):
    spec = _spec(tmp_path, "dataset: digits\nepoch: 3\nrhoo: [0.4]\n")
    code, _, err = _run(capsys, "--spec", spec, "--out", tmp_path / "o")
    line = _error_line(err)
    assert code == 2 and "epoch" in line and "rhoo" in line and "unknown keys" in line


def test_empty_rho_list(tmp_path, capsys):
    code, _, err = _run(capsys, "--spec", _spec(tmp_path, "rho: []\n"), "--out", tmp_path / "o")
    assert code == 2 and "'rho' is an empty list" in _error_line(err)
    code, _, err = _run(capsys, *TINY, "--rho", "--out", tmp_path / "o")
    assert code == 2 and "empty" in _error_line(err)


def test_fewer_than_three_points(tmp_path, capsys):
    code, _, err = _run(capsys, *TINY, "--points", "2", "--out", tmp_path / "o")
    assert code == 2 and "points" in _error_line(err)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("epochs: five\n", "'epochs' must be an integer"),
        ("seeds: [0, a]\n", "'seeds' must be an integer"),
        ("match: 3\n", "'match' must be true or false"),
        ("model: transformer\n", "unknown model"),
        ("methods: [vanilla, magic]\n", "unknown method"),
        ("rho: [1.5]\n", "rho=1.5"),
        ("sweep: {width: []}\n", "sweep.width is an empty list"),
        ("dataset: cifar10\n", "needs data-dir"),
        ("- a\n- b\n", "must hold a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_specs_give_one_line_and_exit_2(tmp_path, capsys, text, needle):
    code, _, err = _run(capsys, "--spec", _spec(tmp_path, text), "--out", tmp_path / "o")
    assert code == 2 and needle in _error_line(err)


def test_missing_spec_file(tmp_path, capsys):
    code, _, err = _run(capsys, "--spec", tmp_path / "nope.yaml")
    assert code == 2 and "does not exist" in _error_line(err)


def test_underscore_keys_and_sweep_variants():
    c = resolve({"train_size": 100, "model-args": {"depth": 1}, "sweep": {"width": [8, 16]}})
    assert c["train-size"] == 100
    assert variants(c) == [{"depth": 1, "width": 8}, {"depth": 1, "width": 16}]


# ----------------------------------------------------------- end to end
def test_study_writes_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    code, stdout, err = _run(capsys, *TINY, "--rho", "0.4", "--prune-rho", "0.5", "--match", "--out", out)
    assert code == 0, err
    assert "epoch 1/1" in err and "ETA" in err
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == [
        "vanilla", "vanilla + WM", "TNA-PFN rho=0.4", "TNA-PFN rho=0.4 + WM", "prune rho=0.5", "prune rho=0.5 + WM",
    ]  # fmt: skip
    assert all(r["seeds"] == "2" for r in rows)
    assert "| vanilla + WM | 2 |" in (out / "table.md").read_text() and "acc barrier" in stdout
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "results.json").read_text())
    assert record["seeds"] == [0, 1] and record["config"]["rho"] == [0.4]
    assert "torch" in record["environment"]["packages"]
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert len(cells) == 6 and "base__pfn-rho0.4__seed1.json" in cells
    pfn = json.loads((out / "cells" / "base__pfn-rho0.4__seed0.json").read_text())
    assert pfn["train"]["mask"]["fixed_fraction"] == pytest.approx(0.4, abs=0.05)
    assert pfn["matched"]["iterations"][0] >= 1 and len(pfn["plain"]["curve"]["alphas"]) == 3

    code, _, err = _run(capsys, *TINY, "--rho", "0.4", "--prune-rho", "0.5", "--match", "--out", out)
    assert code == 0 and err.count("skipped") == 6 and "epoch" not in err

    code, _, err = _run(capsys, *TINY, "--epochs", "2", "--rho", "0.4", "--match", "--out", out)
    assert code == 2 and "epochs=1" in _error_line(err)


def test_dirichlet_split_with_three_models(tmp_path, capsys):
    out = tmp_path / "dir"
    code, _, err = _run(
        capsys, *TINY, "--seeds", "0", "--methods", "vanilla", "--split", "dirichlet",
        "--alpha", "0.5", "--num-models", "3", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    cell = json.loads((out / "cells" / "base__vanilla__seed0.json").read_text())
    assert len(cell["train"]["train_sizes"]) == 3 and sum(cell["train"]["train_sizes"]) <= 1437
    assert cell["plain"]["metrics"]["num_models"] == 3 and len(cell["plain"]["model_accs"]) == 3


# ----------------------------------------------------------------- device
def test_device_cpu_matches_auto_and_is_recorded(tmp_path, capsys):
    # auto on a machine without a GPU is the CPU: the same numbers, bit for bit, and the record says where
    runs = {}
    for device in ("auto", "cpu"):
        out = tmp_path / device
        code, _, err = _run(capsys, *TINY, "--seeds", "0", "--device", device, "--out", out)
        assert code == 0, err
        runs[device] = json.loads((out / "cells" / "base__vanilla__seed0.json").read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runs["auto"]["train"]["device"].startswith(expected)
    assert runs["cpu"]["train"]["device"] == "cpu" and runs["cpu"]["settings"]["device"] == "cpu"
    if expected == "cpu":
        assert runs["auto"]["plain"]["curve"] == runs["cpu"]["plain"]["curve"]


@pytest.mark.parametrize(
    ("device", "needle"),
    [("gpu", "device='gpu' is not valid; use auto, cpu, cuda or cuda:N"),
     pytest.param("cuda", "no CUDA GPU is visible", marks=pytest.mark.skipif(
         torch.cuda.is_available(), reason="this machine has a GPU"))],
)  # fmt: skip
def test_bad_device_is_one_line_before_any_file(tmp_path, capsys, device, needle):
    out = tmp_path / "study"
    code, _, err = _run(capsys, *TINY, "--device", device, "--out", out)
    assert code == 2 and needle in _error_line(err) and "Traceback" not in err
    assert not out.exists()


def test_reestimate_bn_follows_the_models_device():
    # batches are materialised on the CPU; a model elsewhere must get them on its own device
    from fedalign.lmc import reestimate_bn

    seen = []
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    reestimate_bn(model, [torch.randn(4, 3)])
    assert seen == [torch.device("cpu")] and model[0].num_batches_tracked.item() == 1
