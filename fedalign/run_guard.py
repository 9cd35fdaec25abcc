"""How a ServerApp run fails on bad input, and where its results go when the output dir fails.

Under `flwr run`, an exception from the ServerApp is logged by Flower with
its full traceback (40+ lines that bury the one that matters). A
`UsageError` is the user's to fix, so the ServerApp logs it as one line
(`log_refusal`) and `quiet_usage_tracebacks` drops Flower's traceback of
that same exception; the run still fails (Flower marks it failed in
`flwr ls`). Other exceptions keep their traceback: they are bugs.

`write_or_fallback` never loses finished rounds: if the output directory
cannot be written at the end of a run, the files go to a fresh directory
under the system temp dir and the log says where.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from logging import ERROR, WARNING
from pathlib import Path

from fedalign.errors import UsageError

_TRACEBACK_OF_USAGE_ERROR = re.compile(r"^fedalign\.[\w.]*(UsageError|Error): ", re.MULTILINE)


class _DropUsageTracebacks(logging.Filter):
    """Drop Flower's records that only repeat a UsageError as a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc, seen = (record.exc_info[1] if record.exc_info else None), 0
        while exc is not None and seen < 10:  # the UsageError may be a cause or context of what Flower logs
            if isinstance(exc, UsageError):
                return False
            exc, seen = exc.__cause__ or exc.__context__, seen + 1
        message = str(record.msg)
        if message.startswith("Traceback") and _TRACEBACK_OF_USAGE_ERROR.search(message):
            return False
        return True


_FILTER = _DropUsageTracebacks()


def quiet_usage_tracebacks() -> None:
    """Install the filter on Flower's logger (idempotent)."""
    logger = logging.getLogger("flwr")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def log_refusal(err: UsageError) -> None:
    """The one line a refused run leaves in its log."""
    from flwr.supercore.logger import log

    text = " ".join(str(err).split())
    log(ERROR, "fedalign: error: %s", text[:1000])


def write_or_fallback(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """`write(out_dir)`; if that fails with OSError, `write(<temp dir>)` and say so. Returns the dir used."""
    from flwr.supercore.logger import log

    try:
        write(out_dir)
        return out_dir
    except OSError as err:
        fallback = Path(tempfile.mkdtemp(prefix=f"fedalign-run-{time.strftime('%Y%m%d-%H%M%S')}-"))
        write(fallback)
        log(WARNING, "fedalign: cannot write %s (%s); the results are in %s", out_dir, err, fallback)
        return fallback


def release_simulation_engine() -> None:
    """In Flower's in-process simulation, stop Ray so calls to dead or hung ClientApp actors return.

    When every client fails, Flower's Ray actor pool can be left with no live
    actor and its worker threads wait on it forever, so the process would
    outlive the ServerApp's error. The ServerApp is done at this point, so
    shutting Ray down only ends those waits. No-op outside a Ray simulation.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
