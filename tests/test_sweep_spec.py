"""Sweep specs: what is accepted, what is refused (one clear line, before any simulation), the cells.

Fast: no simulation runs here (tests/test_sweep_run.py runs real ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedalign.cli import main as cli_main
from fedalign.errors import UsageError
from fedalign.sweep import records
from fedalign.sweep.runner import Progress, format_duration
from fedalign.sweep.spec import cells_of, load_spec, min_nodes, parse_filters, resolve_spec, select

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

GOOD = {
    "dataset": "digits",
    "model": "mlp",
    "alphas": [0.1, 100],
    "strategies": ["fedavg", "fedpfn", "fedpnu"],
    "seeds": [0, 1],
    "rounds": 2,
    "clients": 3,
}


def spec(**changes):
    raw = {**GOOD, **changes}
    return resolve_spec({k: v for k, v in raw.items() if v is not ...})


def refused(match: str, **changes) -> str:
    with pytest.raises(UsageError, match=match) as info:
        spec(**changes)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------ accepted
def test_cells_are_alpha_x_strategy_x_seed_seed_major():
    cells = cells_of(spec())
    assert len(cells) == 2 * 3 * 2
    assert [c.seed for c in cells[:6]] == [0] * 6  # a partial sweep has whole seeds first
    assert len({c.id for c in cells}) == len(cells)
    first = cells[0]
    assert first.id == "alpha0.1__fedavg__seed0"
    cfg = first.run_config
    assert cfg["alpha"] == 0.1 and cfg["seed"] == 0 and cfg["mask-seed"] == 0
    assert cfg["num-rounds"] == 2 and cfg["strategy"] == "fedavg" and cfg["min-nodes"] == 3


def test_strategy_shorthand_and_mapping_forms():
    s = spec(strategies=[
        "fedpfn+fedadam",
        {"name": "pnu-yogi", "strategy": "fedpnu", "base-strategy": "fedyogi", "rho": 0.7, "server-lr": 0.1},
        {"strategy": "fedprox", "proximal-mu": 0.1},
        "fedavg-wm",
        {"name": "fedpfn", "base-strategy": "fedavg"},
    ])  # fmt: skip
    names = [x["name"] for x in s["strategies"]]
    assert names == ["fedpfn+fedadam", "pnu-yogi", "fedprox", "fedavg-wm", "fedpfn"]
    by = {c.strategy: c.run_config for c in cells_of(s) if c.seed == 0 and c.alpha == 0.1}
    assert by["fedpfn+fedadam"]["strategy"] == "fedpfn" and by["fedpfn+fedadam"]["base-strategy"] == "fedadam"
    assert by["pnu-yogi"]["rho"] == 0.7 and by["pnu-yogi"]["server-lr"] == 0.1
    assert by["fedprox"]["proximal-mu"] == 0.1
    assert by["fedavg-wm"]["strategy"] == "fedavg-wm"


def test_underscores_model_args_mapping_and_min_nodes():
    s = spec(local_epochs=2, model_args={"width": 32, "depth": 1}, participation=0.5, clients=10)
    assert s["local-epochs"] == 2 and s["model-args"] == "width=32,depth=1"
    assert min_nodes(s) == 5
    assert min_nodes(spec(clients=10, participation=0.1)) == 2


def test_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    s = spec(dataset="cifar10", **{"data-dir": "data"})
    assert s["data-dir"] == str((tmp_path / "data").resolve())
    refused("is not a directory", dataset="cifar10", **{"data-dir": "nowhere"})
    refused("needs data-dir", dataset="cifar10")


def test_shipped_specs_load(monkeypatch):
    monkeypatch.chdir(ROOT)
    demo = load_spec("experiments/demo.yaml")
    assert demo["name"] == "demo" and demo["dataset"] == "digits"
    assert len(cells_of(demo)) == 9
    assert {s["name"] for s in demo["strategies"]} == {"fedavg", "fedpfn", "fedpnu"}
    if not (ROOT.parent / "shared" / "data" / "cifar10" / "train").is_dir():
        pytest.skip("no ../shared/data/cifar10 here")
    cifar = load_spec("experiments/cifar10_dirichlet.yaml")
    assert len(cells_of(cifar)) == 3 * 5 * 3  # alphas x (fedavg, fedprox, scaffold, fedpfn, fedpnu) x seeds
    assert Path(cifar["data-dir"]).is_absolute()


def test_only_filters():
    cells = cells_of(spec())
    assert len(select(cells, parse_filters(["alpha=0.1"]))) == 6
    assert len(select(cells, parse_filters(["alpha=0.10", "strategy=fedpfn,fedpnu", "seed=1"]))) == 2
    with pytest.raises(UsageError, match="matches none"):
        select(cells, parse_filters(["alpha=0.3"]))
    with pytest.raises(UsageError, match="must be alpha=A"):
        parse_filters(["rho=0.4"])


# ------------------------------------------------------------ refused
def test_unknown_and_misspelled_keys_name_the_closest():
    assert "did you mean 'alphas'" in refused("unknown key 'alpahs'", alpahs=[0.1])
    assert "'rounds'" in refused("unknown key 'num-rounds'", **{"num-rounds": 3})
    refused("did you mean 'rho'", strategies=[{"strategy": "fedpfn", "rhoo": 0.4}])
    refused("unknown key 'wibble'.*valid keys", wibble=1)


def test_missing_required_keys():
    msg = refused("missing required keys 'alphas', 'seeds'", alphas=..., seeds=...)
    assert "alphas: [0.1, 0.5, 100]" in msg


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"rounds": "ten"}, "'rounds' must be an integer, got 'ten'"),
        ({"rounds": 0}, "'rounds' must be >= 1"),
        ({"clients": 1}, "'clients' must be >= 2"),
        ({"seeds": [0.5]}, "'seeds' must be an integer"),
        ({"seeds": []}, "'seeds' is an empty list"),
        ({"alphas": ["x"]}, "'alphas' must be a number"),
        ({"alphas": {"a": 1}}, "'alphas' must be a list"),
        ({"lr": True}, "'lr' must be a number"),
        ({"participation": 0}, r"participation=0.0 must be in \(0, 1\]"),
        ({"target-accuracy": 80}, "target-accuracy=80.0 must be in"),
        ({"client-test-eval": "yes"}, "must be true or false"),
        ({"client-eval-size": -1}, "'client-eval-size' must be >= 0"),
        ({"client-eval-size": 2.5}, "'client-eval-size' must be an integer"),
        ({"model": "transformer"}, "unknown model 'transformer'; valid models"),
    ],
)
def test_wrong_types_and_ranges(changes, match):
    refused(match, **changes)


@pytest.mark.parametrize("alpha", [0, -0.5])
def test_alpha_must_be_positive(alpha):
    refused(f"alpha={alpha:g} must be > 0", alphas=[0.1, alpha])


def test_unknown_strategy_lists_the_valid_ones():
    msg = refused("unknown strategy 'fedpfm'", strategies=["fedavg", "fedpfm"])
    assert "did you mean 'fedpfn'" in msg and "fedavg-wm" in msg
    refused("unknown base-strategy 'adam'", strategies=["fedpfn+adam"])
    refused("sets 'rho', which it would ignore", strategies=[{"strategy": "fedavg", "rho": 0.4}])
    refused("sets 'server-lr'", strategies=[{"strategy": "fedpfn", "server-lr": 0.1}])
    refused("fedpfn repeat", strategies=["fedpfn", {"name": "fedpfn", "strategy": "fedpnu"}])
    refused(r"rho=1.0 is outside \[0, 1\)", strategies=[{"strategy": "fedpfn", "rho": 1.0}])


def test_client_eval_size_is_a_spec_key_every_cell_gets():
    # the grid's clients score on a fixed 500-image subset; it must reach every cell's run config
    assert cells_of(spec())[0].run_config["client-eval-size"] == 0
    assert {c.run_config["client-eval-size"] for c in cells_of(spec(**{"client-eval-size": 500}))} == {500}
    assert spec(client_eval_size=500)["client-eval-size"] == 500


def test_run_config_passthrough_is_checked():
    s = spec(**{"run-config": {"server-lr": 0.1, "min-nodes": 2}})
    assert cells_of(s)[0].run_config["server-lr"] == 0.1
    refused("unknown key 'sever-lr' in run-config; did you mean 'server-lr'", **{"run-config": {"sever-lr": 1}})
    refused("top-level key 'rounds'", **{"run-config": {"num-rounds": 3}})


def test_yaml_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nalphas: [0.1, \n")
    with pytest.raises(UsageError, match=r"not valid YAML \(line"):
        load_spec(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(UsageError, match="is empty"):
        load_spec(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_spec(tmp_path / "list.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError):
        load_spec(tmp_path / "bin.yaml")


# ------------------------------------------------------------ output dir
def test_output_dir_refuses_another_spec_and_foreign_files(tmp_path):
    s = spec()
    out = tmp_path / "sweep"
    records.prepare(out, s, cells_of(s), None)
    before = (out / "sweep.json").read_bytes()
    records.prepare(out, s, cells_of(s), None)  # same spec: fine, untouched
    assert (out / "sweep.json").read_bytes() == before
    other = spec(rounds=3)
    with pytest.raises(UsageError, match=r"different spec: rounds \(there 2, now 3\).*--out"):
        records.prepare(out, other, cells_of(other), None)
    assert (out / "sweep.json").read_bytes() == before
    cosmetic = spec(**{"target-accuracy": 0.9})
    records.prepare(out, cosmetic, cells_of(cosmetic), None)  # report-only change: accepted
    assert json.loads((out / "sweep.json").read_text())["spec"]["target-accuracy"] == 0.9
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no sweep.json"):
        records.prepare(foreign, s, cells_of(s), None)


def test_partial_cell_dir_is_cleaned_finished_one_kept(tmp_path):
    s = spec()
    a, b = cells_of(s)[:2]
    records.prepare(tmp_path, s, cells_of(s), None)
    records.write_job(tmp_path, a, {"x": 1})
    assert records.clean_partial(tmp_path, a) and not records.cell_dir(tmp_path, a).exists()
    rec = {"cell": records.jsonable(b.to_dict()), "rounds": []}
    (records.cell_dir(tmp_path, b)).mkdir(parents=True)
    (records.cell_dir(tmp_path, b) / "record.json").write_text(json.dumps(rec))
    assert not records.clean_partial(tmp_path, b)
    assert records.load_record(tmp_path, b) == rec
    wrong = {**rec, "cell": {**rec["cell"], "run_config": {**rec["cell"]["run_config"], "lr": 9.0}}}
    (records.cell_dir(tmp_path, b) / "record.json").write_text(json.dumps(wrong))
    with pytest.raises(UsageError, match="another run config"):
        records.load_record(tmp_path, b)


# ------------------------------------------------------------ progress and CLI
def test_progress_line_format():
    import io

    stream = io.StringIO()
    cell = cells_of(spec())[1]
    p = Progress(total=9, done=3, rounds=10, stream=stream)
    p.start(cell)
    p.on_round(1)
    p.on_round(4)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "cells 3/9 | cell alpha=0.1 fedpfn seed=0 starting | ETA ?"
    assert lines[-1].startswith("cells 3/9 | cell alpha=0.1 fedpfn seed=0 round 4/10 | ETA ")
    assert format_duration(130) == "2m10s" and format_duration(3725) == "1h02m" and format_duration(9.4) == "9s"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    p = Progress(total=2, done=0, rounds=3, stream=tty)
    p.start(cell)
    p.on_round(1)
    p.say("cell done")
    assert tty.getvalue().count("\n") == 1  # updates rewrite one line; only messages end it
    assert tty.getvalue().startswith("\r\x1b[Kcells 0/2 | cell alpha=0.1 fedpfn seed=0 starting | ETA ?\r\x1b[K")


def test_dry_run_lists_the_cells_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    out = tmp_path / "out"
    assert cli_main(["sweep", str(path), "--dry-run", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(1 for ln in lines if ln.startswith("todo ")) == 12
    assert lines[-1].startswith("12 cells, 12 to run")
    assert not out.exists()
    assert cli_main(["sweep", str(path), "--dry-run", "--out", str(out), "--only", "strategy=fedpfn"]) == 0
    assert sum(1 for ln in capsys.readouterr().out.splitlines() if ln.startswith("todo ")) == 4


BAD_SPECS = {
    "unknown-strategy": {**GOOD, "strategies": ["fedavg", "fedbest"]},
    "alpha-zero": {**GOOD, "alphas": [0.0, 0.5]},
    "misspelled": {**{k: v for k, v in GOOD.items() if k != "seeds"}, "seed": [0]},
    "wrong-type": {**GOOD, "clients": "many"},
}


def test_bad_specs_via_cli_exit_2_one_line_and_touch_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"spec": {"precious": true}}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    specs = {name: yaml.safe_dump(raw) for name, raw in BAD_SPECS.items()}
    specs["unreadable"] = "dataset: [digits\n"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    for name, text in specs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        proc = subprocess.run(
            [sys.executable, "-m", "fedalign", "sweep", str(path), "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fedalign sweep: error: "), (name, proc.stderr)
        assert "Traceback" not in proc.stderr
    # a good spec against another sweep's directory is refused too
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    proc = subprocess.run([sys.executable, "-m", "fedalign", "sweep", str(good), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "different spec" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_cell_is_one_clear_error_and_not_done(tmp_path, monkeypatch):
    """A worker that dies on a cell: one clear error naming the cell, no record, a fresh worker per cell."""
    from fedalign.sweep import runner

    starts = tmp_path / "starts"

    def failing(fd):
        code = f"open({str(starts)!r}, 'a').write('x'); import sys; sys.stdin.readline(); print('ValueError: boom'); sys.exit(3)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(runner, "worker_command", failing)
    s = spec(alphas=[0.5], strategies=["fedavg", "fedpfn"], seeds=[0])
    import io

    with pytest.raises(runner.CellFailed, match=r"2 of 2 cells failed, the others are recorded: cell alpha=0.5 fedavg seed=0 failed: ValueError: boom \(worker exit code 3; .*\(and 1 more\)"):
        runner.run_sweep(s, tmp_path / "out", stream=io.StringIO())
    assert starts.read_text() == "xx"  # the second cell ran in a fresh worker
    for cell in cells_of(s):
        assert not (records.cell_dir(tmp_path / "out", cell) / "record.json").exists()
        assert runner.status(tmp_path / "out", s, [cell]) == {cell.id: None}
