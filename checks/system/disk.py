"""Disk space and inodes for the weights still to download and the results the batch writes.
"""
from __future__ import annotations

import os
import shlex
from typing import Dict, List, Tuple

from checks.system.common import GIB, MIB, _all_ids, _finding, _gib, _q
from core.model import FAIL, OK, WARN


RESULTS_PER_EXPERIMENT = 50 * MIB   # logs, energy CSVs, experiment.json
DISK_MARGIN = 1 * GIB       # on top of what the plan needs: fail below
DISK_COMFORT = 5 * GIB      # warn below need + this
DEFAULT_WEIGHTS = 1 * GIB   # a missing weight file of unknown size
INODES_FAIL, INODES_WARN = 10_000, 50_000
# Approximate sizes of the weight files the bundled registry's models download, in bytes
# (torchvision's weights meta `_file_size`; timm's from the Hub), to weigh disk space offline.
KNOWN_WEIGHTS = {
    "densenet121-a639ec97.pth": 32_342_954,
    "resnet50-0676ba61.pth": 102_530_333,
    "resnet50-11ad3fa6.pth": 102_540_417,
    "resnet18-f37072fd.pth": 46_830_571,
    "timm/hrnet_w18.ms_aug_in1k": 85_300_000,
    "timm/resnet18.a1_in1k": 46_800_000,
}


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


def _mount_point(path: str) -> str:
    """The mount point of the filesystem holding the existing `path`."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        path = parent
    return path


def _missing_weights(ctx) -> Dict[str, List[Tuple[int, Tuple[str, ...], str]]]:
    """Cache folder ("hub"/"torchhub") -> [(bytes, experiment ids, what)] for weights not in the cache."""
    out: Dict[str, list] = {"hub": [], "torchhub": []}
    for s in ctx.need_states().values():
        r = s.resolved
        if s.need.kind not in ("timm", "hf", "torchvision") or r is None or s.status == "present":
            continue
        if r.source == "torchhub":
            size, what = KNOWN_WEIGHTS.get(r.filename), r.filename
            out["torchhub"].append((size or DEFAULT_WEIGHTS, s.experiments, what + ("" if size else " (size unknown)")))
        else:
            size = KNOWN_WEIGHTS.get(r.repo_id)
            out["hub"].append((size or DEFAULT_WEIGHTS, s.experiments, r.repo_id + ("" if size else " (size unknown)")))
    return out


def check_disk(ctx):
    """Free space and inodes where results and caches are written, against what the plan needs."""
    ids = _all_ids(ctx)
    results = os.path.join(ctx.options.project_root, "results")
    missing = _missing_weights(ctx) if any(n.kind in ("timm", "hf", "torchvision")
                                           for n, _ in ctx.needs().values()) else {"hub": [], "torchhub": []}
    places = [("results", results, len(ids) * RESULTS_PER_EXPERIMENT, ids, [f"{len(ids)} experiment folder(s)"]),
              ("Hugging Face cache", ctx.launch.hf_cache, sum(b for b, _, _ in missing["hub"]),
               tuple(i for _, e, _ in missing["hub"] for i in e), [w for _, _, w in missing["hub"]]),
              ("torch hub cache", ctx.launch.torch_hub, sum(b for b, _, _ in missing["torchhub"]),
               tuple(i for _, e, _ in missing["torchhub"] for i in e), [w for _, _, w in missing["torchhub"]])]
    by_dev: Dict[int, dict] = {}
    for label, path, need, exps, what in places:
        anchor = _existing(path)
        try:
            dev = os.stat(anchor).st_dev
        except OSError:
            continue
        fs = by_dev.setdefault(dev, {"anchor": _mount_point(anchor), "labels": [], "paths": [], "need": DISK_MARGIN,
                                     "experiments": [], "what": []})
        fs["labels"].append(label)
        fs["paths"].append(path)
        fs["need"] += need
        fs["experiments"].extend(exps)
        fs["what"].extend(what)
    root = ctx.launch.uid == 0
    out = []
    for fs in by_dev.values():
        v = os.statvfs(fs["anchor"])
        free = (v.f_bfree if root else v.f_bavail) * v.f_frsize
        inodes = (v.f_ffree if root else v.f_favail) if v.f_files else None
        where = ", ".join(fs["labels"])
        data = {"paths": fs["paths"], "free_bytes": free, "need_bytes": fs["need"], "free_inodes": inodes,
                "needs": fs["what"]}
        look = [_q("df", "-h", fs["anchor"]),
                f"du -xsh {shlex.quote(fs['anchor'])}/* 2>/dev/null | sort -h | tail -n 15  # the largest folders"]
        if free < fs["need"]:
            out.append(_finding("system.disk.low", FAIL,
                                f"{_gib(free)} free for {where}; about {_gib(fs['need'])} needed",
                                f"{fs['anchor']}: " + "; ".join(fs["what"]) + f" + {_gib(DISK_MARGIN)} margin",
                                fix=look, experiments=ids, **data))
        elif free < fs["need"] + DISK_COMFORT:
            out.append(_finding("system.disk.low", WARN, f"only {_gib(free)} free for {where}",
                                f"{fs['anchor']}: about {_gib(fs['need'])} needed; checkpoints the training scripts "
                                f"save come on top", fix=look, **data))
        problem = free < fs["need"] + DISK_COMFORT
        if inodes is not None and inodes < INODES_WARN:
            problem = True
            out.append(_finding("system.disk.inodes", FAIL if inodes < INODES_FAIL else WARN,
                                f"only {inodes} free inodes for {where}", fs["anchor"],
                                fix=(_q("df", "-i", fs["anchor"]),
                                     f"find {shlex.quote(fs['anchor'])} -xdev -type f | cut -d/ -f2-4 | sort | "
                                     "uniq -c | "
                                     "sort -n | tail  # folders with most files"),
                                experiments=ids if inodes < INODES_FAIL else (), **data))
        if not problem:
            out.append(_finding("system.disk.ok", OK, f"{_gib(free)} free for {where}",
                                f"{fs['anchor']}: about {_gib(fs['need'])} needed", **data))
    return out
