"""Find and stop the local SuperLink that `flwr run .` started, by its PID.

`flwr run .` (local simulation) starts a detached `flower-superlink` that
outlives the command and records no PID. Its port is known
(`FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`, default 39091), so we look up the process
listening on that port in /proc and stop exactly that PID (never by name).

    python -m fedalign.tools.local_superlink stop
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_PORT = 39091


def local_port() -> int:
    return int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", DEFAULT_PORT))


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    return inodes


def listener_pid(port: int) -> int | None:
    """PID of the process listening on TCP `port`, or None."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(port: int | None = None) -> int | None:
    """Stop the local SuperLink on `port`; return its PID, or None if none ran."""
    pid = listener_pid(port or local_port())
    if pid is not None:
        stop_pid(pid)
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedalign.tools.local_superlink",
        description="Find or stop the local SuperLink that `flwr run .` started (by PID).",
    )
    parser.add_argument("action", choices=("pid", "stop"))
    parser.add_argument("--port", type=int, default=None, help=f"default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or {DEFAULT_PORT}")
    args = parser.parse_args(argv)
    port = args.port or local_port()
    pid = listener_pid(port) if args.action == "pid" else stop(port)
    if pid is None:
        print(f"no SuperLink listens on 127.0.0.1:{port}")
        return 1 if args.action == "pid" else 0
    print(f"{'stopped' if args.action == 'stop' else 'running'}: SuperLink pid {pid} on port {port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
