"""A single-node SLURM cluster on this machine, for trying `canary sweep` with `executor.kind: slurm` (and for
tests/test_slurm_sweep.py).

    python scripts/local_slurm.py start /tmp/slurm     # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
    SLURM_CONF=/tmp/slurm/slurm.conf canary sweep my_sweep.yaml
    python scripts/local_slurm.py stop /tmp/slurm

Needs Debian's `slurm-wlm` and `munge` packages and root (slurmd starts jobs as their users), and a directory
whose parents every user may enter (munged checks the path to its socket). No systemd is
used: munged, slurmctld and slurmd are started directly, with a generated slurm.conf for this host, free TCP
ports on 127.0.0.1, and every file (key, sockets, state, spool, logs, pid files) under the given directory, so
the machine's own configuration is never touched. There is no accounting database (slurmdbd), so `sacct` answers
"accounting storage is disabled": submitit then learns that a job ended from its result file, which every job
that returns writes; a job killed by SLURM before returning would not be noticed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue", "scancel")
START_TIMEOUT_S = 60


@dataclass
class Cluster:
    """A started cluster: its directory and the environment clients need (SLURM_CONF)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def log(self, daemon: str) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def problem() -> str | None:
    """Why a local cluster cannot start here (one line), or None."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"SLURM programs missing ({', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their users)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, host: str, cpus: int, memory_mb: int, ports: tuple[int, int]) -> str:
    """slurm.conf for one node that is also the controller; no cgroups, no accounting, state under root."""
    return "\n".join(
        [
            "ClusterName=canarylocal",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'run' / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers, sandboxes)
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",  # CPUs are the consumable: jobs asking 1 CPU each run side by side
            "ReturnToService=2",
            "MpiDefault=none",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


def start(root: str | Path) -> Cluster:
    """Start munged, slurmctld and slurmd with everything under root; returns once the node is idle.

    Raises:
        RuntimeError: a daemon did not start or the node did not come up (the message has the logs' tails).
    """
    root = Path(root).resolve()
    if why := problem():
        raise RuntimeError(why)
    root.mkdir(parents=True, exist_ok=True)
    private = [str(d) for d in root.parents if not d.stat().st_mode & 0o001]
    if private:  # munged refuses a socket that not every user can reach
        raise RuntimeError(
            f"{root}: its parent directory {private[0]} is not searchable by all users; "
            "use a directory such as /tmp/slurm"
        )
    for sub in ("munge", "run", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "munge").chmod(0o700)  # munged refuses a key directory others can read
    (root / "run").chmod(0o755)  # ... and a socket directory others cannot enter
    key = root / "munge" / "munge.key"
    if not key.exists():
        _check(_run([_program("mungekey"), "--create", f"--keyfile={key}"]), "mungekey")
    cluster = Cluster(root)
    _check(
        _run(
            [
                _program("munged"),
                f"--socket={root / 'run' / 'munge.socket'}",
                f"--key-file={key}",
                f"--log-file={root / 'log' / 'munged.log'}",
                f"--pid-file={root / 'run' / 'munged.pid'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ]
        ),
        "munged",
    )
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    cluster.conf.write_text(slurm_conf(root, host, os.cpu_count() or 1, memory_mb, (_free_port(), _free_port())))
    for daemon in ("slurmctld", "slurmd"):
        _check(_run([_program(daemon), "-f", str(cluster.conf)], cluster.env), daemon, cluster)
        if daemon == "slurmctld":
            time.sleep(1)  # slurmd registers with the controller at start
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _run(["sinfo", "-h", "-o", "%T"], cluster.env).stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return cluster
        time.sleep(1)
    stop(root)
    raise RuntimeError(
        f"SLURM node did not become idle in {START_TIMEOUT_S} s (state {state!r})\n"
        f"slurmctld.log: {cluster.log('slurmctld')[-2000:]}\n"
        f"slurmd.log: {cluster.log('slurmd')[-2000:]}"
    )


def _check(result: subprocess.CompletedProcess, what: str, cluster: Cluster | None = None) -> None:
    if result.returncode != 0:
        logs = f"\n{cluster.log(what)[-2000:]}" if cluster else ""
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}{logs}")


def stop(root: str | Path) -> None:
    """Stop the cluster started by `start`: let its jobs end (cancel what is left after DRAIN_TIMEOUT_S), stop the
    daemons by their pid files, then kill anything the cluster started that is still there (a job step whose
    slurmd went away first lingers otherwise: measured, slurmstepd, its batch script and srun)."""
    root = Path(root).resolve()
    _drain(Cluster(root))
    _stop_daemons(root)
    _kill_leftovers(Cluster(root))


DRAIN_TIMEOUT_S = 30


def _drain(cluster: Cluster) -> None:
    if not cluster.conf.exists():
        return
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        queue = subprocess.run(
            [_program("squeue"), "-h", "-o", "%i"],
            env={**os.environ, **cluster.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        jobs = queue.stdout.split() if queue.returncode == 0 else []
        if not jobs:
            return
        if time.monotonic() > deadline:
            subprocess.run(
                [_program("scancel"), *jobs], env={**os.environ, **cluster.env}, capture_output=True, timeout=30
            )
            time.sleep(2)
            return
        time.sleep(0.5)


def leftover_pids(cluster: Cluster) -> list[int]:
    """Live processes started under this cluster (they inherit its SLURM_CONF from slurmd), this one excepted."""
    mark = f"SLURM_CONF={cluster.conf}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (
                int(pid) != os.getpid()
                and mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                and _alive(int(pid))
            ):
                found.append(int(pid))
        except OSError:
            pass
    return found


def _kill_leftovers(cluster: Cluster) -> None:
    _signal_and_wait(leftover_pids(cluster), signal.SIGKILL, wait_s=10)


def _stop_daemons(root: Path) -> None:
    for daemon in ("slurmd", "slurmctld", "munged"):
        try:
            pid = int((root / "run" / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if not _signal_and_wait([pid], signal.SIGTERM, wait_s=20):
            _signal_and_wait([pid], signal.SIGKILL, wait_s=10)


def _signal_and_wait(pids: list[int], sig: int, wait_s: float) -> bool:
    """Send `sig` to each process, then wait up to `wait_s` for all to exit; True when none is left."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", help="directory for the cluster's configuration, state and logs")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.dir)
        return 0
    try:
        cluster = start(args.dir)
    except RuntimeError as exc:
        print(f"local_slurm: {exc}", file=sys.stderr)
        return 2
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
