"""`python -m fedalign partition` end to end: the four files, the printed table, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _fedalign(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDALIGN_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "fedalign", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_partition_writes_table_csv_png_json(tmp_path):
    out = tmp_path / "part"
    res = _fedalign("partition", "--dataset", "digits", "--clients", "10", "--alpha", "0.1",
                    "--seed", "3", "--out", str(out), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "| client | size |" in res.stdout and "|  total | 1437 |" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["partition.csv", "partition.json", "partition.md", "partition.png"]

    record = json.loads((out / "partition.json").read_text())
    assert record["arguments"]["alpha"] == 0.1 and record["arguments"]["clients"] == 10
    assert record["seed"] == 3 and record["arguments"]["scheme"] == "dirichlet"
    assert record["environment"]["packages"]["flwr-datasets"]
    parts = record["partitions"]
    assert len(parts) == 10 and sorted(i for p in parts for i in p) == list(range(1437))
    assert [len(p) for p in parts] == record["sizes"] and min(record["sizes"]) >= 10
    assert record["stats"]["mean_max_class_share"] > 0.4  # alpha 0.1 is strongly skewed

    rows = (out / "partition.csv").read_text().splitlines()
    assert rows[0] == "client,size,0,1,2,3,4,5,6,7,8,9" and len(rows) == 11
    hist = np.array([[int(v) for v in r.split(",")[2:]] for r in rows[1:]])
    assert hist.tolist() == record["histogram"] and hist.sum() == 1437
    assert "| client | size |" in (out / "partition.md").read_text()

    png = (out / "partition.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from PIL import Image

    with Image.open(out / "partition.png") as im:
        pixels = np.asarray(im.convert("L"))
    assert im.size[0] >= 400 and im.size[1] >= 300 and pixels.std() > 20  # a real picture, not a blank


def test_help_lists_every_option(capsys):
    from fedalign.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["partition", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--download", "--train-size", "--clients", "--scheme",
                   "--alpha", "--min-size", "--classes-per-client", "--seed", "--out"):
        assert option in text, option
    assert "iid, dirichlet, pathological" in " ".join(text.split())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--dataset", "svhn"], "unknown data set 'svhn'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, fragment):
    res = _fedalign("partition", *args, "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fedalign partition: error: ") and fragment in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--alpha", "0"], "alpha=0.0 must be > 0"),
        (["--clients", "5000"], "5000 partitions but only 1437 samples"),
        (["--min-size", "200"], "lower the minimum size to <= 143"),
        (["--scheme", "shards"], "valid schemes: iid, dirichlet, pathological"),
        (["--train-size", "99999"], "--train-size=99999 is out of range"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "expected /nonexistent/cifar/cifar-10-batches-py/"),
    ],
)
def test_bad_arguments_in_process(tmp_path, capsys, args, fragment):
    """The same path as above without a new interpreter per case (imports cost seconds each)."""
    from fedalign.cli import main

    assert main(["partition", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedalign partition: error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()
