"""docker/: compose files parse, use only flags flwr 1.42's CLIs have, pin their images.

There is no docker engine here, so the containers never start; instead every
service's command is checked against the `--help` of the CLI its image runs
(`flower-superlink`, `flower-supernode`, `flower-superexec` from this venv),
and parsed by that CLI's own argument parser, so a typo or a removed flag fails
here and not in someone's `docker compose up`.
"""

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    assert re.findall(r"^FROM (\S+)", text, re.M) == [f"flwr/superexec:{FLWR_VERSION}"]
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
