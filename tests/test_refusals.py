"""Issue 10: bad input is refused in one line (exit 2) before any work, and finished results are never relabelled.

Every refusal here is checked the same way: exit code 2, exactly one line on
stderr, no traceback, and the output directory byte-identical before and
after (`dirsnap.snapshot`). No test here starts Flower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedalign import cli
from fedalign.config import resolve as resolve_run_config
from fedalign.errors import UsageError

sys.path.insert(0, str(Path(__file__).parent))
from dirsnap import snapshot  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TINY_LMC = [
    "--dataset", "digits", "--model", "mlp", "--model-args", "width=8,depth=1", "--seeds", "0",
    "--methods", "vanilla", "--epochs", "1", "--points", "3", "--train-size", "300", "--threads", "1",
]  # fmt: skip

SWEEP = """\
dataset: digits
model: mlp
model-args: {width: 8, depth: 1}
alphas: [0.5]
strategies: [fedavg]
seeds: [0]
rounds: 1
clients: 2
"""


def refused(capsys, argv, watched: Path | None = None, needle: str = "") -> str:
    """Run `fedalign argv` in process; assert exit 2, one line, nothing under `watched` changed."""
    before = snapshot(watched) if watched is not None else None
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out[-500:], err[-2000:])
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err and lines[0].startswith(f"fedalign {argv[0]}: error: ") or lines[0].startswith("fedalign: error: ")
    assert needle in lines[0], lines[0]
    if watched is not None:
        assert snapshot(watched) == before, f"{watched} changed"
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ------------------------------------------------- finished results relabelled
@pytest.fixture(scope="module")
def finished_lmc(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmc") / "out"
    assert cli.main(["lmc", *TINY_LMC, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("change, needle", [
    (["--model-args", "width=16,depth=1"], "model arguments"),
    (["--model-args", "width=8,depth=1,nosuch=1"], "unknown argument 'nosuch'"),
    (["--model-args", "width=8,depth=1,width2=3"], "unknown argument 'width2'"),
    (["--lr", "0.1"], "lr="),
    (["--batch-size", "32"], "batch-size="),
    (["--train-size", "400"], "train-size="),
])  # fmt: skip
def test_lmc_rerun_with_other_settings_is_refused_never_relabelled(finished_lmc, capsys, change, needle):
    argv = ["lmc", *TINY_LMC, *change, "--out", finished_lmc]
    refused(capsys, argv, finished_lmc, needle)


def test_lmc_rerun_with_same_or_cosmetic_settings_reuses_cells(finished_lmc, capsys):
    cell = next((finished_lmc / "cells").glob("*.json"))
    before = cell.read_bytes()
    assert cli.main(["lmc", *TINY_LMC, "--threads", "2", "--name", "other", "--out", str(finished_lmc)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert cell.read_bytes() == before
    assert json.loads((finished_lmc / "results.json").read_text())["cells"][0]["variant"] == {"width": 8, "depth": 1}


def test_sweep_rerun_with_other_settings_is_refused(tmp_path, capsys):
    from fedalign.sweep import cells_of, load_spec
    from fedalign.sweep.records import prepare

    spec_file = write(tmp_path / "s.yaml", SWEEP)
    out = tmp_path / "out"
    spec = load_spec(spec_file)
    prepare(out, spec, cells_of(spec), str(spec_file))  # a sweep directory as the runner leaves it
    for change in ("lr=0.1", "clients=3", "model-args={width: 16, depth: 1}", "local-epochs=2"):
        refused(capsys, ["sweep", spec_file, "--out", out, "--set", change], out, "different spec")


# ---------------------------------------------------------------- nonsense
@pytest.mark.parametrize("key, value", [
    ("lr", -0.05), ("lr", 0.0), ("local-epochs", 0), ("batch-size", 0), ("momentum", 1.0),
    ("momentum", -0.1), ("weight-decay", -1e-4), ("num-rounds", 0), ("min-nodes", 0),
    ("fraction-train", 0.0), ("fraction-train", 1.5), ("fraction-evaluate", -0.1), ("rho", 1.5),
    ("alpha", -1.0), ("alpha", float("nan")), ("lr", float("inf")), ("node-wait-timeout", 0.0),
    ("round-timeout", -1.0), ("train-size", -1), ("seed", -1), ("mask-seed", -3),
    ("max-failed-rounds", 0), ("server-lr", 0.0), ("server-momentum", 1.0), ("proximal-mu", -1.0),
    ("lr-decay", 0.0), ("classes-per-partition", 0), ("dataset", "nosuch"), ("model", "nosuch"),
    ("optimizer", "sgdd"), ("granularity", "x"), ("output-dir", ""), ("num-rounds", 1.5),
])  # fmt: skip
def test_run_config_ranges(key, value):
    with pytest.raises(UsageError, match=key if key != "rho" else "rho"):
        resolve_run_config({key: value})


@pytest.mark.parametrize("flags, needle", [
    (["--epochs", "0"], "epochs"), (["--lr", "-0.05"], "lr="), (["--lr", "nan"], "lr"),
    (["--batch-size", "0"], "batch-size"), (["--train-size", "-1"], "train-size"),
    (["--seeds", "-1"], "seeds"), (["--rho", "1.5"], "rho=1.5"), (["--alpha", "0"], "alpha"),
    (["--bn-batches", "0"], "bn-batches"), (["--num-models", "1"], "num-models"),
    (["--model-args", "width=0"], "width=0"), (["--model-args", "width=abc"], "width='abc'"),
    (["--model-args", "width"], "key=value"), (["--dataset", "nosuch"], "nosuch"),
])  # fmt: skip
def test_lmc_flag_ranges(tmp_path, capsys, flags, needle):
    out = tmp_path / "o"
    refused(capsys, ["lmc", *TINY_LMC, *flags, "--out", out], tmp_path, needle)
    assert not out.exists()


def test_lmc_spec_ranges_and_momentum(tmp_path, capsys):
    for text, needle in (("momentum: 1.0\n", "momentum"), ("weight-decay: -1\n", "weight-decay"),
                         ("epochs: 0\n", "epochs"), ("lr: -0.05\n", "lr")):  # fmt: skip
        spec = write(tmp_path / "spec.yaml", text)
        refused(capsys, ["lmc", "--spec", spec, "--out", tmp_path / "o"], tmp_path, needle)


@pytest.mark.parametrize("line, needle", [
    ("lr: -0.05", "lr=-0.05"), ("local-epochs: 0", "local-epochs"), ("batch-size: 0", "batch-size"),
    ("momentum: 1.5", "momentum"), ("weight-decay: -1", "weight-decay"), ("rho: 1.0", "rho"),
    ("participation: 0", "participation"), ("client-cpus: 0", "client-cpus"), ("clients: 1", "clients"),
    ("lr-decay: 0", "lr-decay"), ("run-config: {round-timeout: 0}", "round-timeout"),
    ("seeds: [0.5]", "seeds"), ("min-partition-size: -1", "min-partition-size"),
])  # fmt: skip
def test_sweep_spec_ranges(tmp_path, capsys, line, needle):
    spec = write(tmp_path / "s.yaml", SWEEP + line + "\n")
    refused(capsys, ["sweep", spec, "--out", tmp_path / "o"], tmp_path, needle)


@pytest.mark.parametrize("flags, needle", [
    (["--clients", "0"], "--clients"), (["--alpha", "-1"], "alpha=-1.0 must be > 0"), (["--alpha", "inf"], "alpha=inf"),
    (["--seed", "-1"], "--seed"), (["--train-size", "-5"], "--train-size"), (["--min-size", "-1"], "--min-size"),
    (["--classes-per-client", "0"], "--classes-per-client"), (["--clients", "100000"], "partitions"),
])  # fmt: skip
def test_partition_flag_ranges(tmp_path, capsys, flags, needle):
    refused(capsys, ["partition", *flags, "--out", tmp_path / "o"], tmp_path, needle)


def test_empty_spec_files_are_refused(tmp_path, capsys):
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing\n"), ("null.yaml", "~\n")):
        spec = write(tmp_path / name, text)
        refused(capsys, ["lmc", "--spec", spec, "--out", tmp_path / "o"], tmp_path, "empty")
        refused(capsys, ["sweep", spec, "--out", tmp_path / "o"], tmp_path, "empty")


# --------------------------------------------------------- checked too late
@pytest.mark.parametrize("extra, needle", [
    ("model-args: {width: 8, nosuch: 1}", "unknown argument 'nosuch'"),
    ("model-args: {width: eight}", "must be an integer"),
    ("clients: 100000", "partitions"),
    ("client-cpus: 4096", "CPU(s) are available"),
])  # fmt: skip
def test_sweep_refuses_before_the_first_cell(tmp_path, capsys, extra, needle):
    text = "\n".join(line for line in SWEEP.splitlines() if line.split(":")[0] != extra.split(":")[0])
    spec = write(tmp_path / "s.yaml", text + "\n" + extra + "\n")
    out = tmp_path / "out"
    start = time.perf_counter()
    refused(capsys, ["sweep", spec, "--out", out], tmp_path, needle)
    assert not out.exists(), "no cell directory may be left"
    assert time.perf_counter() - start < 60


def _data_spec(tmp_path, dataset: str, data_dir: Path) -> Path:
    return write(tmp_path / "s.yaml", SWEEP.replace("dataset: digits", f"dataset: {dataset}\ndata-dir: {data_dir}"))


def test_sweep_refuses_missing_empty_or_corrupt_data(tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, ["sweep", _data_spec(tmp_path, "cifar10", empty), "--out", out], tmp_path, "no cifar10 data")
    refused(capsys, ["sweep", _data_spec(tmp_path, "imagefolder", empty), "--out", out], tmp_path, "image folder")
    tree = tmp_path / "tree"
    write(tree / "train" / "a" / "x.png", b"not a png")
    write(tree / "test" / "a" / "y.png", b"not a png")
    refused(capsys, ["sweep", _data_spec(tmp_path, "imagefolder", tree), "--out", out], tmp_path, "cannot decode image")
    assert not out.exists()


def test_decompression_bomb_png_is_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    (tree / "train" / "a").mkdir(parents=True)
    (tree / "test" / "a").mkdir(parents=True)
    Image.new("1", (20000, 20000)).save(tree / "train" / "a" / "bomb.png")  # 400 Mpixel, ~50 kB on disk
    Image.new("L", (8, 8)).save(tree / "test" / "a" / "ok.png")
    refused(capsys, ["partition", "--dataset", "imagefolder", "--data-dir", tree, "--out", tmp_path / "o"],
            tmp_path / "tree", "decompression bomb")  # fmt: skip


def test_model_with_unknown_argument_is_one_line_not_a_typeerror():
    from fedalign.models import build_model

    for args, needle in (({"nosuch": 1}, "unknown argument 'nosuch'"), ({"norm": "x"}, "unknown norm"),
                         ({"width": -2}, "width=-2")):  # fmt: skip
        with pytest.raises(UsageError, match=needle):
            build_model("resnet20", (3, 32, 32), 10, **args)


# ------------------------------------------------------ resource exhaustion
BOMB = "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9 if p else ['"lol"'] * 9) + "]\n"
    for p, c in zip(["", *"abcdefgh"], "abcdefghi")
) + "dataset: *i\nmodel: *i\n"


@pytest.mark.parametrize("command", [["lmc", "--spec"], ["sweep"]])
def test_yaml_bomb_is_refused_fast_and_small(tmp_path, command):
    spec = write(tmp_path / "bomb.yaml", BOMB)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # A fresh parent process, so RUSAGE_CHILDREN holds this one command's peak memory only.
    measure = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=50); "
        "sys.stderr.write(p.stderr); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "fedalign", *command, str(spec),
                           "--out", str(out)], capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    seconds, peak_mb = map(float, proc.stdout.split())
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert "anchors and aliases" in proc.stderr and len(proc.stderr) < 500
    assert seconds < 2.0, seconds
    assert peak_mb < 200, peak_mb
    assert not out.exists()


def test_huge_values_are_never_echoed_whole(tmp_path, capsys):
    big = "[" + ",".join(["1"] * 5000) + "]"
    spec = write(tmp_path / "s.yaml", SWEEP.replace("rounds: 1", f"rounds: {big}"))
    line = refused(capsys, ["sweep", spec, "--out", tmp_path / "o"], tmp_path, "rounds")
    assert len(line) < 500
    spec = write(tmp_path / "l.yaml", f"epochs: {big}\n")
    assert len(refused(capsys, ["lmc", "--spec", spec, "--out", tmp_path / "o"], tmp_path, "epochs")) < 500


# ---------------------------------------------------------------- tracebacks
def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = write(tmp_path / "a_file", "keep me")
    spec = write(tmp_path / "s.yaml", SWEEP)
    refused(capsys, ["partition", "--out", target], target, "is a file")
    refused(capsys, ["sweep", spec, "--out", target], target, "is a file")
    refused(capsys, ["sweep", spec, "--out", target / "sub"], target, "is a file")
    refused(capsys, ["lmc", *TINY_LMC, "--out", target], target, "is a file")


def test_non_utf8_spec_is_one_line(tmp_path, capsys):
    spec = write(tmp_path / "s.yaml", b"dataset: digits\n\xff\xfe: 1\n")
    refused(capsys, ["lmc", "--spec", spec, "--out", tmp_path / "o"], tmp_path, "UTF-8")
    refused(capsys, ["sweep", spec, "--out", tmp_path / "o"], tmp_path, "UTF-8")


def test_report_refuses_a_record_without_its_cell(tmp_path, capsys):
    record = {"rounds": [{"round": 0, "accuracy": 0.1}], "final_accuracy": 0.1}
    write(tmp_path / "cells" / "x" / "record.json", json.dumps(record))
    refused(capsys, ["report", tmp_path], tmp_path, "no 'cell' object")
    write(tmp_path / "cells" / "x" / "record.json", json.dumps({**record, "cell": {"alpha": "a"}}))
    refused(capsys, ["report", tmp_path], tmp_path, "cell.alpha")


@pytest.mark.parametrize("argv, needle", [
    (["partition", "--clients", "abc"], "invalid int value: 'abc'"),
    (["partition", "--alpha", "abc"], "invalid float value"),
    (["lmc", "--epochs", "x"], "invalid int value"),
    (["lmc", "--bn-reestimate", "maybe"], "invalid choice"),
    (["sweep"], "required: spec"),
    (["report", "--last-rounds", "two", "d"], "invalid int value"),
    (["partition", "--nosuch"], "unrecognized arguments"),
])  # fmt: skip
def test_argparse_errors_are_one_line(capsys, argv, needle):
    refused(capsys, argv, None, needle)


# ------------------------------------------------------------ the ServerApp
def test_server_app_refuses_before_round_one_in_one_log_line(tmp_path):
    """What `flwr run` logs: our one line; Flower's own traceback of the same error is dropped.

    `grid=None` shows that nothing reached Flower: the refusal comes before the first round.
    """
    import logging
    from io import StringIO

    from flwr.supercore.logger import log

    from fedalign.run_guard import log_refusal, quiet_usage_tracebacks
    from fedalign.server_app import run_server

    target = write(tmp_path / "a_file", "keep me")
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        quiet_usage_tracebacks()
        for config, needle in (({"rho": 1.5}, "rho=1.5"), ({"alpha": -1.0}, "alpha=-1.0"),
                               ({"num-rounds": 0}, "num-rounds=0"), ({"strategy": "fedbest"}, "fedbest"),
                               ({"output-dir": str(target)}, "is a file"),
                               ({"model-args": "nosuch=1"}, "nosuch")):  # fmt: skip
            stream.truncate(0), stream.seek(0)
            with pytest.raises(UsageError, match=needle) as err:
                run_server(None, config)
            log_refusal(err.value)
            # what flwr's run_serverapp and run_simulation log for the same exception:
            log(logging.ERROR, "ServerApp raised an exception", exc_info=err.value)
            log(logging.ERROR, f"Traceback (most recent call last):\n  ...\nfedalign.errors.UsageError: {err.value}")
            try:  # flwr run's simulation process logs an exception raised while handling ours
                try:
                    raise err.value
                except UsageError:
                    raise RuntimeError("An error was encountered. Ending simulation.")  # noqa: B904
            except RuntimeError as chained:
                log(logging.ERROR, "Simulation raised an exception", exc_info=chained)
            lines = [line for line in stream.getvalue().splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("fedalign: error: ") and needle in lines[0], lines
            assert target.read_text() == "keep me"
    finally:
        logger.removeHandler(handler)
