"""The GPUs through `nvidia-smi`, and the processes holding their memory.

Used by the doctor's `system` group before a batch and by the runner between experiments.
`query_gpus()` asks `nvidia-smi` (found on the PATH of the environment given, not ours) in its
documented CSV query format:

    nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free,memory.used,compute_cap,driver_version \
               --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory,process_name --format=csv,noheader,nounits
    nvidia-smi                      # only for the "CUDA Version: X.Y" of its banner

and enriches each compute process with psutil: its user, command line, parent, and whether it is
an orphan left by an earlier batch (parent is init or a child subreaper such as `systemd --user`,
or its command line or working directory lies in a repo or results folder of this project).
Drivers older than 510 do not know the `compute_cap` field: the query is repeated without it.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from core.envpath import which

GPU_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "memory.used", "compute_cap", "driver_version")
APP_FIELDS = ("pid", "gpu_uuid", "used_memory", "process_name")
FORMAT = "--format=csv,noheader,nounits"
# Parents that adopt orphans instead of init: per-user service managers and container inits.
SUBREAPERS = ("systemd", "tini", "dumb-init", "catatonit", "s6-svscan", "runit", "supervisord")
_CUDA = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")
_POINTS, _INSIDE = "its command line points into", "it runs inside"


class GpuQueryError(RuntimeError):
    """nvidia-smi is there but did not answer (timeout, driver not loaded, unexpected output)."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it; memory in MiB; `compute_capability` like "8.6" (None on
    drivers that do not report it)."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int
    memory_used_mib: int
    compute_capability: Optional[str]
    driver: str


@dataclass(frozen=True)
class GpuProcess:
    """A compute process holding GPU memory.

    `user`, `cmdline` and `ppid` come from psutil (`user` is "" and `ppid` None when the process
    is not visible here, e.g. a host pid seen from a container; `cmdline` then is nvidia-smi's
    process name). `orphan` says it was left behind by an earlier batch, `reason` says why.
    """

    pid: int
    gpu_index: int
    memory_mib: int
    user: str
    cmdline: str
    ppid: Optional[int]
    orphan: bool
    reason: str


@dataclass(frozen=True)
class GpuSnapshot:
    """All GPUs and their compute processes at one moment; `driver` and `cuda` are the driver's
    version and the highest CUDA version it supports ("" when unknown)."""

    gpus: Tuple[Gpu, ...]
    processes: Tuple[GpuProcess, ...]
    driver: str
    cuda: str

    def gpu(self, index: int) -> Optional[Gpu]:
        return next((g for g in self.gpus if g.index == index), None)


def find_nvidia_smi(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """nvidia-smi on the PATH of `env` (os.environ when None)."""
    return which("nvidia-smi", os.environ if env is None else env)


def _number(text: str) -> Optional[int]:
    try:
        return int(float(text))
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", "[Insufficient Permissions]"


def _rows(text: str) -> List[List[str]]:
    return [row for row in csv.reader(text.splitlines(), skipinitialspace=True) if row and any(c.strip() for c in row)]


def _start(argv: Sequence[str], env: Optional[Mapping[str, str]]) -> subprocess.Popen:
    return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=None if env is None else dict(env))


def _finish(p: subprocess.Popen, timeout: float) -> Tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise GpuQueryError(f"{shlex.join(p.args)} did not answer within {timeout:g} s") from None
    return p.returncode, out, err


def _why(argv: Sequence[str], rc: int, out: str, err: str) -> str:
    text = (err.strip() or out.strip() or f"exit status {rc}").splitlines()
    return f"{shlex.join(argv)} failed: {text[0] if text else rc}"


def query_gpus(env: Optional[Mapping[str, str]] = None, timeout: float = 5.0,
               project_paths: Iterable[str] = ()) -> Optional[GpuSnapshot]:
    """GPUs and compute processes, or None when there is no nvidia-smi on the PATH of `env`.

    Raises GpuQueryError when nvidia-smi is there but does not answer properly. `project_paths`
    are the repo and results folders of this project: a process running from one of them is an
    orphan of an earlier batch.
    """
    smi = find_nvidia_smi(env)
    if smi is None:
        return None
    gpu_argv = [smi, "--query-gpu=" + ",".join(GPU_FIELDS), FORMAT]
    app_argv = [smi, "--query-compute-apps=" + ",".join(APP_FIELDS), FORMAT]
    try:
        procs = [_start(a, env) for a in (gpu_argv, app_argv, [smi])]
    except OSError as e:
        raise GpuQueryError(f"cannot run {smi}: {e.strerror}") from None
    try:
        results = [_finish(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    (rc, out, err), (arc, aout, aerr), (_, banner, _) = results
    fields = GPU_FIELDS
    if rc != 0 and "compute_cap" in out + err:  # drivers < 510 reject the field
        fields = tuple(f for f in GPU_FIELDS if f != "compute_cap")
        gpu_argv = [smi, "--query-gpu=" + ",".join(fields), FORMAT]
        rc, out, err = _finish(_start(gpu_argv, env), timeout)
    if rc != 0:
        raise GpuQueryError(_why(gpu_argv, rc, out, err))
    if arc != 0:
        raise GpuQueryError(_why(app_argv, arc, aout, aerr))
    gpus, by_uuid = [], {}
    for row in _rows(out):
        if len(row) != len(fields):
            raise GpuQueryError(f"unexpected line from {shlex.join(gpu_argv)}: {', '.join(row)}")
        v = dict(zip(fields, (c.strip() for c in row)))
        cc = v.get("compute_cap")
        g = Gpu(index=_number(v["index"]) or 0, name=v["name"], memory_total_mib=_number(v["memory.total"]) or 0,
                memory_free_mib=_number(v["memory.free"]) or 0, memory_used_mib=_number(v["memory.used"]) or 0,
                compute_capability=cc if cc and re.fullmatch(r"\d+\.\d+", cc) else None, driver=v["driver_version"])
        gpus.append(g)
        by_uuid[v["uuid"]] = g.index
    roots = tuple(os.path.abspath(p) for p in project_paths if p)
    processes = []
    for row in _rows(aout):
        if len(row) != len(APP_FIELDS):
            raise GpuQueryError(f"unexpected line from {shlex.join(app_argv)}: {', '.join(row)}")
        v = dict(zip(APP_FIELDS, (c.strip() for c in row)))
        pid = _number(v["pid"])
        if pid is None:
            continue
        processes.append(_describe(pid, by_uuid.get(v["gpu_uuid"], -1), _number(v["used_memory"]) or 0,
                                   v["process_name"], roots))
    m = _CUDA.search(banner)
    driver = gpus[0].driver if gpus else ""
    return GpuSnapshot(gpus=tuple(gpus), processes=tuple(processes), driver=driver, cuda=m.group(1) if m else "")


def _under(path: str, roots: Sequence[str]) -> Optional[str]:
    path = os.path.normpath(path)
    for r in roots:
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return r
    return None


def _describe(pid: int, gpu_index: int, memory: int, name: str, roots: Sequence[str]) -> GpuProcess:
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            user, argv, ppid = p.username(), p.cmdline(), p.ppid()
        try:
            cwd = p.cwd()
        except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
            cwd = ""
    except psutil.NoSuchProcess:
        return GpuProcess(pid, gpu_index, memory, "", name, None, False, "not visible here (another pid namespace?)")
    except psutil.AccessDenied:
        return GpuProcess(pid, gpu_index, memory, "", name, None, False, "not inspectable (permission)")
    cmdline = shlex.join(argv) if argv else name
    reasons = []
    if ppid == 1:
        reasons.append("its parent is init (pid 1): whatever started it has exited")
    elif ppid:
        try:
            parent = psutil.Process(ppid)
            pname, pargs = parent.name(), parent.cmdline()
        except (psutil.Error, OSError):
            pname, pargs = "", []
        if pname in SUBREAPERS and (pname != "systemd" or "--user" in pargs):
            reasons.append(f"its parent is {shlex.join(pargs) or pname} (pid {ppid}), which adopts orphans: "
                           "whatever started it has exited")
    for arg in argv:
        arg = arg.split("=", 1)[-1]
        if "/" in arg:
            hit = _under(arg if os.path.isabs(arg) else os.path.join(cwd or "/", arg), roots)
            if hit:
                reasons.append(f"{_POINTS} {hit}")
                break
    else:
        hit = _under(cwd, roots) if cwd else None
        if hit:
            reasons.append(f"{_INSIDE} {hit} (working directory {cwd})")
    return GpuProcess(pid, gpu_index, memory, user, cmdline, ppid, bool(reasons), "; ".join(reasons))


def in_project(process: GpuProcess) -> bool:
    """The orphan was recognised by its command line or working directory (this project's)."""
    return _POINTS in process.reason or _INSIDE in process.reason


def foreign_processes(snapshot: Optional[GpuSnapshot], own_pids: Iterable[int]) -> List[GpuProcess]:
    """The snapshot's processes that are neither in `own_pids` nor descendants of them (the runner
    passes the pids it started; their children, such as the python under train.sh, are its own)."""
    if snapshot is None:
        return []
    import psutil

    own = {int(p) for p in own_pids}
    out = []
    for gp in snapshot.processes:
        if gp.pid in own:
            continue
        try:
            ancestors = {a.pid for a in psutil.Process(gp.pid).parents()}
        except (psutil.Error, OSError):
            ancestors = set()
        if ancestors & own:
            continue
        out.append(gp)
    return out
