"""The `cache` group: every need of the plan, as the launched process will find it, with no network."""
from __future__ import annotations

import os
import shlex
import sys
from typing import List

from core.commands import doctor_command, prefetch_fix, quote, run_command
from core.context import NeedState
from core.hubcache import BROKEN, MISSING, UNREADABLE
from core.model import FAIL, OK, WARN, Finding

_AREA = {"hf": "hub"}  # a store's name in finding ids, where it differs (cache.hub.missing)


def _area(s: NeedState) -> str:
    """The part of the finding id naming where the need lives: its store (hub, torchhub), else its kind."""
    return _AREA.get(s.resolved.source, s.resolved.source) if s.resolved is not None else s.need.kind


def _what(s: NeedState) -> str:
    n, r = s.need, s.resolved
    if r is not None and r.source == "hf":
        files = " or ".join(r.files) if r.any_of else ", ".join(r.files)
        label = f"{n.kind} {n.spec[n.kind]}" if n.kind == "timm" else "Hub repo"
        return f"{label} ({r.repo_id}@{r.revision}: {files})"
    if r is not None:
        return f"{n.kind} {n.spec[n.kind]} ({r.filename})"
    if n.kind == "path":
        return f"{n.spec.get('kind', 'file')} {s.path}"
    return f"interpreter {s.path}"


def _hub_fixes(ctx, s: NeedState) -> List[str]:
    launch, r = ctx.launch, s.resolved
    fixes = []
    for label, where in s.found_elsewhere[:1]:
        if r.source == "hf":
            src = os.path.join(where, "models--" + r.repo_id.replace("/", "--"))
            var, dest = "HF_HUB_CACHE", launch.hf_cache
        else:
            src = os.path.join(where, "checkpoints", r.filename)
            var, dest = "TORCH_HOME", launch.torch_hub
        cache_root = where if var == "HF_HUB_CACHE" else os.path.dirname(where)
        fixes.append(f"export {var}={shlex.quote(cache_root)}")
        if launch.source != "self" or launch.uid != launch.invoking_uid:
            fixes.append(run_command(ctx, ("sudo", f"--preserve-env={var},HF_HUB_OFFLINE")))
        sudo = "sudo " if launch.uid == 0 and os.getuid() != 0 else ""
        target = dest if r.source == "hf" else os.path.join(dest, "checkpoints")
        fixes.append(f"{sudo}mkdir -p {shlex.quote(target)} && {sudo}cp -a {shlex.quote(src)} {shlex.quote(target)}/")
    fixes.append(prefetch_fix(ctx))
    return fixes


def _fixes(ctx, s: NeedState) -> List[str]:
    n = s.need
    if n.adapter.downloaded and s.resolved is not None:
        fixes = _hub_fixes(ctx, s)
        if s.status == BROKEN and s.files and s.files[0].blob:
            fixes.insert(0, f"rm -f {shlex.quote(s.path)} {shlex.quote(s.files[0].blob)}  # remove the broken copy, then fetch it again")
        return fixes
    if n.kind == "path":
        if s.problem == "lfs-pointer":
            return [quote("git", "-C", n.repo_dir, "lfs", "pull")]
        if s.problem == "no-answer":
            return [quote("findmnt", "-T", s.path) + "  # the mount that does not answer: remount it (see system.mount.stale)"]
        where = f"declared in the registry's requires for {n.repo}" if n.provenance == "declared" else n.provenance
        return [f"put the {n.spec.get('kind', 'file')} at {s.path} ({where})"]
    if n.kind == "python":
        parts = s.path.split("/")
        if "envs" in parts and len(parts) > parts.index("envs") + 1:
            return [quote("conda", "create", "-y", "-n", parts[parts.index("envs") + 1], "python=3.10")]
        if s.problem == "not-executable":
            return [quote("chmod", "+x", s.path)]
        return [f"install the interpreter at {s.path} ({n.provenance}), or correct the registry's requires"]
    return []


def check_needs(ctx):
    """Each need present, readable and intact in the launch context's caches and paths."""
    out = []
    for s in ctx.need_states().values():
        area = _area(s)
        what = _what(s) if s.status != "error" else f"{s.need.kind} {s.need.spec.get(s.need.kind)}"
        data = {"need": s.need.key, "kind": s.need.kind, "path": s.path, "status": s.status, "problem": s.problem,
                "found_elsewhere": [w for _, w in s.found_elsewhere], "provenance": s.need.provenance,
                "confidence": s.need.confidence, "blocking": s.need.blocking}
        if s.present:
            out.append(Finding(id=f"cache.{area}.present", group="cache", status=OK, title=f"{what} present",
                               detail=s.path, experiments=s.experiments, data=data))
            continue
        if s.status == "error":
            out.append(Finding(id="cache.unresolved", group="cache", status=FAIL, title=f"cannot resolve {what}",
                               detail=s.detail, experiments=s.experiments, data=data,
                               fix=(f"correct the need in {ctx.registry.path}",)))
            continue
        if s.status == UNREADABLE and ctx.launch.uid == os.getuid():
            out.append(Finding(
                id="cache.permission", group="cache", status=FAIL, title=f"{what}: the launched process may not read it",
                detail=f"{s.detail}; the launched process runs as {ctx.launch.user}, like this doctor",
                fix=(quote("ls", "-ld", s.path) + "  # then give read access to " + ctx.launch.user,),
                experiments=s.experiments, data=data))
            continue
        if s.status == UNREADABLE:
            out.append(Finding(
                id="cache.unreadable", group="cache", status=WARN, title=f"cannot look for {what}: no permission",
                detail=f"{s.detail}; the launched process runs as {ctx.launch.user} (HOME={ctx.launch.home})",
                fix=(doctor_command(ctx, as_launch_user=True) + "  # look as the launch user",), experiments=(), data=data))
            continue
        detail = s.detail
        if s.found_elsewhere:
            detail += "; present in " + "; ".join(f"{w} ({label})" for label, w in s.found_elsewhere)
        if s.need.provenance != "declared":
            detail += f"; {s.need.provenance}" + ("" if s.need.blocking else " (a candidate: a warning, not a block)")
        allow = getattr(ctx.options, "allow_download", False) and s.status == MISSING and s.need.adapter.downloaded
        out.append(Finding(id=f"cache.{area}.{'missing' if s.status == MISSING else 'broken'}", group="cache",
                           status=WARN if allow or not s.need.blocking else FAIL,
                           title=f"{what} {'missing' if s.status == MISSING else 'broken (' + s.problem + ')'}"
                                 + (f" in {ctx.launch.stores[s.resolved.source]}" if s.resolved is not None else ""),
                           detail=detail, fix=tuple(_fixes(ctx, s)), experiments=s.experiments, data=data))
    return out


def check_leftovers(ctx):
    """Half-finished downloads (`*.incomplete` blobs, `*.partial` checkpoints) left in the caches."""
    left = sorted({p for s in ctx.need_states().values() for f in s.files for p in f.leftovers})
    if not left:
        return None
    return Finding(id="cache.leftovers", group="cache", status=WARN,
                   title=f"{len(left)} interrupted download(s) left in the cache",
                   detail="; ".join(left[:5]), fix=(quote("rm", "-f", *left),), data={"paths": left})


_DEEP_SCRIPT = r"""
import sys
kind, name, extra = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "timm":
    import timm
    timm.create_model(name, pretrained=True)
else:
    import torchvision
    torchvision.models.get_model(name, weights=extra)
print("LOADED")
"""


def _interpreter_for(ctx, s: NeedState) -> str:
    """The interpreter the experiments needing `s` run with (their side's python need), else ours."""
    for e in ctx.experiments:
        if e.id not in s.experiments:
            continue
        for side in e.sides:
            if any(n.key == s.need.key for n in side.needs):
                py = next((n for n in side.needs if n.kind == "python"), None)
                if py is not None:
                    return py.path_for(ctx.launch.home)
    return sys.executable


def check_deep_load(ctx):
    """With --deep: load each timm/torchvision model offline with the repo's interpreter, in a subprocess."""
    if not ctx.options.deep:
        return None
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from core.secrets import mask_text

    jobs = []
    for s in ctx.need_states().values():
        n = s.need
        if n.kind not in ("timm", "torchvision") or not s.present:
            continue
        python = _interpreter_for(ctx, s)
        name = n.spec[n.kind] + (f".{n.spec['tag']}" if n.kind == "timm" and n.spec.get("tag") else "")
        extra = n.spec.get("weights") or ("IMAGENET1K_V1" if n.spec.get("pretrained") else "DEFAULT")
        jobs.append((s, [python, "-c", _DEEP_SCRIPT, n.kind, name, extra]))
    env = dict(ctx.launch.env, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.setdefault("HOME", ctx.launch.home)
    timeout = max(60.0, ctx.options.timeout * 20)

    def run(job):
        s, argv = job
        try:
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=s.need.repo_dir
                               if os.path.isdir(s.need.repo_dir) else None)
            ok, tail = p.returncode == 0 and "LOADED" in p.stdout, (p.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"no answer within {timeout:.0f} s"
        except OSError as e:
            ok, tail = False, f"cannot start {argv[0]}: {e.strerror}"
        what = _what(s)
        if ok:
            return Finding(id="cache.deep.loaded", group="cache", status=OK, title=f"{what} loads offline",
                           experiments=s.experiments, data={"need": s.need.key, "python": argv[0]})
        return Finding(id="cache.deep.load-failed", group="cache", status=FAIL, title=f"{what} does not load offline",
                       detail=mask_text(tail, env), experiments=s.experiments,
                       fix=(quote(argv[0], "-c", f"import {s.need.kind}") + "  # check the interpreter, then re-run with --deep -v",),
                       data={"need": s.need.key, "python": argv[0]})

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, jobs))
