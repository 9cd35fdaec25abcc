"""docker/: the compose files, checked by parsing and run for real.

Without a Docker daemon: every service's command is checked against the
`--help` of the CLI its image runs (`flower-superlink`, `flower-supernode`,
`flower-superexec` from this venv) and parsed by that CLI's own argument
parser, so a typo or a removed flag fails here and not in someone's
`docker compose up`. Those checks live in this file's first half.

With one (tests marked `docker`, enabled by FEDALIGN_DOCKER_TESTS=1, which
.ci/run sets unless FEDALIGN_CI_DOCKER=0; skipped with the reason otherwise,
or when there is no daemon, no docker-compose, or no openssl/ssh-keygen):
docker/build-local-images.sh builds
(or finds cached) the images, and the compose files start for real under a
unique project name, driven by `flwr` from this venv against the published
SuperLink port. See test_compose_* below.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import tomli_w
import torch
import yaml

from fedalign.deploy.localhost import free_port
from fedalign.masks import SubspaceMask, fixed_entries_equal

DOCKER = Path(__file__).resolve().parents[1] / "docker"
BIN = Path(sys.executable).parent
FLWR_VERSION = "1.42.0"
OWN_IMAGE = "fedalign/superexec:0.1.0-flwr1.42.0"
COMPOSE_FILES = ["compose.yml", "with-tls.yml", "with-auth.yml", "remote-supernode.yml"]
STACKS = {  # what `docker compose -f ... -f ...` combines
    "insecure": ["compose.yml"],
    "tls": ["compose.yml", "with-tls.yml"],
    "tls+auth": ["compose.yml", "with-tls.yml", "with-auth.yml"],
    "remote": ["remote-supernode.yml"],
}


def load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def merged(files: list[str]) -> dict[str, dict]:
    """Services of several compose files the way compose merges them (command replaced whole)."""
    services: dict[str, dict] = {}
    for name in files:
        for service, spec in load(name)["services"].items():
            services.setdefault(service, {}).update(spec)
    return services


def cli_for(image: str) -> str:
    if image.startswith("flwr/superlink:"):
        return "flower-superlink"
    if image.startswith("flwr/supernode:"):
        return "flower-supernode"
    if image == OWN_IMAGE:
        entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', (DOCKER / "Dockerfile").read_text(), re.M)
        return entrypoint.group(1)
    raise AssertionError(f"no CLI known for image {image}")


@functools.cache
def cli_help(cli: str) -> str:
    done = subprocess.run([str(BIN / cli), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def flags(command: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in command if str(arg).startswith("--")]


def parser_for(cli: str):
    """The argparse parser behind a CLI (private flwr functions; None if they moved)."""
    try:
        if cli == "flower-superlink":
            from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as make
        elif cli == "flower-supernode":
            from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as make
        else:
            from flwr.supercore.cli.flower_superexec import _parse_args as make
    except ImportError:
        return None
    return make()


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_parses(name):
    spec = load(name)
    assert isinstance(spec["services"], dict) and spec["services"]
    for service, body in spec["services"].items():
        assert isinstance(body.get("command"), list), f"{name}:{service} needs a command list"
        assert all(isinstance(arg, str) for arg in body["command"]), f"{name}:{service}: quote numbers"


def test_installed_flwr_is_the_pinned_version():
    import flwr

    assert flwr.__version__ == FLWR_VERSION


@pytest.mark.parametrize("stack", STACKS)
def test_every_command_uses_only_flags_of_the_flwr_cli(stack):
    for service, spec in merged(STACKS[stack]).items():
        cli = cli_for(spec["image"])
        known = set(re.findall(r"--[a-z][a-z0-9-]*", cli_help(cli)))
        unknown = [flag for flag in flags(spec["command"]) if flag not in known]
        assert not unknown, f"{stack}:{service} passes {unknown} that `{cli} --help` does not list"
        parser = parser_for(cli)
        if parser is not None:  # values and choices too, e.g. --isolation process
            args = [re.sub(r"\$\{(\w+)[^}]*\}", r"\1", a) for a in spec["command"]]
            parser.parse_args(args)


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_pinned(stack):
    for service, spec in merged(STACKS[stack]).items():
        image = spec["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "$" not in image, f"{service}: {image} is not pinned"
        if repo.startswith("flwr/"):
            assert tag == FLWR_VERSION, f"{service}: {image}"
        else:
            assert image == OWN_IMAGE and "build" in spec, f"{service}: {image}"


def test_dockerfile_builds_on_the_pinned_superexec_image():
    text = (DOCKER / "Dockerfile").read_text()
    assert set(re.findall(r"^FROM (\S+)", text, re.M)) == {f"flwr/superexec:{FLWR_VERSION}"}
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    assert ignore.splitlines()[1:4] == ["*", "!pyproject.toml", "!fedalign/"]


def supernodes(services: dict) -> dict[str, dict[str, str]]:
    out = {}
    for name, spec in services.items():
        if spec["image"].startswith("flwr/supernode:"):
            cmd = spec["command"]
            config = cmd[cmd.index("--node-config") + 1]
            out[name] = dict(item.split("=", 1) for item in config.split())
    return out


@pytest.mark.parametrize("stack", ["insecure", "tls", "tls+auth"])
def test_topology_one_clientapp_superexec_per_supernode(stack):
    services = merged(STACKS[stack])
    nodes = supernodes(services)
    assert len(nodes) >= 3
    assert sorted(int(c["partition-id"]) for c in nodes.values()) == list(range(len(nodes)))
    assert {c["num-partitions"] for c in nodes.values()} == {str(len(nodes))}
    runtime_targets = {
        spec["command"][spec["command"].index("--runtime-api-address") + 1]
        for spec in services.values() if spec["image"] == OWN_IMAGE
    }
    for name, spec in services.items():
        cmd = spec["command"]
        if name in nodes:
            assert cmd[cmd.index("--isolation") + 1] == "process"
            assert cmd[cmd.index("--superlink") + 1] == "superlink:8000"
            port = cmd[cmd.index("--port") + 1]
            assert f"{name}:{port}" in runtime_targets, f"no SuperExec for {name}"
    superlink = services["superlink"]["command"]
    assert superlink[superlink.index("--isolation") + 1] == "process"
    assert "superlink:8000" in runtime_targets  # the ServerApp SuperExec
    secure = stack != "insecure"
    for name, spec in services.items():
        if spec["image"].startswith("flwr/") or name == "superexec-serverapp":
            assert ("--insecure" not in spec["command"]) == secure, name
    if stack == "tls+auth":
        assert "--enable-supernode-auth" in superlink
        assert all("--auth-supernode-private-key" in services[n]["command"] for n in nodes)


def test_overlay_secrets_are_declared():
    for files in STACKS.values():
        declared = {}
        for name in files:
            declared.update(load(name).get("secrets") or {})
        for service, spec in merged(files).items():
            for secret in spec.get("secrets", []):
                assert secret["source"] in declared, f"{service}: secret {secret['source']}"
                assert declared[secret["source"]]["file"].startswith("./certs/")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_certificate_script_makes_a_ca_signed_localhost_certificate(tmp_path):
    out = tmp_path / "certs"
    subprocess.run(["bash", str(DOCKER / "certs" / "generate.sh"), str(out), "link.example.org", "10.1.2.3"],
                   check=True, capture_output=True, timeout=60)
    verify = subprocess.run(["openssl", "verify", "-CAfile", out / "ca.crt", out / "server.pem"],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", out / "server.pem", "-noout", "-text"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    for san in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink", "DNS:supernode-3",
                "DNS:link.example.org", "IP Address:10.1.2.3"):
        assert san in text


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_supernode_key_script_makes_keys_flower_accepts(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    subprocess.run(["bash", str(DOCKER / "certs" / "generate-supernode-keys.sh"), "2", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    for i in (1, 2):
        private = load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)  # what flower-supernode requires
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"


def test_compose_files_have_no_top_level_name():
    """docker-compose v1 (Debian's 1.29) refuses `name:`; `-p fedalign` names the project instead."""
    for name in COMPOSE_FILES:
        assert "name" not in load(name), f"{name}: drop the top-level name: key"


# ----------------------------------------------------------------------------
# The real thing: docker compose up, flwr run, docker kill, down.
# ----------------------------------------------------------------------------

REPO = DOCKER.parent
BUILD_SCRIPT = DOCKER / "build-local-images.sh"
STACK_TIMEOUT = 900.0  # seconds for one run; generous, CI machines are shared
TIMINGS: dict[str, float] = {}


def compose_command() -> list[str] | None:
    """`docker-compose` (v1) if installed, else `docker compose` (v2); FEDALIGN_COMPOSE overrides."""
    if os.environ.get("FEDALIGN_COMPOSE"):
        return os.environ["FEDALIGN_COMPOSE"].split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=30).returncode == 0:
        return ["docker", "compose"]
    return None


def docker_skip_reason() -> str | None:
    if os.environ.get("FEDALIGN_DOCKER_TESTS") != "1":
        why = os.environ.get("FEDALIGN_DOCKER_SKIP") or "not enabled: FEDALIGN_DOCKER_TESTS=1 runs them"
        return (f"{why} (.ci/run sets it unless FEDALIGN_CI_DOCKER=0; the compose runs take ~6 min, "
                "plus ~4.5 min to build the images the first time on a machine)")
    if shutil.which("docker") is None:
        return "needs the docker CLI"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"no Docker daemon reachable: {(info.stderr or info.stdout).strip()[:200]}"
    if compose_command() is None:
        return "needs docker-compose (v1) or the docker compose plugin (v2)"
    if not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        return "needs openssl and ssh-keygen"
    if not (BIN / "flwr").exists():
        return "needs the flwr CLI in this venv"
    return None


_skip = docker_skip_reason()
needs_docker = pytest.mark.skipif(_skip is not None, reason=f"docker compose run skipped: {_skip}")


@pytest.mark.skipif(compose_command() is None, reason="needs docker-compose or docker compose")
@pytest.mark.parametrize("stack", ["insecure", "tls", "tls+auth"])
def test_compose_itself_accepts_every_stack(stack, tmp_path):
    """`docker-compose config` (v1 or v2, no daemon needed) validates the merged files."""
    files = [arg for name in STACKS[stack] for arg in ("-f", str(DOCKER / name))]
    done = subprocess.run([*compose_command(), "-p", "fedalign", *files, "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def sh(*cmd: str, timeout: float = 120, check: bool = True, env: dict | None = None) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout + done.stderr


class ComposeStack:
    """One compose project (unique name) plus a `flwr` CLI home that points at it."""

    def __init__(self, workdir: Path, files: list[str], tls: bool):
        self.workdir = workdir
        self.project = f"fedalign-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.files = files
        self.tls = tls
        self.port = free_port()
        # Relative paths in the compose files (./certs/...) resolve against the
        # project directory: a scratch one, so the test never touches docker/certs/.
        self.project_dir = workdir / "project"
        self.certs = self.project_dir / "certs"
        self.certs.mkdir(parents=True)
        self.flwr_home = workdir / "flwr-home"
        self.flwr_home.mkdir()
        self.connection = "fedalign-docker-tls" if tls else "fedalign-docker"
        connection = {"address": f"127.0.0.1:{self.port}"}
        if tls:
            connection["root-certificates"] = str(self.certs / "superlink-certificates" / "ca.crt")
        else:
            connection["insecure"] = True
        (self.flwr_home / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"default": self.connection, self.connection: connection}}))
        self.env = dict(os.environ, SUPERLINK_PORT=str(self.port), FLWR_HOME=str(self.flwr_home),
                        FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
        self._runs = 0

    # ------------------------------------------------------------ compose
    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        files = [arg for name in self.files for arg in ("-f", str(DOCKER / name))]
        return sh(*compose_command(), "-p", self.project, "--project-directory", str(self.project_dir),
                  *files, *args, timeout=timeout, check=check, env=self.env)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).split()
        assert ids, f"no container for {service}"
        return ids[0]

    def logs(self, service: str) -> str:
        return sh("docker", "logs", self.container(service), check=False)

    def down(self) -> None:
        """Remove every container, network and volume of the project, whatever state it is in."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=180, check=False)
        label = f"label=com.docker.compose.project={self.project}"
        for kind, listing in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                              ("volume", ["volume", "ls", "-q"])):
            left = sh("docker", *listing, "--filter", label, check=False).split()
            if left:
                sh("docker", kind, "rm", "-f" if kind != "network" else "--", *left, check=False)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return [f"{kind}:{item}" for kind, listing in
                (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                 ("volume", ["volume", "ls", "-q"]))
                for item in sh("docker", *listing, "--filter", label, check=False).split()]

    # --------------------------------------------------------------- flwr
    def flwr(self, *args: str, timeout: float = 120) -> str:
        return sh(str(BIN / "flwr"), *args, timeout=timeout, env=self.env)

    def online_nodes(self) -> list[int]:
        payload = _json_payload(self.flwr("supernode", "ls", self.connection, "--format", "json"))
        assert payload.get("success"), payload  # e.g. the SuperLink is not listening yet
        return [n["node-id"] for n in payload.get("nodes", []) if n.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                online = len(self.online_nodes())
            except AssertionError:  # SuperLink not up yet
                online = -1
            if online >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{online} of {count} SuperNodes online after {timeout:.0f} s\n"
                                     + self.compose("ps", check=False) + self.compose("logs", "--tail", "30", check=False))
            time.sleep(3)

    def submit(self, run_config: dict) -> int:
        self._runs += 1
        path = self.workdir / f"run-config-{self._runs}.toml"
        path.write_text(tomli_w.dumps(run_config))
        out = self.flwr("run", str(REPO), self.connection, "--run-config", str(path), "--format", "json")
        payload = _json_payload(out)
        assert payload.get("success") and payload.get("run-id") is not None, out
        return int(payload["run-id"])

    def run_details(self, run_id: int) -> dict:
        out = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
        return (_json_payload(out).get("runs") or [{}])[0]

    def wait(self, run_id: int, timeout: float = STACK_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.run_details(run_id).get("status"))
            if status.startswith("finished"):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {status} after {timeout:.0f} s\n"
                                     + self.compose("logs", "--tail", "40", check=False))
            time.sleep(4)

    def run_log(self, run_id: int, until: str, timeout: float = 120) -> str:
        """`flwr log --show`, asked again until it contains `until`: the ServerApp's last
        lines can reach the SuperLink after the run is already `finished` (seen under load)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.flwr("log", str(run_id), self.connection, "--show")
            if until in log or time.monotonic() > deadline:
                return log
            time.sleep(5)

    def wait_for_log(self, service: str, pattern: str, count: int = 1, timeout: float = STACK_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.logs(service))) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} did not log {pattern!r} x{count} in {timeout:.0f} s")
            time.sleep(1)

    def copy_out(self, path: str, dest: Path) -> Path:
        """`docker cp` from the ServerApp SuperExec (v1 has no `compose cp`)."""
        sh("docker", "cp", f"{self.container('superexec-serverapp')}:{path}", str(dest))
        return dest


def _json_payload(stdout: str) -> dict:
    start = stdout.find("{")
    assert start >= 0, f"expected JSON from flwr, got: {stdout[-2000:]}"
    return json.loads(stdout[start:stdout.rfind("}") + 1])


def timed(measured, key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its wall time reported through conftest's `measured` (shown in CI's summary)."""
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        TIMINGS[key] = time.monotonic() - start
        measured(f"[compose timing] {key}: {TIMINGS[key]:.1f} s")


@pytest.fixture(scope="module")
def images(measured):
    """docker/build-local-images.sh: builds what is missing, reuses every cached layer."""
    done = timed(measured, "images (build-local-images.sh)", subprocess.run, ["bash", str(BUILD_SCRIPT)],
                 capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stderr, flush=True)


def run_config(name: str, rounds: int, min_nodes: int, **extra) -> dict:
    """FedPFN on a small digits split; output-dir in the ServerApp container's `outputs` volume."""
    config = {
        "strategy": "fedpfn", "num-rounds": rounds, "min-nodes": min_nodes,
        "output-dir": f"/app/outputs/{name}", "train-size": 400, "test-size": 200,
        "client-test-eval": False, "node-wait-timeout": 30.0, "round-timeout": 180.0,
    }
    config.update(extra)
    return config


def round_lines(log: str, server_round: int, rounds: int) -> str:
    start = log.index(f"[ROUND {server_round}/{rounds}]")
    end = log.find(f"[ROUND {server_round + 1}/{rounds}]", start)
    return log[start:end if end >= 0 else None]


def check_model(out: Path, rounds: int, measured) -> float:
    """Fixed entries bit-identical to the initial model; return the fraction of entries kept."""
    record = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in record["rounds"] if row["round"] > 0] == list(range(1, rounds + 1))
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, final, initial)
    kept = sum(int((final[n] == initial[n]).sum()) for n in mask.tensors)
    fraction = kept / mask.numel
    rho = float(record["config"]["rho"])
    measured(f"[compose] {out.name}: fixed fraction of the mask {mask.fixed_fraction:.4f}, entries of the "
             f"final model bit-identical to the initial one {fraction:.4f} (rho {rho})")
    assert abs(mask.fixed_fraction - rho) <= 0.02
    assert abs(fraction - rho) <= 0.02  # fixed ones kept, (nearly) all others trained
    return fraction


@pytest.mark.docker
@pytest.mark.slow
@needs_docker
def test_compose_tls_and_supernode_auth(images, tmp_path, measured):
    """with-tls.yml + with-auth.yml, the cert and key scripts, `flwr supernode register`."""
    stack = ComposeStack(tmp_path, ["compose.yml", "with-tls.yml", "with-auth.yml"], tls=True)
    sh("bash", str(DOCKER / "certs" / "generate.sh"), str(stack.certs / "superlink-certificates"))
    sh("bash", str(DOCKER / "certs" / "generate-supernode-keys.sh"), "3", str(stack.certs / "supernode-keys"))
    try:
        timed(measured, "up (TLS + auth): superlink, serverapp", stack.compose, "up", "-d", "superlink", "superexec-serverapp")
        stack.wait_for_nodes(0)  # the SuperLink answers over TLS
        for i in (1, 2, 3):
            stack.flwr("supernode", "register", str(stack.certs / "supernode-keys" / f"supernode-{i}.pub"),
                       stack.connection)
        timed(measured, "up (TLS + auth): the rest", stack.compose, "up", "-d")
        timed(measured, "3 registered SuperNodes online", stack.wait_for_nodes, 3)
        run_id = stack.submit(run_config("tls-auth", rounds=2, min_nodes=3))
        status = timed(measured, "FedPFN 2 rounds, TLS + auth", stack.wait, run_id)
        log = stack.run_log(run_id, until="Strategy execution finished")
        assert status == "finished:completed", stack.run_details(run_id)
        for server_round in (1, 2):
            assert "Received 3 results and 0 failures" in round_lines(log, server_round, 2)
        check_model(stack.copy_out("/app/outputs/tls-auth", tmp_path / "tls-auth"), rounds=2, measured=measured)
    finally:
        timed(measured, "down (TLS + auth)", stack.down)
        assert stack.leftovers() == []


@pytest.fixture(scope="module")
def insecure_stack(images, tmp_path_factory, measured):
    """docker/compose.yml up -d (3 SuperNodes), torn down with everything it made."""
    stack = ComposeStack(tmp_path_factory.mktemp("compose"), ["compose.yml"], tls=False)
    try:
        timed(measured, "up (compose.yml)", stack.compose, "up", "-d")
        timed(measured, "3 SuperNodes online", stack.wait_for_nodes, 3)
        yield stack
    finally:
        timed(measured, "down (compose.yml)", stack.down)
        assert stack.leftovers() == []


@pytest.mark.docker
@pytest.mark.slow
@needs_docker
def test_compose_fedpfn_three_supernodes_three_rounds(insecure_stack, tmp_path, measured):
    stack = insecure_stack
    run_id = stack.submit(run_config("run1", rounds=3, min_nodes=3))
    status = timed(measured, "FedPFN 3 rounds x 3 SuperNodes", stack.wait, run_id)
    log = stack.run_log(run_id, until="Strategy execution finished")
    assert status == "finished:completed", stack.run_details(run_id)
    for server_round in (1, 2, 3):
        assert "Received 3 results and 0 failures" in round_lines(log, server_round, 3)
    out = stack.copy_out("/app/outputs/run1", tmp_path / "run1")
    check_model(out, rounds=3, measured=measured)


def restart_killed_supernodes(stack: ComposeStack) -> None:
    stack.compose("up", "-d")  # starts what was killed; leaves the rest running
    stack.wait_for_nodes(3)


@pytest.mark.docker
@pytest.mark.slow
@needs_docker
def test_compose_run_goes_on_when_a_supernode_is_killed_and_enough_remain(insecure_stack, tmp_path, measured):
    stack = insecure_stack
    restart_killed_supernodes(stack)
    run_id = stack.submit(run_config("kill-enough", rounds=2, min_nodes=2))
    # Killed while it holds its round-1 message: round 1 ends without it once
    # the SuperLink marks it offline (40-60 s), round 2 samples the other two.
    before = len(re.findall(r"Receiving: train message", stack.logs("supernode-3")))
    stack.wait_for_log("supernode-3", r"Receiving: train message", count=before + 1)
    sh("docker", "kill", stack.container("supernode-3"))
    status = timed(measured, "kill, min-nodes 2 of 3: run to the end", stack.wait, run_id)
    log = stack.run_log(run_id, until="Strategy execution finished")
    assert status == "finished:completed", stack.run_details(run_id)
    assert "Received 2 results and 1 failures" in round_lines(log, 1, 2)
    assert re.search(r"Sampled 2 nodes \(out of 2\)[\s\S]*Received 2 results and 0 failures",
                     round_lines(log, 2, 2))
    check_model(stack.copy_out("/app/outputs/kill-enough", tmp_path / "kill-enough"), rounds=2, measured=measured)
    measured(f"[compose] kill, min-nodes=2: run {run_id} {status}")


@pytest.mark.docker
@pytest.mark.slow
@needs_docker
def test_compose_run_fails_clearly_when_a_supernode_is_killed_and_too_few_remain(insecure_stack, measured):
    stack = insecure_stack
    restart_killed_supernodes(stack)
    run_id = stack.submit(run_config("kill-too-few", rounds=2, min_nodes=3, **{"node-wait-timeout": 10.0}))
    before = len(re.findall(r"Receiving: train message", stack.logs("supernode-3")))
    stack.wait_for_log("supernode-3", r"Receiving: train message", count=before + 1)
    sh("docker", "kill", stack.container("supernode-3"))
    status = timed(measured, "kill, min-nodes 3 of 3: run fails", stack.wait, run_id)
    details = stack.run_details(run_id).get("status-details", "")
    assert status == "finished:failed"
    assert "only 2 of the 3 nodes this strategy needs connected within 10 s" in details
    log = stack.run_log(run_id, until="fedalign: error:")
    assert "fedalign: error: only 2 of the 3 nodes this strategy needs connected" in log  # one line,
    assert "Traceback" not in log  # no traceback (fedalign.run_guard)
    files = sh("docker", "exec", stack.container("superexec-serverapp"), "ls", "/app/outputs/kill-too-few",
               check=False)
    assert "final_model.pt" not in files
    measured(f"[compose] kill, min-nodes=3: run {run_id} {status}: {details}")
