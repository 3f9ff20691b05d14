"""A one-node Slurm cluster on this machine, with accounting, for tests that submit real jobs.

    reason = skip_reason()          # None when the packages are there and we are root
    cluster = Cluster().up()        # idempotent: reuses daemons already running, starts the rest
    cluster.env()                   # {"SLURM_CONF": ...} when the config is not the system one
    cluster.down()                  # stops only the daemons this object started, by pid
    cluster.attach(); cluster.detach()  # for pytest sessions sharing it: the last one out stops the daemons

    python -m tests.support.slurm up|down|status     # the same from a shell (pids kept in STATE/pids.json)

Debian's `slurmctld slurmd slurm-client munge slurmdbd mariadb-server` (Slurm 22.05). No systemd is
assumed: munged (as user munge), mariadbd (--skip-networking, a private datadir), slurmdbd,
slurmctld and slurmd are started directly in the foreground of their own sessions. Accounting is
on because submitit needs `sacct` to notice a job that died without writing its result. Every wait
is bounded. Standard library only.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "sacct", "scancel")
STATE = Path(os.environ.get("MUTATION_SLURM_STATE", "/var/tmp/mutation-slurm"))
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by mutation-preflight tests/support/slurm.py"
MYSQL_SOCKET = Path("/run/mysqld/mysqld.sock")  # where slurmdbd's client library looks for "localhost"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
PARTITION = "debug"
CLUSTER_NAME = "mutationtest"


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)


def missing_tools() -> List[str]:
    return [t for t in DAEMONS + CLIENTS + ("munge", "unmunge", "mariadb-install-db", "mariadb") if _which(t) is None]


def install(timeout: float = 300.0) -> Optional[str]:
    """apt-get install the packages (root only, bounded); returns why it could not, or None."""
    if not missing_tools():
        return None
    if os.getuid() != 0 or _which("apt-get") is None:
        return f"Slurm is not installed and cannot be here (needs root and apt-get): {' '.join(PACKAGES)}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv[:2])} did not finish in {timeout:.0f} s"
        if p.returncode != 0 and argv[1] == "install":
            return f"apt-get install {' '.join(PACKAGES)} failed: {(p.stderr or p.stdout).strip()[-300:]}"
    missing = missing_tools()
    return f"still missing after apt-get install: {', '.join(missing)}" if missing else None


def skip_reason(try_install: bool = True) -> Optional[str]:
    """Why a real cluster cannot be brought up here, or None."""
    if os.getuid() != 0:
        return "a test cluster needs root (daemons run as root, munge and mysql users)"
    if missing_tools():
        return install() if try_install else f"missing: {', '.join(missing_tools())} (apt-get install {' '.join(PACKAGES)})"
    return None


def _run(argv: List[str], timeout: float = 20.0, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (subprocess.TimeoutExpired, OSError) as e:
        return subprocess.CompletedProcess(argv, 124, "", str(e))


def _wait(what: str, ok, timeout: float, log: Optional[Path] = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"test cluster: {what} not ready after {timeout:.0f} s{tail}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _running(name: str) -> List[int]:
    """Pids of processes whose executable name is `name` (from /proc/<pid>/comm)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == name[:15]:
                        out.append(int(d))
            except OSError:
                continue
    return [p for p in out if _alive(p)]


class _locked:
    """An exclusive flock on `path` for the `with` block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def node_line(hostname: str) -> str:
    """The node's line from `slurmd -C`, RealMemory cut to 90 % so the node is never drained for it."""
    p = _run([_which("slurmd"), "-C"])
    words = p.stdout.splitlines()[0].split() if p.returncode == 0 and p.stdout else []
    fields = dict(w.split("=", 1) for w in words if "=" in w)
    cpus = fields.get("CPUs", str(os.cpu_count() or 1))
    mem = int(int(fields.get("RealMemory", "2048")) * 0.9)
    return f"NodeName={hostname} CPUs={cpus} RealMemory={mem} State=UNKNOWN"


class Cluster:
    """The test cluster: configuration under STATE, daemons started on demand."""

    def __init__(self, state: Path = STATE):
        self.state = Path(state)
        self.hostname = socket.gethostname().split(".")[0]
        self.started: Dict[str, int] = {}
        self.conf = SYSTEM_CONF if self._may_own(SYSTEM_CONF) else self.state / "etc" / "slurm.conf"

    # -- configuration -------------------------------------------------------------------------------
    @staticmethod
    def _may_own(path: Path) -> bool:
        """The system path is ours to write when absent or written by us before."""
        try:
            return not path.exists() or path.read_text().startswith(MARKER)
        except OSError:
            return False

    def env(self) -> Dict[str, str]:
        """What clients (sbatch, submitit) need in their environment to reach this cluster."""
        return {} if self.conf == SYSTEM_CONF else {"SLURM_CONF": str(self.conf)}

    def _slurm_conf(self) -> str:
        s = self.state
        return "\n".join([
            MARKER, f"ClusterName={CLUSTER_NAME}", f"SlurmctldHost={self.hostname}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "ReturnToService=2",
            f"StateSaveLocation={s}/ctld", f"SlurmdSpoolDir={s}/d", f"SlurmctldPidFile={s}/run/slurmctld.pid",
            f"SlurmdPidFile={s}/run/slurmd.pid", f"SlurmctldLogFile={s}/log/slurmctld.log",
            f"SlurmdLogFile={s}/log/slurmd.log", "SlurmctldDebug=info", "SlurmdDebug=info",
            "SchedulerType=sched/backfill", "SchedulerParameters=batch_sched_delay=0",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=256",
            "AccountingStorageType=accounting_storage/slurmdbd", f"AccountingStorageHost={self.hostname}",
            "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none",
            "MinJobAge=300", "KillWait=5", "InactiveLimit=0", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            "MessageTimeout=20", "OverTimeLimit=0",
            node_line(self.hostname),
            f"PartitionName={PARTITION} Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP", ""])

    def _dbd_conf(self) -> str:
        s = self.state
        return "\n".join([
            MARKER, "AuthType=auth/munge", f"DbdHost={self.hostname}", "SlurmUser=root",
            f"PidFile={s}/run/slurmdbd.pid", f"LogFile={s}/log/slurmdbd.log", "DebugLevel=info",
            "StorageType=accounting_storage/mysql", "StorageHost=localhost", "StorageUser=root",
            f"StorageLoc=slurm_acct_{CLUSTER_NAME}", ""])

    def _write(self, path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)

    def configure(self) -> None:
        for d in ("ctld", "d", "run", "log", "etc"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        self._write(self.conf, self._slurm_conf())
        # slurmdbd reads slurmdbd.conf beside slurm.conf and refuses one others can read
        self._write(self.conf.with_name("slurmdbd.conf"), self._dbd_conf(), 0o600)
        self._write(self.conf.with_name("cgroup.conf"), MARKER + "\nCgroupPlugin=autodetect\n")

    # -- daemons ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: List[str], user: Optional[str] = None) -> int:
        log = open(self.state / "log" / f"{name}.out", "ab")
        env = dict(os.environ, **self.env())
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True, user=user)
        log.close()
        self.started[name] = proc.pid
        self._save_pids()
        return proc.pid

    def _save_pids(self) -> None:
        self._write(self.state / "run" / "pids.json", json.dumps({**self.saved_pids(), **self.started}))

    def _munge(self) -> None:
        if _run(["sh", "-c", "munge -n | unmunge"], timeout=5).returncode == 0:
            return
        key = Path("/etc/munge/munge.key")
        mu = pwd.getpwnam("munge")
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
        for d in (key.parent, Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, mu.pw_uid, mu.pw_gid)
        os.chown(key, mu.pw_uid, mu.pw_gid)
        os.chmod(key, 0o400)
        self._spawn("munged", [_which("munged"), "-F", "--force"], user="munge")
        _wait("munged", lambda: _run(["sh", "-c", "munge -n | unmunge"], timeout=5).returncode == 0, 15,
              Path("/var/log/munge/munged.log"))

    def _sql_ok(self) -> bool:
        return _run([_which("mariadb"), "--protocol=socket", "-S", str(MYSQL_SOCKET), "-e", "select 1"], 5).returncode == 0

    def _mariadb(self) -> None:
        if self._sql_ok():
            return
        data = self.state / "mysql"
        my = pwd.getpwnam("mysql")
        if not (data / "mysql").is_dir():
            data.mkdir(parents=True, exist_ok=True)
            os.chown(data, my.pw_uid, my.pw_gid)
            p = _run([_which("mariadb-install-db"), "--no-defaults", "--user=mysql", f"--datadir={data}",
                      "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=120)
            if p.returncode != 0:
                raise RuntimeError(f"test cluster: mariadb-install-db failed: {(p.stderr or p.stdout)[-400:]}")
        MYSQL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        os.chown(MYSQL_SOCKET.parent, my.pw_uid, my.pw_gid)
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=mysql", f"--datadir={data}",
                                 f"--socket={MYSQL_SOCKET}", "--skip-networking", f"--pid-file={data}/mariadbd.pid",
                                 f"--log-error={data}/mariadbd.err", "--innodb-buffer-pool-size=32M"])
        _wait("mariadbd", self._sql_ok, 60, data / "mariadbd.err")

    def _client_env(self) -> Dict[str, str]:
        return dict(os.environ, **self.env())

    def _ctld_ok(self) -> bool:
        return _run([_which("scontrol"), "ping"], 5, self._client_env()).stdout.count("UP") > 0

    def _dbd_ok(self) -> bool:
        return _run([_which("sacctmgr"), "-n", "-i", "list", "cluster"], 5, self._client_env()).returncode == 0

    def node_state(self) -> str:
        p = _run([_which("sinfo"), "-h", "-n", self.hostname, "-o", "%t"], 5, self._client_env())
        return p.stdout.strip() if p.returncode == 0 else ""

    def _slurm(self) -> None:
        conf = ["-f", str(self.conf)]
        if not _running("slurmdbd") or not self._dbd_ok():
            if not _running("slurmdbd"):
                self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
            _wait("slurmdbd", self._dbd_ok, 30, self.state / "log" / "slurmdbd.log")
        if not _running("slurmctld"):
            self._spawn("slurmctld", [_which("slurmctld"), "-D", *conf])
        _wait("slurmctld", self._ctld_ok, 30, self.state / "log" / "slurmctld.log")
        if not _running("slurmd"):
            self._spawn("slurmd", [_which("slurmd"), "-D", *conf])
        _wait(f"node {self.hostname} idle", lambda: self.node_state() in ("idle", "mix", "alloc"), 40,
              self.state / "log" / "slurmd.log")

    def up(self) -> "Cluster":
        """Bring every piece up that is not already up; idempotent and bounded (about 20 s from nothing)."""
        reason = skip_reason(try_install=False)
        if reason:
            raise RuntimeError(reason)
        self.configure()
        self._munge()
        self._mariadb()
        self._slurm()
        return self

    def down(self, pids: Optional[Dict[str, int]] = None) -> List[str]:
        """SIGTERM the daemons this cluster started (or `pids`), in reverse order, SIGKILL after 10 s;
        returns their names. pids.json keeps only what is still alive."""
        pids = dict(self.started if pids is None else pids)
        stopped = []
        for name in reversed(DAEMONS):
            pid = pids.get(name)
            if not pid or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        self.started = {k: v for k, v in self.started.items() if _alive(v)}
        alive = {k: v for k, v in self.saved_pids().items() if _alive(v)}
        self._write(self.state / "run" / "pids.json", json.dumps(alive))
        return stopped

    def saved_pids(self) -> Dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads((self.state / "run" / "pids.json").read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    # -- several test sessions at once -------------------------------------------------------------------
    def attach(self) -> None:
        """This process uses the cluster (a second pytest session may be using it too)."""
        users = self.state / "run" / "users"
        users.mkdir(parents=True, exist_ok=True)
        (users / str(os.getpid())).touch()

    def detach(self) -> List[str]:
        """This process is done: the last user stops what the sessions started (its own daemons and
        those handed over by sessions that ended while others still used the cluster)."""
        users = self.state / "run" / "users"
        (users / str(os.getpid())).unlink(missing_ok=True)
        handover = self.state / "run" / "handover.json"
        with _locked(self.state / "run" / "users.lock"):
            others = [u for u in users.iterdir() if u.name.isdigit() and _alive(int(u.name))]
            try:
                pids = {k: int(v) for k, v in json.loads(handover.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                pids = {}
            pids = {k: v for k, v in pids.items() if _alive(v) and v in _running(k)}
            pids.update(self.started)
            if others:
                self._write(handover, json.dumps(pids))
                self.started = {}
                return []
            handover.unlink(missing_ok=True)
        return self.down(pids)


def main(argv: List[str]) -> int:
    what = argv[0] if argv else "status"
    c = Cluster()
    if what == "up":
        reason = skip_reason()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        t0 = time.monotonic()
        c.up()
        print(json.dumps({"up": True, "seconds": round(time.monotonic() - t0, 1), "started": c.started, "env": c.env()}))
    elif what == "down":
        print(json.dumps({"stopped": c.down(c.saved_pids())}))
    else:
        print(json.dumps({"node": c.node_state(), "running": {d: _running(d) for d in DAEMONS}, "conf": str(c.conf)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
