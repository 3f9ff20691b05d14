"""The cluster side of a Slurm batch, seen from the login node: the Slurm commands, the partition,
accounting, and whether the folders the jobs need are on a filesystem the nodes share.

What the jobs need to see: the results folder (each job writes its experiment folder there and
submitit keeps its pickles and logs in it; a submitit folder the node cannot see fails with no log
at all), the project (the repos and the settings), and the runner's interpreter (the node runs it).
From the login node a filesystem's type is all we can read: a network filesystem is shared, a
tmpfs or /tmp is not, and a local disk is shared only if this machine exports it, which we cannot
tell; so that is a warning, never an all-clear.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from core.model import Finding
from core.vocab import FAIL, OK, WARN

COMMANDS = ("sbatch", "squeue", "sinfo", "scancel", "sacct")
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "cifs", "smb3", "smbfs", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs", "sshfs", "panfs", "wekafs", "fuse.beegfs", "fuse.ceph", "afs",
              "fuse.juicefs", "orangefs", "pvfs2", "9p", "virtiofs", "gfs2", "ocfs2"}
NODE_LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs"}
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def _f(id_: str, status: str, title: str, detail: str = "", fix: Sequence[str] = (), experiments: Sequence[str] = (),
       **data) -> Finding:
    return Finding(id=f"system.cluster.{id_}", group="system", status=status, title=title, detail=detail,
                   fix=tuple(fix), experiments=tuple(experiments), data=data)


def _run(argv: List[str], timeout: float) -> Tuple[int, str]:
    """(exit code, stdout or the error text); 124 when it did not answer in time."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, f"no answer within {timeout:g} s"
    except OSError as e:
        return 127, e.strerror or str(e)
    return p.returncode, p.stdout if p.returncode == 0 else (p.stderr or p.stdout).strip()


def partitions(timeout: float = 10.0) -> Tuple[Optional[Dict[str, dict]], str]:
    """{name: {"default", "up", "nodes": [host, ...]}} from `sinfo`, or (None, why)."""
    rc, out = _run(["sinfo", "-h", "-o", "%P|%a|%N"], timeout)
    if rc != 0:
        return None, out
    parts: Dict[str, dict] = {}
    for line in out.splitlines():
        name, _, rest = line.strip().partition("|")
        avail, _, nodes = rest.partition("|")
        if not name:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, {"default": default, "up": avail == "up", "nodes": []})
        p["nodes"] += _expand_hosts(nodes, timeout)
    return parts, ""


def _expand_hosts(nodes: str, timeout: float) -> List[str]:
    if not nodes or nodes == "n/a":
        return []
    if "[" not in nodes:
        return nodes.split(",")
    rc, out = _run(["scontrol", "show", "hostnames", nodes], timeout)
    return out.split() if rc == 0 else [nodes]


def fs_type(path: str) -> Tuple[str, str]:
    """(filesystem type, mount point) of the existing part of `path`."""
    import psutil

    real = os.path.realpath(path)
    best = ("", "/")
    for p in psutil.disk_partitions(all=True):
        mp = p.mountpoint.rstrip("/") or "/"
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best[1]):
            best = (p.fstype, mp)
    return best


def _shared_findings(places: Sequence[Tuple[str, str]], nodes: Sequence[str], ids: Sequence[str]) -> List[Finding]:
    here = {socket.gethostname().split(".")[0], socket.getfqdn().split(".")[0]}
    if nodes and {n.split(".")[0] for n in nodes} <= here:
        return [_f("shared-fs", OK, "the partition's only node is this machine: it sees every folder",
                   ", ".join(p for _, p in places))]
    out = []
    for label, path in places:
        fstype, mp = fs_type(path)
        real = os.path.realpath(path)
        local_dir = next((d for d in NODE_LOCAL_DIRS if real == d or real.startswith(d + "/")), None)
        where = f"{path} ({fstype or 'unknown'} at {mp})"
        move = ("mutation-run --backend slurm --results-dir /shared/path/results ...  # a folder every node mounts"
                if label == "results folder" else f"# put {label} on a filesystem the nodes mount (home, /shared, ...)")
        if fstype in NETWORK_FS:
            out.append(_f("shared-fs", OK, f"{label} on a network filesystem the nodes can mount", where, path=path,
                          fstype=fstype))
        elif fstype in NODE_LOCAL_FS or local_dir:
            out.append(_f("shared-fs", FAIL, f"{label} is node-local: the compute nodes cannot see {path}",
                          f"{where}; a job whose submitit folder the node cannot see fails without any log",
                          fix=(move,), experiments=ids, path=path, fstype=fstype))
        else:
            out.append(_f("shared-fs", WARN, f"cannot tell whether the nodes see {label} {path}",
                          f"{where} is a local filesystem of this machine: the nodes see it only if it is exported "
                          f"to them", fix=(f"srun -N1 ls -d {shlex.quote(path)}  # run on a node: it must list it",),
                          path=path, fstype=fstype))
    return out


def cluster_findings(ctx, partition: Optional[str] = None, results_dir: Optional[str] = None,
                     required: bool = False) -> List[Finding]:
    """Everything a Slurm batch needs from the login node. `required`: the batch runs on Slurm, so
    missing commands fail (else the check says nothing on a machine without Slurm)."""
    ids = tuple(e.id for e in ctx.plan.experiments)
    timeout = max(5.0, float(getattr(ctx.options, "timeout", 3.0)) * 3)
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if {"sbatch", "squeue"} & set(missing):
        if not required:
            return []
        return [_f("commands", FAIL, f"{', '.join(missing)} not on PATH: jobs cannot be submitted from here",
                   f"PATH={os.environ.get('PATH', '')}",
                   fix=("module load slurm  # on a cluster; or: sudo apt-get install slurm-client",),
                   experiments=ids, missing=missing)]
    parts, why = partitions(timeout)
    if parts is None:
        return [_f("controller", FAIL, "the Slurm controller does not answer", f"sinfo: {why}",
                   fix=("scontrol ping", "sinfo"), experiments=ids)]
    out: List[Finding] = []
    chosen = partition or next((n for n, p in parts.items() if p["default"]), None)
    if chosen not in parts:
        names = ", ".join(parts) or "none"
        first = next(iter(parts), "NAME")
        title = (f"partition {partition!r} does not exist" if partition else "the cluster has no default partition")
        return out + [_f("partition", FAIL, title, f"partitions: {names}",
                         fix=(f"mutation-run --backend slurm --partition {shlex.quote(first)} ...",),
                         experiments=ids, partitions=list(parts))]
    p = parts[chosen]
    if not p["up"]:
        out.append(_f("partition", WARN, f"partition {chosen} is not up: jobs will wait in the queue",
                      fix=(f"sinfo -p {shlex.quote(chosen)}",), partition=chosen))
    if "sacct" in missing or _run(["sacct", "-n", "-X", "-j", "1"], timeout)[0] != 0:
        out.append(_f("accounting", WARN, "Slurm accounting (sacct) is not available",
                      "a job that dies without writing its result (killed, out of memory, node failure) is noticed "
                      "only once it leaves the queue, and its end state is unknown",
                      fix=("sacct -n -X -j 1  # must answer; needs slurmdbd (AccountingStorageType=accounting_storage/slurmdbd)",)))
    root = ctx.options.project_root
    places = [("results folder", results_dir or os.path.join(root, "results")), ("the project", root),
              ("the runner's interpreter", sys.prefix)]
    out += _shared_findings(places, p["nodes"], ids)
    return out


def check_cluster(ctx):
    """Registered check: on a machine with `sbatch`, outside a job (a node's preflight skips it). The
    doctor does not know whether the batch will go to Slurm, so problems are warnings here; with
    `mutation-run --backend slurm` they stop the submission."""
    if "SLURM_JOB_ID" in os.environ or shutil.which("sbatch") is None:
        return None
    return [dataclasses.replace(f, status=WARN, experiments=()) if f.status == FAIL else f
            for f in cluster_findings(ctx)]
