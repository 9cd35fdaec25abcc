"""The run config has one source of truth; the CLI has a --help everywhere."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedalign.cli import SUBCOMMANDS
from fedalign.config import DEFAULTS, parse_model_args, resolve
from fedalign.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_flower_config_mirrors_defaults():
    flower = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flower == DEFAULTS


def test_resolve_checks_names_types_and_ranges():
    assert resolve({"num-rounds": 3.0})["num-rounds"] == 3
    with pytest.raises(UsageError, match="unknown run config key 'rounds'"):
        resolve({"rounds": 3})
    with pytest.raises(UsageError, match="must be int"):
        resolve({"num-rounds": "three"})
    with pytest.raises(UsageError, match="alpha=0.0 must be > 0"):
        resolve({"alpha": 0.0})
    with pytest.raises(UsageError, match="unknown strategy 'fedsgd'; valid strategies: fedavg"):
        resolve({"strategy": "fedsgd"})
    with pytest.raises(UsageError, match="rho=1.0 is outside"):
        resolve({"rho": 1.0})


def test_model_args_parse_numbers_and_names():
    assert parse_model_args("width=2, norm=group,scale=0.5") == {"width": 2, "norm": "group", "scale": 0.5}
    with pytest.raises(UsageError, match="key=value"):
        parse_model_args("width")


@pytest.mark.parametrize("command", [[], *[[name] for name in SUBCOMMANDS]])
def test_every_subcommand_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "fedalign", *command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fedalign" in proc.stdout
