"""A throwaway one-node SLURM cluster on loopback, for tests.

Debian's ``slurmctld slurmd slurm-client munge`` (installed with apt-get when missing and we are
root), started as child processes in the foreground and stopped by PID:

* ``munged`` on a private socket with a fresh key (the system's munge, if any, is not touched);
* ``slurmctld`` and ``slurmd`` on free loopback ports, one node ``localhost`` in one default
  partition ``debug``, no accounting (``sacct`` does not work: use ``squeue`` for job status and
  keep finished jobs in the controller for ``MinJobAge`` seconds), ``task/none`` and
  ``proctrack/linuxproc`` (no cgroups needed);
* ``SlurmdParameters=config_overrides``: the node is declared with the CPUs, memory and GPUs a
  test asks for, not what the machine has, so a profile written for GPU nodes can be submitted
  unchanged.  The GPUs are fake (``gres/gpu`` backed by ``/dev/null``): SLURM schedules and
  accounts them and sets ``CUDA_VISIBLE_DEVICES``; nothing enforces memory or CPU binding.

The client configuration must be ``/etc/slurm/slurm.conf``: ``srun`` inside jobs (the SLURM
executor plugin's job step) drops ``SLURM_CONF``.  An existing file is set aside and restored.
One cluster at a time per machine (a file lock); daemons left by a killed session are stopped
(by PID) before a new cluster starts, so a second test session on the same machine works.

    with one_node_cluster(gpus=1) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"])
        cluster.wait_for_jobs()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..debian import Unavailable, ensure_debian, which

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo",
            "scontrol", "scancel")
CONF_DIR = Path("/etc/slurm")
BACKUP_SUFFIX = ".cliplens-backup"
MARKER = "# Written by cliplens tests/slurm_cluster.py"
ROOT_PREFIX = "cliplens-slurm-"
LOCK_PATH = Path(tempfile.gettempdir()) / "cliplens-slurm.lock"
NODE = "localhost"
# A fake GPU is a gres/gpu record backed by a character device nobody uses as a GPU.
FAKE_GPU_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
PARTITION = "debug"


class SlurmUnavailable(Unavailable):
    """SLURM cannot be installed or started here; the message says why (a test skips on it)."""


_which = which


def ensure_packages(timeout: float = 900) -> None:
    """Install SLURM and munge with apt-get if any of their programs is missing; raises
    SlurmUnavailable when they are missing and cannot be installed."""
    try:
        ensure_debian(PACKAGES, BINARIES, "SLURM", timeout)
    except Unavailable as e:
        raise SlurmUnavailable(str(e)) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(entry.name), [a.decode(errors="replace") for a in argv if a]


def _stop_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM, wait, SIGKILL: for processes that are not our children (no Popen to wait on)."""
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
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _stop_leftovers() -> None:
    """Stop daemons a killed earlier session of this module left running (found by their
    command line, which names a ``cliplens-slurm-*`` directory); refuse foreign SLURM daemons."""
    for pid, argv in _processes():
        if not argv or pid == os.getpid():
            continue
        name = os.path.basename(argv[0])
        if name not in ("munged", "slurmctld", "slurmd"):
            continue
        if any(ROOT_PREFIX in a for a in argv):
            _stop_pid(pid)
        elif name in ("slurmctld", "slurmd"):
            raise SlurmUnavailable(f"a {name} not started by these tests is running (pid {pid}); "
                                   "not replacing the configuration of a live cluster")
    for stale in Path("/tmp").glob(ROOT_PREFIX + "*"):  # we hold the lock: nobody uses them
        shutil.rmtree(stale, ignore_errors=True)


@dataclass
class SlurmCluster:
    """A running one-node cluster.  ``pids`` maps daemon name to the PID this module started."""

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    min_job_age: int
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(list(cmd), capture_output=True, text=True, check=check,
                              stdin=subprocess.DEVNULL, timeout=60)

    def job(self, jobid: str | int) -> dict[str, str]:
        """``scontrol show job`` of a (finished or running) job as a dict; finished jobs stay
        known for ``min_job_age`` seconds."""
        out = self.run("scontrol", "show", "job", "-o", str(jobid)).stdout
        return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:]*)=(\S*)", out))

    def queue(self) -> list[str]:
        """IDs of jobs pending or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def wait_for_jobs(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM jobs still queued after {timeout} s: {self.queue()}")
            time.sleep(0.5)

    def logs(self, n: int = 40) -> str:
        """Tails of the daemon logs, for failure messages."""
        parts = []
        for p in sorted((self.root / "log").glob("*")):
            lines = p.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _slurm_conf(c: SlurmCluster, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    r = c.root
    gres = f"Gres=gpu:{c.gpus} " if c.gpus else ""
    return f"""{MARKER} for a test cluster in {r}.
# An original /etc/slurm/slurm.conf waits in slurm.conf{BACKUP_SUFFIX} until the test ends.
ClusterName=cliplens-test
SlurmctldHost={NODE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
MinJobAge={c.min_job_age}
ReturnToService=2
InactiveLimit=0
KillWait=5
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={NODE} CPUs={c.cpus} RealMemory={c.memory_mb} {gres}State=UNKNOWN
PartitionName={c.partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def _conf_files(texts: dict[str, str]) -> Iterator[None]:
    """Write /etc/slurm/<name>; set an existing foreign file aside and put it back afterwards."""
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, text in texts.items():
            path, backup = CONF_DIR / name, CONF_DIR / (name + BACKUP_SUFFIX)
            if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
                shutil.copy2(path, backup)  # a stale file of ours keeps the older backup
            written.append(name)
            path.write_text(text)
        yield
    finally:
        for name in written:
            path, backup = CONF_DIR / name, CONF_DIR / (name + BACKUP_SUFFIX)
            if backup.exists():
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(timeout: float) -> Iterator[None]:
    with open(LOCK_PATH, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another session holds {LOCK_PATH} (a test SLURM cluster "
                                       f"is running) for more than {timeout} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _wait(what: str, ok, procs: list[subprocess.Popen], cluster: SlurmCluster,
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}\n{cluster.logs()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}")
        time.sleep(0.2)


@contextlib.contextmanager
def one_node_cluster(cpus: int | None = None, memory_mb: int | None = None, gpus: int = 1,
                     min_job_age: int = 3600, lock_timeout: float = 900,
                     keep: bool = False) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd (one node, ``gpus`` fake GPUs), yield the cluster once
    the node is idle, and on exit cancel its jobs, stop the three daemons by PID and restore
    /etc/slurm.  ``cpus``/``memory_mb`` default to what the machine has (at least 2 / 4000).

    Needs root and the packages (see ensure_packages); raises SlurmUnavailable otherwise.
    ``min_job_age``: seconds a finished job stays visible to squeue/scontrol, which is all the
    executor plugin has without accounting; keep it >= 3x its init-seconds-before-status-checks.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("a test SLURM cluster needs root (slurmd launches the jobs)")
    if not 0 <= gpus <= len(FAKE_GPU_DEVICES):
        raise ValueError(f"gpus must be in 0..{len(FAKE_GPU_DEVICES)}, got {gpus}")
    cpus = cpus or max(2, os.cpu_count() or 1)
    memory_mb = memory_mb or max(4000, _memory_mb())
    with _lock(lock_timeout):
        ensure_packages()  # under the lock: two sessions must not run apt-get at once
        _stop_leftovers()
        root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))  # short: a socket lives here
        root.chmod(0o755)  # munged wants every directory above its socket world-searchable
        for sub in ("state", "spool", "log", "run", "munge"):
            (root / sub).mkdir(mode=0o755)
        key_dir = root / "munge-key"
        key_dir.mkdir(mode=0o700)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge_socket = root / "munge" / "munge.sock"
        cluster = SlurmCluster(root=root, conf=CONF_DIR / "slurm.conf", node=NODE,
                               partition=PARTITION, cpus=cpus, memory_mb=memory_mb, gpus=gpus,
                               min_job_age=min_job_age)
        procs: list[subprocess.Popen] = []
        try:
            procs.append(_start([_which("munged"), "--foreground", f"--socket={munge_socket}",
                                 f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
                                 f"--log-file={root}/log/munged.log",
                                 f"--seed-file={root}/run/munged.seed"],
                                root / "log" / "munged.out"))
            cluster.pids["munged"] = procs[-1].pid
            _wait("munged", munge_socket.exists, procs, cluster, 30)
            conf_text = _slurm_conf(cluster, _free_port(), _free_port(), munge_socket)
            gres_text = MARKER + "\n" + "".join(
                f"NodeName={NODE} Name=gpu File={dev}\n" for dev in FAKE_GPU_DEVICES[:gpus])
            # daemons read their own copy: its path names this cluster, so leftovers are ours
            (root / "slurm.conf").write_text(conf_text)
            (root / "gres.conf").write_text(gres_text)
            with _conf_files({"slurm.conf": conf_text}):
                try:
                    procs.append(_start([_which("slurmctld"), "-D", "-f", str(root / "slurm.conf")],
                                        root / "log" / "slurmctld.out"))
                    cluster.pids["slurmctld"] = procs[-1].pid
                    procs.append(_start([_which("slurmd"), "-D", "-N", NODE,
                                         "-f", str(root / "slurm.conf")],
                                        root / "log" / "slurmd.out"))
                    cluster.pids["slurmd"] = procs[-1].pid

                    def node_idle() -> bool:
                        out = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
                        return out.returncode == 0 and out.stdout.split() == ["idle"]

                    _wait("the node to become idle", node_idle, procs, cluster, 60)
                    yield cluster
                finally:
                    with contextlib.suppress(Exception):
                        jobs = cluster.queue()
                        if jobs:
                            cluster.run("scancel", *jobs, check=False)
                            cluster.wait_for_jobs(timeout=30)
                    for p in reversed(procs[1:]):  # slurmd, slurmctld
                        _stop(p)
        finally:
            for p in procs[:1]:  # munged
                _stop(p)
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
