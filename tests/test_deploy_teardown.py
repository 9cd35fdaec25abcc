"""LocalDeployment.stop() returns only when every process group it started is empty.

Real processes, no Flower: a group leader that exits while its child lives on
(a SuperExec whose app process outlives it), a leader that ignores SIGTERM,
and a dead-but-unreaped leader (a zombie, which still answers killpg(pgid, 0)).
"""

import subprocess
import sys
import time

from fedalign.deploy.localhost import LocalDeployment, Process, _live_process_groups


def spawn(deployment: LocalDeployment, name: str, script: str) -> Process:
    log = deployment.workdir / f"{name}.log"
    popen = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    proc = Process(name, popen, log)
    deployment.processes[name] = proc
    return proc


ORPHAN_CHILD = (  # the leader starts a child in its group that ignores SIGTERM, then exits
    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'])"
    "; import time; time.sleep(0.5)"
)
IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def test_stop_waits_for_group_members_that_outlive_their_leader(tmp_path):
    deployment = LocalDeployment(tmp_path)
    leader = spawn(deployment, "superexec-serverapp", ORPHAN_CHILD)
    stubborn = spawn(deployment, "supernode-1", IGNORES_SIGTERM)
    leader.popen.wait(timeout=30)
    time.sleep(0.3)
    assert set(deployment.running_groups()) == {"superexec-serverapp", "supernode-1"}  # the child lives on

    started = time.monotonic()
    deployment.stop(grace=1.0)
    assert deployment.running_groups() == []  # on return, not eventually
    assert time.monotonic() - started < 10
    assert leader.pid not in _live_process_groups() and stubborn.pid not in _live_process_groups()


def test_an_unreaped_dead_leader_is_not_running(tmp_path):
    deployment = LocalDeployment(tmp_path)
    proc = spawn(deployment, "superlink", "pass")
    deadline = time.monotonic() + 30
    while proc.pid in _live_process_groups() and time.monotonic() < deadline:
        time.sleep(0.05)  # never poll(): the exited leader stays a zombie
    with open(f"/proc/{proc.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    assert deployment.running_groups() == []
    deployment.stop(grace=0.5)
    assert proc.popen.returncode == 0
