"""Datasets on filesystems that are not mounted, or mounts that no longer answer.
"""
from __future__ import annotations

import errno
import os
import threading
from typing import Dict, Iterable, List, Optional, Tuple

from checks.system.common import _finding, _q
from core.model import FAIL, OK


FSTAB = "/etc/fstab"


def fstab_mounts(path: str = None) -> List[Tuple[str, str, str, str]]:
    """(device, mount point, type, options) of each filesystem line of fstab."""
    path = path or FSTAB
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[1].startswith("/") and words[2] not in ("swap", "none"):
                    out.append((words[0], words[1].replace("\\040", " "), words[2], words[3] if len(words) > 3 else ""))
    except OSError:
        pass
    return out


def _containing(path: str, mount_points: Iterable[str]) -> Optional[str]:
    best = None
    for m in mount_points:
        m = m.rstrip("/") or "/"
        if m != "/" and (path == m or path.startswith(m + "/")) and (best is None or len(m) > len(best)):
            best = m
    return best


def stat_paths(paths: Iterable[str], timeout: float) -> Dict[str, Tuple[str, Optional[OSError]]]:
    """os.stat of each path, concurrently, each in a daemon thread, all within `timeout` seconds:
    path -> ("ok"|"missing"|"error"|"timeout", the OSError or None). A hung network mount blocks
    its thread for good; a daemon thread does not keep the doctor from exiting."""
    import time

    box: Dict[str, Tuple[str, Optional[OSError]]] = {}

    def run(path):
        try:
            os.stat(path)
            box[path] = ("ok", None)
        except FileNotFoundError as e:
            box[path] = ("missing", e)
        except OSError as e:
            box[path] = ("error", e)

    paths = list(dict.fromkeys(paths))
    threads = [threading.Thread(target=run, args=(p,), name=f"stat {p}", daemon=True) for p in paths]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {p: box.get(p, ("timeout", None)) for p in paths}


def check_dataset_mounts(ctx):
    """Datasets under an fstab mount point that is not mounted, or on a mount that no longer answers."""
    datasets = [(n, ids) for n, ids in ctx.needs().values() if n.kind == "path" and n.spec.get("kind") == "dataset"]
    if not datasets:
        return None
    import psutil

    fstab = fstab_mounts()
    mounted = {p.mountpoint.rstrip("/") or "/": p for p in psutil.disk_partitions(all=True)}
    timeout = max(1.0, float(getattr(ctx.options, "timeout", 3.0)))
    out, checks = [], []
    for need, ids in datasets:
        path = need.path_for(ctx.launch.home)
        fm = _containing(path, [m for _, m, _, _ in fstab])
        if fm and fm not in mounted:
            dev, _, fstype, opts = next(e for e in fstab if (e[1].rstrip("/") or "/") == fm)
            out.append(_finding("system.mount.missing", FAIL, f"dataset {path} is on {fm}, which is not mounted",
                                f"{FSTAB}: {dev} {fm} {fstype} {opts}".rstrip(), fix=(_q("sudo", "mount", fm),),
                                experiments=ids, path=path, mount_point=fm, device=dev))
            continue
        checks.append((need, ids, path))
    results = stat_paths([p for _, _, p in checks], timeout)
    ok = []
    for need, ids, path in checks:
        outcome, err = results.get(path, ("timeout", None))
        stale = outcome == "timeout" or (outcome == "error" and err.errno in (errno.ENOTCONN, errno.ESTALE, errno.EIO,
                                                                              errno.EHOSTDOWN))
        if not stale:
            if outcome == "ok":
                ok.append(path)
            continue  # missing or unreadable: the cache group says so
        mp = _containing(path, mounted) or "/"
        part = mounted.get(mp)
        why = (f"no answer within {timeout:g} s" if outcome == "timeout" else f"{os.strerror(err.errno)}")
        out.append(_finding("system.mount.stale", FAIL, f"dataset {path} is on a mount that does not answer ({mp})",
                            f"stat: {why}; {part.device} {part.fstype}" if part else f"stat: {why}",
                            fix=(_q("sudo", "umount", "-l", mp) + " && " + _q("sudo", "mount", mp),),
                            experiments=ids, path=path, mount_point=mp))
    if ok and not out:
        out.append(_finding("system.mount.ok", OK, f"{len(ok)} dataset path(s) on mounted, answering filesystems",
                            ", ".join(ok[:5]), paths=ok))
    return out
