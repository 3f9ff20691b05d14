"""`mutation-doctor prefetch`: download what the plan needs into the launch context's caches.

Downloads go through huggingface_hub (HF_ENDPOINT of the launch environment respected) and
torch.hub, each in a subprocess that gets the launch context's cache locations explicitly, so the
files land exactly where the launched process will look. Files created as root on behalf of a
sudo user: when that user could change any folder on the way to the cache (their home, a folder
they own or may write to), the download runs as that user, so nothing they planted there (a link
to a file of root's, a half-downloaded `.incomplete` pointing elsewhere) is ever written through
as root; what root itself created is then given back by inode (core.ownership).
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from core.context import NeedState
from core.needs import DOWNLOADED_KINDS

_SCRIPT = r"""
import json, sys
job = json.loads(sys.argv[1])
try:
    if job["source"] == "hf":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        path = None
        for name in job["files"]:
            try:
                path = hf_hub_download(job["repo_id"], name, revision=job["revision"], cache_dir=job["cache"])
            except EntryNotFoundError:
                if not job["any_of"] or name == job["files"][-1]:
                    raise
                continue
            if job["any_of"]:
                break
    else:
        import os, torch.hub
        path = os.path.join(job["cache"], "checkpoints", job["filename"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(job["url"], path, hash_prefix=job["hash_prefix"] or None, progress=False)
    print(json.dumps({"ok": True, "path": path}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}))
    sys.exit(1)
"""


@dataclass(frozen=True)
class Download:
    """The outcome of fetching one need: ok or not, the path written, and the last error line."""

    key: str
    ok: bool
    path: str = ""
    error: str = ""
    seconds: float = 0.0


def _job(state: NeedState, hf_cache: str, torch_hub: str, mirror: Optional[str]) -> dict:
    """The download job of one need, from its kind's adapter (core.needs)."""
    r = state.resolved
    return state.need.adapter.prefetch_job(r, {"hf": hf_cache, "torchhub": torch_hub}[r.source], mirror)


@dataclass(frozen=True)
class RunAs:
    """The user a download subprocess runs as (instead of root)."""

    uid: int
    gid: int
    name: str

    def popen_args(self) -> dict:
        try:
            groups = os.getgrouplist(self.name, self.gid)
        except (KeyError, OSError):
            groups = []
        return {"user": self.uid, "group": self.gid, "extra_groups": groups, "cwd": "/",
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}}


def user_controls(path: str, uid: int, gids: Sequence[int]) -> bool:
    """True when the user could change something on the way to `path`: one of its existing
    folders (or a link on the way) is theirs, or writable by them."""
    p = os.path.abspath(path)
    while True:
        try:
            st = os.lstat(p)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):  # a link's own mode bits mean nothing
            if st.st_uid == uid:
                return True
            return user_controls(os.path.realpath(p), uid, gids) or user_controls(os.path.dirname(p), uid, gids)
        if st is not None:
            mode = st.st_mode
            if (st.st_uid == uid or mode & 0o002 and not mode & 0o1000
                    or st.st_gid in gids and mode & 0o020 and not mode & 0o1000):
                return True
        if p == "/":
            return False
        p = os.path.dirname(p)


def run_as_for(launch, target: str) -> Optional[RunAs]:
    """Who downloads into `target`: the invoking user when root acts for them and they could change
    the way to it, else None (this process's user)."""
    if os.getuid() != 0 or launch.invoking_uid in (0, -1, None):
        return None
    import pwd

    try:
        pw = pwd.getpwuid(launch.invoking_uid)
    except KeyError:
        return None
    try:
        gids = os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        gids = [pw.pw_gid]
    return RunAs(pw.pw_uid, pw.pw_gid, pw.pw_name) if user_controls(target, pw.pw_uid, gids) else None


def fetch(state: NeedState, env: dict, hf_cache: str, torch_hub: str, timeout: float,
          mirror: Optional[str] = None, run_as: Optional[RunAs] = None) -> Download:
    """Download one need in a subprocess with the launch environment (offline switches removed).

    With `run_as`, root downloads into a private staging folder of its own and the files are
    then copied into the caches by `run_as` (cp -R, links copied as links): root never writes
    into a folder that user could have prepared."""
    if run_as is None:
        return _download(state, env, hf_cache, torch_hub, timeout, mirror)
    import shutil
    import tempfile

    stage = tempfile.mkdtemp(prefix="mutation-prefetch-")
    try:
        s_hf, s_torch = os.path.join(stage, "hf"), os.path.join(stage, "torch", "hub")
        d = _download(state, env, s_hf, s_torch, timeout, mirror)
        if not d.ok:
            return d
        src, dst = (s_hf, hf_cache) if d.path.startswith(s_hf + "/") else (s_torch, torch_hub)
        for p in (stage, *(os.path.join(r, n) for r, dirs, _ in os.walk(stage) for n in dirs)):
            os.chmod(p, 0o755)
        err = _as_user(run_as, [["mkdir", "-p", dst], ["cp", "-R", "-P", "--preserve=timestamps", src + "/.", dst]])
        if err:
            return Download(state.need.key, False, error=f"copying into {dst} as {run_as.name}: {err}", seconds=d.seconds)
        return Download(state.need.key, True, path=dst + d.path[len(src):], seconds=d.seconds)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _as_user(run_as: RunAs, commands: List[List[str]]) -> str:
    """Run each argv as `run_as`; the first failure's last line, or ""."""
    for argv in commands:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                               **run_as.popen_args())
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        if p.returncode != 0:
            return ([ln for ln in p.stderr.splitlines() if ln.strip()] or [f"{argv[0]} exit {p.returncode}"])[-1]
    return ""


def _download(state: NeedState, env: dict, hf_cache: str, torch_hub: str, timeout: float,
              mirror: Optional[str]) -> Download:
    from core.secrets import mask_text

    job = _job(state, hf_cache, torch_hub, mirror)
    child_env = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    child_env["HF_HUB_CACHE"] = hf_cache
    child_env["TORCH_HOME"] = os.path.dirname(torch_hub)
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(job)], env=child_env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Download(state.need.key, False, error=f"no answer within {timeout:.0f} s", seconds=time.monotonic() - t0)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else {"ok": False}
    if p.returncode == 0 and out.get("ok"):
        return Download(state.need.key, True, path=out["path"], seconds=time.monotonic() - t0)
    err = out.get("error") or ([ln for ln in p.stderr.splitlines() if ln.strip()] or [f"exit {p.returncode}"])[-1]
    return Download(state.need.key, False, error=mask_text(err, env), seconds=time.monotonic() - t0)


def _writable(path: str) -> bool:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return os.access(path or "/", os.W_OK)


def main(argv: List[str]) -> int:
    from rich.console import Console
    from rich.markup import escape

    from core.errors import UsageError
    from doctor.operations import add_common_args, add_deprecated_timeout, make_context

    p = argparse.ArgumentParser(prog="mutation-doctor prefetch",
                                description="Download missing weights into the caches the launched process will use.")
    add_common_args(p)
    add_deprecated_timeout(p)
    p.add_argument("--download-timeout", type=float, default=1800.0, metavar="S",
                   help="give up on one download after S seconds (default 1800)")
    p.add_argument("--torch-mirror", metavar="URL", default=os.environ.get("MUTATION_TORCH_MIRROR"),
                   help="base URL serving torch hub files instead of https://download.pytorch.org")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = p.parse_args(argv)
    ctx = make_context(args)
    console = Console(stderr=args.json, highlight=False)
    launch = ctx.launch
    todo = [s for s in ctx.need_states().values()
            if s.need.kind in DOWNLOADED_KINDS and s.resolved is not None and s.present is not True]
    if not todo:
        console.print(f"[green]✓[/green] everything the plan needs is already in {escape(launch.hf_cache)} / "
                      f"{escape(launch.torch_hub)}")
        if args.json:
            print(json.dumps({"format_version": 1, "downloads": [], "missing_after": []}))
        return 0
    for target in {launch.hf_cache if s.resolved.source == "hf" else launch.torch_hub for s in todo}:
        if not _writable(target):
            raise UsageError(f"cannot write {target} (it belongs to {launch.user}); run: sudo "
                             f"{os.path.abspath(sys.argv[0])} prefetch {' '.join(argv)}")
    started, before = time.time(), _snapshot(launch)
    results: List[Download] = []
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False, disable=args.json) as progress:
        task = progress.add_task("prefetching", total=len(todo))
        for s in todo:
            progress.update(task, description=f"fetching {s.need.key}")
            target = launch.hf_cache if s.resolved.source == "hf" else launch.torch_hub
            d = fetch(s, dict(launch.env), launch.hf_cache, launch.torch_hub, args.download_timeout, args.torch_mirror,
                      run_as=run_as_for(launch, target))
            results.append(d)
            mark = "[green]✓[/green]" if d.ok else "[red]✗[/red]"
            progress.console.print(f"{mark} {escape(s.need.key)} {escape(d.path or d.error)} ({d.seconds:.1f} s)")
            progress.advance(task)
    _give_back(ctx, started, before)
    fresh = make_context(args)  # look again, as the launched process will
    after = [s for s in fresh.need_states().values() if s.need.key in {x.need.key for x in todo} and s.present is not True]
    if args.json:
        print(json.dumps({"format_version": 1,
                          "downloads": [d.__dict__ for d in results],
                          "missing_after": [s.need.key for s in after]}, indent=2))
    else:
        console.print(f"{sum(d.ok for d in results)} of {len(results)} need(s) fetched; "
                      f"{len(after)} still missing" + (": " + ", ".join(s.need.key for s in after) if after else ""))
    return 1 if after else 0


def _home_roots(launch) -> List[str]:
    """The caches of the launch context that lie under the invoking user's home."""
    if os.getuid() != 0 or not launch.invoking_home or launch.invoking_uid in (0, -1):
        return []
    home = launch.invoking_home.rstrip("/") + "/"
    return [p for p in (launch.hf_cache, launch.torch_hub) if p.startswith(home)]


def _snapshot(launch):
    from core.ownership import snapshot

    roots = _home_roots(launch)
    return snapshot(roots) if roots else None


def _give_back(ctx, since: float, before) -> None:
    """Running as root for a sudo user: give back what root itself created under that user's home
    (only inodes that were not there before; never a folder that existed)."""
    launch = ctx.launch
    roots = _home_roots(launch)
    if not roots:
        return
    import pwd

    from core.ownership import give_back

    gid = pwd.getpwuid(launch.invoking_uid).pw_gid
    give_back(roots, launch.invoking_uid, gid, since=since, before=before, within=launch.invoking_home)
