"""Flower's Deployment Runtime on localhost, without docker.

`LocalDeployment` starts the topology of `docker/compose.yml` as processes:
one `flower-superlink`, N `flower-supernode` (node config
`partition-id=<i> num-partitions=<N>`), a `flower-superexec` that runs the
ServerApp and one `flower-superexec` per SuperNode that runs its ClientApp
(`--isolation process` everywhere, as in the containers). It submits runs with
`flwr run <app> <connection>`, reads their status with `flwr ls` and logs with
`flwr log`, and stops every process it started by PID (each in its own
process group, so the apps a SuperExec spawned go with it): SIGTERM, then
SIGKILL.

    with LocalDeployment(workdir, num_supernodes=3, tls=True) as deployment:
        run_id = deployment.submit({"num-rounds": 3, "min-nodes": 3, "output-dir": "/abs/out"})
        status = deployment.wait(run_id, timeout=300)   # "finished:completed"

or `python -m fedalign.deploy.localhost --supernodes 3 --rounds 3 --tls --out outputs/deploy`.

Ports are picked free at start, every Flower process gets its own FLWR_HOME
under `workdir` and runtime dependency installation is disabled (fedalign is
already installed in this environment). TLS uses `docker/certs/generate.sh`
and SuperNode authentication `docker/certs/generate-supernode-keys.sh`, the
scripts the compose files document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

REPO_ROOT = Path(__file__).resolve().parents[2]
CERTS_SCRIPT = REPO_ROOT / "docker" / "certs" / "generate.sh"
KEYS_SCRIPT = REPO_ROOT / "docker" / "certs" / "generate-supernode-keys.sh"
CONNECTION = "fedalign-local"
HOST = "127.0.0.1"
CLI_TIMEOUT = 60.0  # seconds for one `flwr` command


class DeploymentError(RuntimeError):
    """A Flower process failed to start, a command failed, or a wait timed out."""


@dataclass
class Process:
    """One started Flower process, the leader of its own process group."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def run_config_toml(run_config: Mapping[str, object]) -> str:
    """A run config as TOML, the `--run-config FILE.toml` form of `flwr run`.

    A file avoids the quoting rules of the inline form ('k=v k2="text"').
    """
    return tomli_w.dumps(dict(run_config))


def default_run_config(num_supernodes: int, num_rounds: int, output_dir: str | os.PathLike) -> dict:
    """FedPFN over every SuperNode; output-dir absolute (the ServerApp runs elsewhere)."""
    return {
        "strategy": "fedpfn",
        "num-rounds": int(num_rounds),
        "min-nodes": int(num_supernodes),
        "output-dir": str(Path(output_dir).expanduser().resolve()),
    }


class LocalDeployment:
    """SuperLink + N SuperNodes + SuperExecs on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        num_supernodes: int = 3,
        tls: bool = False,
        auth: bool = False,
        app_dir: str | os.PathLike = REPO_ROOT,
        start_timeout: float = 90.0,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes={num_supernodes} must be >= 1")
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it on --insecure)")
        self.workdir = Path(workdir).expanduser().resolve()
        self.num_supernodes = int(num_supernodes)
        self.tls = tls
        self.auth = auth
        self.app_dir = Path(app_dir).expanduser().resolve()
        self.start_timeout = float(start_timeout)
        self.bin_dir = Path(sys.executable).parent
        self.processes: dict[str, Process] = {}
        self.superlink_port = 0
        self.supernode_ports: list[int] = []
        self.certs_dir = self.workdir / "certs"
        self.keys_dir = self.workdir / "supernode-keys"
        self.cli_home = self.workdir / "home" / "cli"
        self._runs = 0

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start every process; return once all SuperNodes are connected."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._script(CERTS_SCRIPT, str(self.certs_dir))
        if self.auth:
            self._script(KEYS_SCRIPT, str(self.num_supernodes), str(self.keys_dir))
        self.superlink_port = free_port()
        self.supernode_ports = [free_port() for _ in range(self.num_supernodes)]
        self._write_cli_config()

        self._spawn("superlink", ["flower-superlink", *self._superlink_args()])
        self._wait_for_port("superlink", self.superlink_port)
        self._spawn("superexec-serverapp", ["flower-superexec", *self._superexec_args(self.superlink_port)])
        if self.auth:
            for i in range(1, self.num_supernodes + 1):
                self.flwr("supernode", "register", str(self.keys_dir / f"supernode-{i}.pub"), CONNECTION)
        for i, port in enumerate(self.supernode_ports, start=1):
            self._spawn(f"supernode-{i}", ["flower-supernode", *self._supernode_args(i, port)])
        for i, port in enumerate(self.supernode_ports, start=1):
            self._wait_for_port(f"supernode-{i}", port)
            self._spawn(f"superexec-clientapp-{i}", ["flower-superexec", *self._superexec_args(port)])
        self.wait_for_nodes(self.num_supernodes, timeout=self.start_timeout)

    def stop(self, grace: float = 10.0, kill_wait: float = 15.0) -> None:
        """SIGTERM every started process group, SIGKILL what is left after `grace` s.

        Returns only once no group has a live member (or raises after
        `kill_wait` s more): a SuperExec's app process can outlive its parent
        for a moment, so waiting on the group leaders alone is not enough.
        """
        procs = list(reversed(self.processes.values()))  # apps first, SuperLink last
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        self._wait_groups_gone(grace)
        for name in self.running_groups():  # stragglers, incl. app processes in a group
            _signal_group(self.processes[name], signal.SIGKILL)
        left = self._wait_groups_gone(kill_wait)
        if left:
            raise DeploymentError(f"process groups still alive {kill_wait:.0f} s after SIGKILL: {left}")

    def _wait_groups_gone(self, timeout: float) -> list[str]:
        """Reap the leaders and poll until every group is empty; the names still running."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.processes.values():
                proc.popen.poll()  # reap a dead leader, or it stays a zombie in its group
            left = self.running_groups()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def running_groups(self) -> list[str]:
        """Names of started processes whose process group still has a live (non-zombie) member."""
        live = _live_process_groups()
        return [proc.name for proc in self.processes.values() if proc.pid in live]

    def kill_supernode(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill SuperNode `index` (1-based) and its ClientApp SuperExec, as a crash would."""
        for name in (f"superexec-clientapp-{index}", f"supernode-{index}"):
            proc = self.processes[name]
            _signal_group(proc, sig)
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    # ------------------------------------------------------------------ runs
    def submit(self, run_config: Mapping[str, object]) -> int:
        """`flwr run <app> <connection> --run-config FILE`; return the run ID."""
        self._runs += 1
        config_file = self.workdir / f"run-config-{self._runs}.toml"
        config_file.write_text(run_config_toml(run_config))
        out = self.flwr("run", str(self.app_dir), CONNECTION, "--run-config", str(config_file),
                        "--format", "json")
        payload = _json_payload(out)
        if not payload.get("success") or payload.get("run-id") is None:
            raise DeploymentError(f"flwr run did not start a run: {out}")
        return int(payload["run-id"])

    def status(self, run_id: int) -> str:
        """'pending', 'starting', 'running' or 'finished:<completed|failed|stopped>'."""
        out = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        runs = _json_payload(out).get("runs") or []
        if not runs:
            raise DeploymentError(f"the SuperLink does not know run {run_id}: {out}")
        return str(runs[0]["status"])

    def run_details(self, run_id: int) -> dict:
        out = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        return (_json_payload(out).get("runs") or [{}])[0]

    def wait(self, run_id: int, timeout: float, poll: float = 1.0, recheck: float = 30.0) -> str:
        """Block until the run is finished; return its status. Raise after `timeout` s.

        Each `flwr ls` costs about a CPU second, so `flwr ls` is asked when the
        SuperLink logs the end of the run's ServerApp task, and every `recheck` s.
        """
        finished = re.compile(rf"Finished task \d+ of run {run_id}\b")
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + recheck
        while True:
            ended = finished.search(self.processes["superlink"].log_tail(200_000))
            if ended or time.monotonic() >= next_check:
                status = self.status(run_id)
                if status.startswith("finished"):
                    return status
                next_check = time.monotonic() + recheck
            self._check_alive("superlink", "superexec-serverapp")
            if time.monotonic() >= deadline:
                status = self.status(run_id)
                raise DeploymentError(f"run {run_id} is still {status!r} after {timeout:.0f} s\n"
                                      + self.diagnostics())
            time.sleep(poll)

    def logs(self, run_id: int) -> str:
        """The run's logs as the SuperLink keeps them (`flwr log RUN_ID <connection> --show`)."""
        return self.flwr("log", str(run_id), CONNECTION, "--show")

    def node_ids(self) -> dict[int, int]:
        """SuperNode index (1-based) -> the node ID the SuperLink gave it."""
        ids = {}
        for i in range(1, self.num_supernodes + 1):
            found = _NODE_ID.search(self.processes[f"supernode-{i}"].log_tail(chars=10**6))
            if found:
                ids[i] = int(found.group(1))
        return ids

    def nodes(self) -> list[dict]:
        """The SuperLink's node list (`flwr supernode ls`): node-id, status, ..."""
        return _json_payload(self.flwr("supernode", "ls", CONNECTION, "--format", "json")).get("nodes", [])

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        """Return once `count` SuperNodes have connected to the SuperLink."""
        deadline = time.monotonic() + timeout
        names = [n for n in self.processes if n.startswith("supernode-")]
        while True:
            connected = sum(1 for n in names if _connected(self.processes[n]))
            if connected >= count:
                return
            self._check_alive(*names)
            if time.monotonic() >= deadline:
                raise DeploymentError(
                    f"only {connected} of {count} SuperNodes connected within {timeout:.0f} s\n"
                    + self.diagnostics()
                )
            time.sleep(0.5)

    def wait_for_log(self, name: str, pattern: str, count: int = 1, timeout: float = 120.0) -> None:
        """Return once process `name`'s log matches `pattern` `count` times."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while len(regex.findall(self.processes[name].log_tail(chars=10**7))) < count:
            if time.monotonic() >= deadline:
                raise DeploymentError(
                    f"{name} did not log {pattern!r} x{count} within {timeout:.0f} s\n" + self.diagnostics()
                )
            time.sleep(0.5)

    # ------------------------------------------------------------- commands
    def flwr(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run the `flwr` CLI against this deployment; return stdout, raise on failure."""
        cmd = [str(self.bin_dir / "flwr"), *args]
        try:
            done = subprocess.run(
                cmd, env=self._env(self.cli_home), cwd=self.workdir, capture_output=True,
                text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(f"`flwr {' '.join(args)}` did not finish within {timeout:.0f} s") from err
        if done.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return done.stdout

    def describe(self) -> str:
        """Where everything listens, and how to reach it with the `flwr` CLI."""
        lines = [
            f"SuperLink  {HOST}:{self.superlink_port} ({'TLS' if self.tls else 'insecure'}"
            f"{', SuperNode auth' if self.auth else ''}), pid {self.processes['superlink'].pid}",
        ]
        for i, port in enumerate(self.supernode_ports, start=1):
            pid = self.processes[f"supernode-{i}"].pid
            lines.append(f"SuperNode {i}  runtime API {HOST}:{port}, pid {pid}")
        lines.append(f"logs: {self.workdir / 'logs'}")
        lines.append(f"flwr CLI: export FLWR_HOME={self.cli_home}; flwr run . {CONNECTION}; "
                     f"flwr ls {CONNECTION}; flwr log <run-id> {CONNECTION}")
        return "\n".join(lines)

    def diagnostics(self) -> str:
        """Liveness and log tails of every process, for error messages."""
        parts = []
        for proc in self.processes.values():
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.name} (pid {proc.pid}, {state}) {proc.log_path}\n{proc.log_tail(1500)}")
        return "\n".join(parts)

    # -------------------------------------------------------------- helpers
    def _tls_server_args(self) -> list[str]:
        return [
            "--ssl-ca-certfile", str(self.certs_dir / "ca.crt"),
            "--ssl-certfile", str(self.certs_dir / "server.pem"),
            "--ssl-keyfile", str(self.certs_dir / "server.key"),
        ]

    def _tls_client_args(self) -> list[str]:
        return ["--root-certificates", str(self.certs_dir / "ca.crt")] if self.tls else ["--insecure"]

    def _superlink_args(self) -> list[str]:
        args = self._tls_server_args() if self.tls else ["--insecure"]
        args += ["--isolation", "process", "--host", HOST, "--port", str(self.superlink_port)]
        if self.auth:
            args.append("--enable-supernode-auth")
        return args

    def _supernode_args(self, index: int, port: int) -> list[str]:
        args = self._tls_client_args()
        args += [
            "--superlink", f"{HOST}:{self.superlink_port}",
            "--isolation", "process",
            "--host", HOST, "--port", str(port),
            "--node-config", f"partition-id={index - 1} num-partitions={self.num_supernodes}",
        ]
        if self.tls:  # the Runtime API its SuperExec connects to is TLS too
            args += self._tls_server_args()
        if self.auth:
            args += ["--auth-supernode-private-key", str(self.keys_dir / f"supernode-{index}")]
        return args

    def _superexec_args(self, port: int) -> list[str]:
        return [*self._tls_client_args(), "--runtime-api-address", f"{HOST}:{port}"]

    def _write_cli_config(self) -> None:
        """The `flwr` CLI's SuperLink connection, in `$FLWR_HOME/config.toml`."""
        connection: dict[str, object] = {"address": f"{HOST}:{self.superlink_port}"}
        if self.tls:
            connection["root-certificates"] = str(self.certs_dir / "ca.crt")
        else:
            connection["insecure"] = True
        self.cli_home.mkdir(parents=True, exist_ok=True)
        config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
        (self.cli_home / "config.toml").write_text(tomli_w.dumps(config))

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_TELEMETRY_ENABLED="0",
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",  # one torch thread per ClientApp/ServerApp process
            MKL_NUM_THREADS="1",
            PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def _spawn(self, name: str, argv: Sequence[str]) -> Process:
        log_path = self.workdir / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [str(self.bin_dir / argv[0]), *argv[1:]],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env(self.workdir / "home" / name), cwd=self.workdir,
                start_new_session=True,  # own process group: stop() reaches the apps it spawns
            )
        proc = Process(name, popen, log_path)
        self.processes[name] = proc
        return proc

    def _wait_for_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not port_open(port):
            self._check_alive(name)
            if time.monotonic() >= deadline:
                raise DeploymentError(f"{name} did not listen on {HOST}:{port} within "
                                      f"{self.start_timeout:.0f} s\n" + self.diagnostics())
            time.sleep(0.2)

    def _check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.processes[name]
            if not proc.alive():
                raise DeploymentError(
                    f"{name} (pid {proc.pid}) exited with code {proc.popen.returncode}:\n{proc.log_tail()}"
                )

    def _script(self, script: Path, *args: str) -> None:
        try:
            subprocess.run(["bash", str(script), *args], check=True, capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            output = getattr(err, "stderr", b"") or b""
            raise DeploymentError(f"{script.name} failed: {err}\n{output.decode(errors='replace')}") from err


def _live_process_groups() -> set[int]:
    """IDs of the process groups that have a member which is not a zombie (from /proc).

    A zombie (dead, not yet reaped by its parent or init) still answers
    killpg(pgid, 0), so that probe alone reports finished groups as running.
    """
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if state not in ("Z", "X"):
            groups.add(int(pgrp))
    return groups


def _signal_group(proc: Process, sig: int) -> None:
    # The group was created by start_new_session for this very process.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


def _connected(proc: Process) -> bool:
    # flower-supernode logs its node ID once the SuperLink has activated it.
    return bool(_NODE_ID.search(proc.log_tail(chars=10**6)))


def _json_payload(stdout: str) -> dict:
    """The JSON object a `flwr ... --format json` command printed."""
    start = stdout.find("{")
    if start < 0:
        raise DeploymentError(f"expected JSON from flwr, got: {stdout[-2000:]}")
    try:
        return json.loads(stdout[start:])
    except json.JSONDecodeError as err:
        raise DeploymentError(f"cannot parse flwr's JSON output ({err}): {stdout[-2000:]}") from err


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedalign.deploy.localhost",
        description="Start a SuperLink, N SuperNodes and their SuperExecs on 127.0.0.1, run "
        "fedalign on them with `flwr run`, and stop every process again.",
    )
    parser.add_argument("--supernodes", type=int, default=3, help="number of SuperNodes (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="num-rounds of the run (default 3)")
    parser.add_argument("--strategy", default="fedpfn", help="run config strategy (default fedpfn)")
    parser.add_argument("--min-nodes", type=int, default=None, help="default: --supernodes")
    parser.add_argument("--run-config", action="append", default=[], metavar="'K=V ...'",
                        help="more run config overrides in `flwr run` syntax, e.g. \"rho=0.3 model='cnn'\"")
    parser.add_argument("--tls", action="store_true",
                        help="TLS on every connection (certificates from docker/certs/generate.sh)")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    parser.add_argument("--out", default=None, help="run directory (default outputs/deploy-<time>); "
                        "process logs go to OUT/deployment/logs")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait for the run (default 1800)")
    parser.add_argument("--serve", action="store_true",
                        help="only start the deployment and keep it up until Ctrl-C; submit runs yourself")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from click import ClickException
    from flwr.common.config import parse_config_args

    from fedalign.config import resolve
    from fedalign.errors import UsageError

    args = build_parser().parse_args(argv)
    out = Path(args.out or f"outputs/deploy-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    run_config = default_run_config(args.supernodes, args.rounds, out)
    run_config.update(strategy=args.strategy, **({"min-nodes": args.min_nodes} if args.min_nodes else {}))
    try:
        run_config.update(parse_config_args(args.run_config))
        resolve(run_config)  # fail here, not in the ServerApp, on a bad key or value
        if args.supernodes < 1:
            raise UsageError(f"--supernodes={args.supernodes} must be >= 1")
    except (UsageError, ValueError, ClickException) as err:
        message = err.format_message() if isinstance(err, ClickException) else err
        print(f"fedalign.deploy.localhost: error: {message}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill PID` still stops every process

    deployment = LocalDeployment(
        out / "deployment", args.supernodes, tls=args.tls or args.auth, auth=args.auth
    )
    try:
        with deployment:
            print(deployment.describe(), flush=True)
            if args.serve:
                print("deployment is up; Ctrl-C stops it", flush=True)
                while True:
                    time.sleep(3600)
            run_id = deployment.submit(run_config)
            print(f"run {run_id} submitted; follow it with: "
                  f"FLWR_HOME={deployment.cli_home} flwr log {run_id} {CONNECTION}", flush=True)
            status = deployment.wait(run_id, timeout=args.timeout)
            print(f"run {run_id}: {status}")
            if status != "finished:completed":
                print(deployment.run_details(run_id).get("status-details", ""), file=sys.stderr)
                print(deployment.logs(run_id)[-4000:], file=sys.stderr)
                return 1
            print(f"results in {out}")
            return 0
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    except DeploymentError as err:
        print(f"fedalign.deploy.localhost: {err}", file=sys.stderr)
        return 1


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
