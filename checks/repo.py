"""The `settings` group, repo check: each repo folder and its train script, as the launch will run them.

A missing repo folder, a train script that is missing, a folder, not executable by the launched
process, or empty would fail at the first second of the run (or "pass" having trained nothing):
each blocks the experiments of that repo, with the command that fixes it.
"""
from __future__ import annotations

import os
import stat
from typing import Dict, List, Optional, Tuple

from core.commands import quote
from core.hubcache import stat_within
from core.model import FAIL, Finding


def _problem(repo_dir: str, script: str, uid: int) -> Optional[Tuple[str, str, Tuple[str, ...]]]:
    """(id suffix, title, fixes) of what is wrong with a repo's folder and train script, or None."""
    try:
        st = stat_within(repo_dir)
    except TimeoutError:
        return "repo.unreachable", f"repo folder {repo_dir} does not answer (a dead network mount?)", (
            f"ls {quote(repo_dir)}",)
    except OSError as e:
        return "repo.missing", f"repo folder {repo_dir} is missing ({e.strerror})", (
            f"git clone <the repo's url> {quote(repo_dir)}",
            "or correct its \"path\" in the model registry")
    if not stat.S_ISDIR(st.st_mode):
        return "repo.missing", f"repo folder {repo_dir} is not a folder", (f"ls -ld {quote(repo_dir)}",)
    path = script if os.path.isabs(script) else os.path.join(repo_dir, script)
    try:
        st = stat_within(path)
    except (OSError, TimeoutError) as e:
        return "train-script.missing", f"train script {path} is missing ({getattr(e, 'strerror', None) or 'no answer'})", (
            f"ls {quote(repo_dir)}", "or correct its \"train_script\" in the model registry")
    if stat.S_ISDIR(st.st_mode):
        return "train-script.folder", f"train script {path} is a folder, not a script", (
            "set \"train_script\" in the model registry to the script inside it",)
    if not stat.S_ISREG(st.st_mode):
        return "train-script.missing", f"train script {path} is not a regular file", (f"ls -l {quote(path)}",)
    if st.st_size == 0:
        return "train-script.empty", f"train script {path} is empty: the run would do nothing and exit 0", (
            f"git -C {quote(repo_dir)} checkout -- {quote(script)}",)
    runnable = (st.st_mode & 0o111) if uid == 0 else os.access(path, os.X_OK) if uid == os.getuid() else (
        st.st_mode & (0o100 if st.st_uid == uid else 0o011))
    if not runnable:
        return "train-script.not-executable", (f"train script {path} is not executable: mutation.py gets "
                                               "\"Permission denied\""), (f"chmod +x {quote(path)}",)
    return None


def check_repos(ctx) -> List[Finding]:
    """One finding per repo whose folder or train script cannot run, naming the experiments it blocks
    (for a settings file's plan; the registry alone names repos that may never be checked out here)."""
    if not ctx.plan.file:
        return []
    by_repo: Dict[str, List[str]] = {}
    for e in ctx.plan.experiments:
        for side in (e.foreground, e.background):
            if side is not None and side.repo in ctx.registry.repos:
                ids = by_repo.setdefault(side.repo, [])
                if e.id not in ids:
                    ids.append(e.id)
    out = []
    for repo, ids in by_repo.items():
        spec = ctx.registry.repos[repo]
        found = _problem(spec.path, spec.train_script, ctx.launch.uid)
        if found is None:
            continue
        suffix, title, fixes = found
        out.append(Finding(id=f"settings.{suffix}", group="settings", status=FAIL, title=f"{repo}: {title}",
                           detail=f"registry {ctx.registry.path}: models.{repo}", fix=fixes, experiments=tuple(ids),
                           data={"repo": repo, "path": spec.path, "train_script": spec.train_script}))
    return out
