"""Launch contexts: what the experiment process will really get (environment, HOME, user, caches).

Where the launched process looks for things is computed by the need adapters (core.needs: each
kind's cache folder and the variables that move it) and by core.envpath / core.sudoenv (paths and
sudo's environment rules), all evaluated on an arbitrary environment and HOME instead of this
process's, so that the doctor can answer "where will the launched process look?" without
starting it. Their names are re-exported here for callers that knew them as launch functions.
"""
from __future__ import annotations

import os
import pwd
from typing import Dict, Mapping, Optional, Tuple

from core import sudo
from core.envpath import expanduser, expandvars, which  # noqa: F401 - re-exported
from core.model import LaunchContext
from core.needs import store_dirs
from core.needs.hf import hf_cache_dir, is_offline  # noqa: F401 - re-exported
from core.needs.torchvision import torch_hub_dir  # noqa: F401 - re-exported
from core.sudoenv import (SECURE_PATH, SETUID_STRIPPED, SUDO_ENV_CHECK, SUDO_ENV_DELETE,  # noqa: F401 - re-exported
                          SUDO_ENV_DELETE_PREFIXES, SUDO_ENV_KEEP, ZONEINFO, LaunchSpec, LaunchSpecError, parse_launch,
                          simulate_sudo)

# Variables that decide where ML runs look for things; reported by the env group.
RELEVANT_VARS = ("HOME", "PATH", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_ETAG_TIMEOUT",
                 "TORCH_HOME", "XDG_CACHE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CUDA_VISIBLE_DEVICES",
                 "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH")


def invoking_environment(pid: Optional[int] = None) -> Dict[str, str]:
    """When we run under sudo: the environment the invoking shell handed to `sudo` (read via /proc).

    Walks up the parent chain from `pid` (default: this process). The best source is the outermost
    `sudo` process still owned (real uid) by SUDO_UID: its environment is exactly what the shell
    exported, including variables exported after the shell started (a shell's own /proc environ
    only shows what it started with). Else the first ancestor of that uid that is not sudo.
    Returns {} when nothing can be read (not root, no SUDO_UID, /proc hidden).
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return {}
    try:
        me = psutil.Process(pid) if pid else psutil.Process()
        sudo_uid = me.environ().get("SUDO_UID") if pid else os.environ.get("SUDO_UID")
    except (psutil.Error, OSError):
        return {}
    if sudo_uid is None or not sudo_uid.isdigit():
        return {}
    uid = int(sudo_uid)
    sudo_proc, shell_proc = None, None
    try:
        proc = me.parent()
        while proc is not None and proc.pid > 1:
            if proc.uids().real == uid:
                if proc.name() == "sudo":
                    sudo_proc = proc  # keep walking: the outermost sudo is the one the shell started
                elif shell_proc is None:
                    shell_proc = proc
                    break
            proc = proc.parent()
    except (psutil.Error, OSError):
        pass
    for proc in (sudo_proc, shell_proc):
        if proc is None:
            continue
        try:
            return dict(proc.environ())
        except (psutil.Error, OSError):
            continue
    return {}


def _pw(uid: int = None, name: str = None):
    try:
        return pwd.getpwnam(name) if name is not None else pwd.getpwuid(uid)
    except KeyError:
        return None


REFUSED_NOTE = "sudo refuses this launch: "


def ask_sudo_default() -> bool:
    """False when MUTATION_DOCTOR_ASK_SUDO is 0/no/false/off: never run sudo, simulate it."""
    return os.environ.get("MUTATION_DOCTOR_ASK_SUDO", "1").strip().lower() not in ("0", "no", "false", "off")


def build_launch_context(how: str = "current", environ: Optional[Mapping[str, str]] = None,
                         cwd: Optional[str] = None, ask_sudo: Optional[bool] = None,
                         sudo_user: Optional[str] = None, sudo_timeout: float = 2.0) -> LaunchContext:
    """The launch context for `--launch how`, from this process's environment (or `environ`).

    `current` under sudo (root with SUDO_USER set): the launch context is this process's own and
    the invoking user is SUDO_USER, with the environment that user's shell handed to sudo
    recovered from /proc where readable.

    A sudo launch is asked from the real sudo first (`sudo -n`, `sudo_timeout` per call; disabled
    with `ask_sudo=False` or MUTATION_DOCTOR_ASK_SUDO=0): source "real". Where sudo cannot answer
    without a password, sudo's behaviour is simulated (with the Defaults `sudo -n -l` listed, when
    it did): source "simulated", and the notes say why. As root, the question is asked as the
    invoking user (`sudo_user`, else SUDO_USER), with that user's environment.
    """
    spec = parse_launch(how)
    env = dict(os.environ if environ is None else environ)
    cwd = cwd or os.getcwd()
    me = _pw(os.getuid())
    my_name = me.pw_name if me else str(os.getuid())
    my_home = env.get("HOME") or (me.pw_dir if me else "/")
    under_sudo = os.getuid() == 0 and "SUDO_USER" in env
    if spec.mode == "current":
        if under_sudo:
            inv = _pw(name=env["SUDO_USER"])
            inv_env = invoking_environment() if environ is None else {}
            notes = ["the doctor runs under sudo: the launch context is its own environment"]
            if environ is None and not inv_env:
                notes.append("the invoking shell's environment could not be read from /proc")
            return LaunchContext(
                how="sudo (this process)", source="self", env=env, user=my_name, uid=os.getuid(),
                gid=os.getgid(), home=my_home, cwd=cwd, invoking_user=env["SUDO_USER"],
                invoking_uid=int(env.get("SUDO_UID", inv.pw_uid if inv else -1)),
                invoking_home=(inv_env.get("HOME") or (inv.pw_dir if inv else "")), invoking_env=inv_env,
                notes=tuple(notes))
        return LaunchContext(how="current", source="self", env=env, user=my_name, uid=os.getuid(),
                             gid=os.getgid(), home=my_home, cwd=cwd, invoking_user=my_name,
                             invoking_uid=os.getuid(), invoking_home=my_home, invoking_env=env)
    # who types the sudo command, and with which environment
    caller, inv_env, asker = me, env, None
    if os.getuid() == 0 and (sudo_user or under_sudo):
        name = sudo_user or env["SUDO_USER"]
        caller = _pw(name=name) or me
        asker = name
        if sudo_user is None and environ is None:
            inv_env = invoking_environment() or _user_env(env, caller)
        elif sudo_user is None:
            inv_env = _user_env(env, caller)
    root = _pw(0)
    caller = caller or root
    notes = []
    answer = None
    if ask_sudo if ask_sudo is not None else ask_sudo_default():
        answer = sudo.ask(spec, inv_env, user=asker, timeout=sudo_timeout)
    if answer is not None and answer.ok:
        launched = dict(answer.env)
        source = "real"
        shown = answer.argv[answer.argv.index("--") + 1:] if "--" in answer.argv else answer.argv
        notes.append(f"asked the real sudo as {answer.as_user}: " + " ".join(shown))
    else:
        launched = simulate_sudo(inv_env, spec, caller, root, defaults=answer.defaults if answer else None)
        source = "simulated"
        if answer is None:
            notes.append(f"simulated from sudo's defaults (env_reset, secure_path={SECURE_PATH}); the real sudo was not asked")
        elif answer.defaults is not None:
            notes.append(f"simulated with the Defaults `sudo -n -l` listed; the real sudo did not run env: {answer.reason}")
        else:
            notes.append(f"simulated from sudo's defaults (env_reset, secure_path={SECURE_PATH}); "
                         f"the real sudo could not be asked: {answer.reason}")
        if answer is not None and answer.refused:
            notes.append(REFUSED_NOTE + answer.reason)
    inv_home = inv_env.get("HOME") or caller.pw_dir
    return LaunchContext(
        how=spec.label, source=source, env=launched, user=root.pw_name, uid=0, gid=0,
        home=launched.get("HOME", root.pw_dir), cwd=cwd, invoking_user=caller.pw_name, invoking_uid=caller.pw_uid,
        invoking_home=inv_home, invoking_env=inv_env, notes=tuple(notes))


def _user_env(env: Mapping[str, str], user: pwd.struct_passwd) -> Dict[str, str]:
    """Our environment as `user` would have it when it cannot be read: HOME, USER, LOGNAME theirs."""
    out = {k: v for k, v in env.items() if not k.startswith("SUDO_")}
    out.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell)
    return out


def other_cache_locations(ctx: LaunchContext) -> Tuple[Tuple[str, Mapping[str, str]], ...]:
    """Other places the same files may already be: (label, store folders) of the invoking user's
    environment and this process's, and the launch user's own home (under `sudo -E` HOME stays the
    invoking user's while root's own caches may hold the files), excluding the launch context's own."""
    seen = {tuple(sorted(ctx.stores.items()))}
    out = []
    target = _pw(ctx.uid)
    candidates = [("invoking user " + ctx.invoking_user, ctx.invoking_env or {}, ctx.invoking_home),
                  ("this shell", os.environ, os.environ.get("HOME", "")),
                  (f"{ctx.invoking_user}'s default", {}, ctx.invoking_home),
                  (f"{ctx.user}'s own home", {}, target.pw_dir if target else "")]
    for label, env, home in candidates:
        if not home:
            continue
        stores = store_dirs(env, home)
        if tuple(sorted(stores.items())) not in seen:
            seen.add(tuple(sorted(stores.items())))
            out.append((label, stores))
    return tuple(out)
