"""The heterogeneity sweep behind `fedalign sweep`: YAML spec -> Flower simulations -> report.

    spec = load_spec("experiments/demo.yaml")
    run_sweep(spec, Path("outputs/demo"))   # only cells without a record run
    write_report(Path("outputs/demo"))       # tables and plots from the records

`spec` checks the spec and lists the cells (alpha x strategy x seed),
`runner` runs the missing cells in a warm worker process (`worker`), `records` owns the output
directory and what counts as done, `report` turns records into tables and plots.
"""

from fedalign.sweep.report import write_report
from fedalign.sweep.runner import CellFailed, run_sweep
from fedalign.sweep.spec import Cell, cells_of, load_spec, resolve_spec

__all__ = ["Cell", "CellFailed", "cells_of", "load_spec", "resolve_spec", "run_sweep", "write_report"]
