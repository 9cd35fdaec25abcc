"""The LMC study behind `fedalign lmc`: spec -> cells -> table, curves and record.

    config = resolve(load_spec("experiments/lmc_digits.yaml"))
    paths = run_study(config, Path("outputs/lmc_digits"))

`config` holds the spec's keys and checks, `runner` trains and evaluates one
(variant, seed, method) cell at a time and keeps finished cells on disk,
`report` aggregates them into the outputs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

from fedalign.lmc_study.config import DEFAULTS, load_spec, resolve
from fedalign.lmc_study.report import write_outputs
from fedalign.lmc_study.runner import run_cells

__all__ = ["DEFAULTS", "load_spec", "resolve", "run_study"]


def run_study(
    c: Mapping[str, object], out: Path, stream=sys.stderr, command: list[str] | None = None
) -> dict[str, Path]:
    """Run (or resume) every cell of `c` and write the outputs under `out`."""
    from fedalign.preflight import check_lmc

    check_lmc(c, out)  # everything that can be refused is refused before a file is touched
    start = time.perf_counter()
    results = run_cells(c, Path(out), stream)
    return write_outputs(c, results, Path(out), {"command": command, "report_seconds": time.perf_counter() - start})
