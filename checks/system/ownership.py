"""Files left root-owned by earlier sudo runs in the folders the batch writes.
"""
from __future__ import annotations

import os
import pwd
import stat
from typing import List, Sequence, Tuple

from checks.system.common import _all_ids, _finding, _q, _writable_by
from core.model import FAIL, OK, WARN


OWNERSHIP_LIMIT = 20_000    # entries looked at per folder


def _walk_root_owned(root: str, uid: int, gids: Sequence[int], limit: int) -> Tuple[int, List[str], int, bool]:
    """(root-owned entries `uid` may not write, examples, entries seen, stopped early)."""
    try:
        st = os.lstat(root)
    except OSError:
        return 0, [], 0, False
    stuck = st.st_uid == 0 and (stat.S_ISLNK(st.st_mode) or not _writable_by(st, uid, gids))
    count, examples, seen, stack = int(stuck), [root] if stuck else [], 1, [root]
    if not stat.S_ISDIR(st.st_mode):
        return count, examples, seen, False
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for entry in it:
                seen += 1
                if seen > limit:
                    return count, examples, seen - 1, True
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if est.st_uid == 0 and (stat.S_ISLNK(est.st_mode) or not _writable_by(est, uid, gids)):
                    count += 1
                    if len(examples) < 5:
                        examples.append(entry.path)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
    return count, examples, seen, False


def _ownership_roots(ctx) -> List[Tuple[str, str]]:
    """(label, folder) the invoking user should own: results, the plan's repos, and their caches."""
    from core.launch import hf_cache_dir, torch_hub_dir

    roots = [("results", os.path.join(ctx.options.project_root, "results"))]
    repos = list(dict.fromkeys(s.repo for e in ctx.plan.experiments for s in e.sides)) or list(ctx.registry.repos)
    roots += [(f"repo {r}", ctx.registry.repos[r].path) for r in repos if r in ctx.registry.repos]
    home = ctx.launch.invoking_home
    caches = [ctx.launch.hf_cache, ctx.launch.torch_hub]
    if home:
        inv_env = ctx.launch.invoking_env or {}
        caches += [hf_cache_dir(inv_env, home), torch_hub_dir(inv_env, home)]
    for c in dict.fromkeys(os.path.abspath(c) for c in caches):
        if home and (c + "/").startswith(os.path.abspath(home).rstrip("/") + "/"):
            roots.append(("cache", c))
    roots = [(label, os.path.abspath(p)) for label, p in roots if os.path.lexists(p)]
    kept: List[str] = []
    for _, path in sorted(roots, key=lambda r: len(r[1])):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    out = []
    for label, path in roots:  # the registry's order; a folder inside another is walked with it
        if path in kept:
            kept.remove(path)
            out.append((label, path))
    return out


def check_ownership(ctx):
    """Entries in results, repos and the user's caches left root-owned by sudo runs: the invoking
    user cannot change or delete them."""
    uid = ctx.launch.invoking_uid
    if uid is None or uid <= 0:
        return None
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    import grp

    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    gids = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    out, looked, partial = [], [], []
    for label, root in _ownership_roots(ctx):
        count, examples, seen, stopped = _walk_root_owned(root, uid, gids, OWNERSHIP_LIMIT)
        looked.append(root)
        if stopped:
            partial.append(root)
        if not count:
            continue
        if label == "results":
            ids = _all_ids(ctx)
        elif label.startswith("repo "):
            repo = label[5:]
            ids = tuple(e.id for e in ctx.plan.experiments if any(s.repo == repo for s in e.sides))
        else:
            ids = ()
        # The launch user itself is blocked only when it is the invoking user (no sudo) and not root.
        status = FAIL if ctx.launch.uid == uid and label != "cache" else WARN
        more = f"; stopped after {OWNERSHIP_LIMIT} entries, there may be more" if stopped else ""
        out.append(_finding("system.ownership.root-owned", status,
                            f"{count}{'+' if stopped else ''} entr{'y' if count == 1 else 'ies'} in {root} "
                            f"({label}) are root-owned: {pw.pw_name} cannot change or delete them",
                            "e.g. " + ", ".join(examples) + more,
                            fix=(_q("sudo", "chown", "-R", f"{pw.pw_name}:{group}", root),),
                            experiments=ids if status == FAIL else (), root=root, count=count,
                            examples=examples, seen=seen, truncated=stopped, user=pw.pw_name))
    if not out and looked:
        more = f"; stopped after {OWNERSHIP_LIMIT} entries in {', '.join(partial)}" if partial else ""
        return _finding("system.ownership.ok", OK, f"no root-owned entries for {pw.pw_name} in {len(looked)} folder(s)",
                        ", ".join(looked) + more, roots=looked, truncated=partial)
    return out
