"""Real servers for the tests that need them: a single-node SLURM cluster and a PostgreSQL server, each started
in a temporary directory, reachable only from this machine, and stopped after the session. A test that needs
one is skipped, with the reason, where it cannot be started (``.ci/run`` installs both)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _need(tools: list[str], package: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: install Debian's {package} (.ci/run does)")


def _wait(until: callable, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds} s")
        time.sleep(0.3)


SLURM_CONF = """ClusterName=petlab
SlurmctldHost={host}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster with its own munge daemon; yields the environment its commands need
    (``SLURM_CONF``). There is no accounting database, as on many small clusters."""
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their users, which needs root")
    _need(["munged", "slurmctld", "slurmd", "sbatch", "squeue"], "slurm-wlm and munge")
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("munge", "state", "spool"):
        (root / folder).mkdir(mode=0o700)
    (root / "munge" / "key").write_bytes(os.urandom(1024))
    (root / "munge" / "key").chmod(0o400)
    subprocess.run(["munged", "--force", f"--socket={root}/munge/socket", f"--key-file={root}/munge/key",
                    f"--log-file={root}/munge/log", f"--pid-file={root}/munge/pid", f"--seed-file={root}/munge/seed"],
                   check=True)  # fmt: skip
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 512
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, user="root", controller_port=_free_port(),
                                      node_port=_free_port(), cpus=os.cpu_count(), memory_mb=memory_mb))  # fmt: skip
    environment = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=environment, stderr=subprocess.DEVNULL),
        subprocess.Popen(["slurmd", "-D", "-f", str(conf), "-N", host], env=environment, stderr=subprocess.DEVNULL),
    ]

    def idle() -> bool:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=environment, capture_output=True, text=True)
        return state.stdout.strip() == "idle"

    try:
        _wait(idle, "the SLURM node")
        yield {"SLURM_CONF": str(conf)}
    finally:
        subprocess.run(["scancel", "-u", "root"], env=environment, capture_output=True)
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=30)
        pid = root / "munge" / "pid"
        if pid.is_file():
            os.kill(int(pid.read_text()), 15)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server on a Unix socket of a temporary directory, with an empty database; yields its URL."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        pytest.skip("PostgreSQL's server programs not found: install Debian's postgresql (.ci/run does)")
    initdb, pg_ctl, createdb = (str(binaries[-1] / name) for name in ("initdb", "pg_ctl", "createdb"))
    # The server refuses to run as root: as root, it runs as the postgres user Debian's package creates, in a
    # folder of its own (pytest's temporary folders are private to root).
    root = Path(tempfile.mkdtemp(prefix="petlab-postgres-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()
    run = [*as_user, pg_ctl, "-D", f"{root}/data", "-w", "-l", f"{root}/log"]
    subprocess.run([*as_user, initdb, "-D", f"{root}/data", "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*run, "-o", f"-k {root} -c listen_addresses='' -p {port}", "start"], check=True,
                   capture_output=True)  # fmt: skip
    try:
        subprocess.run([*as_user, createdb, "-h", str(root), "-p", str(port), "-U", "postgres", "petlab"], check=True)
        yield f"postgresql://postgres@/petlab?host={root}&port={port}"
    finally:
        subprocess.run([*run, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
