"""Launch contexts: what the experiment process will really get (environment, HOME, user, caches).

The cache-directory functions reproduce huggingface_hub's and torch.hub's own precedence, evaluated
on an arbitrary environment and HOME instead of this process's, so that the doctor can answer
"where will the launched process look?" without starting it.
"""
from __future__ import annotations

import os
import pwd
import shlex
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from doctor.model import LaunchContext

_TRUE = {"1", "ON", "YES", "TRUE"}

# sudo's defaults (Debian/Ubuntu sudoers): env_reset keeps only these, PATH becomes secure_path.
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUDO_ENV_RESET_KEEP = ("TERM", "DISPLAY", "XAUTHORITY", "XAUTHORIZATION", "COLORS", "LS_COLORS",
                       "HOSTNAME", "KRB5CCNAME", "PS1", "PS2", "TZ", "LANG", "LANGUAGE", "LC_ALL",
                       "LINGUAS", "XDG_CURRENT_DESKTOP", "PATH")
# sudo removes these even when the environment is preserved (its built-in env_delete list).
SUDO_ENV_DELETE_PREFIXES = ("LD_", "_RLD", "DYLD_")
SUDO_ENV_DELETE = ("IFS", "CDPATH", "LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES", "NLSPATH",
                   "PATH_LOCALE", "TERMINFO", "TERMINFO_DIRS", "TERMPATH", "TERMCAP", "ENV",
                   "BASH_ENV", "PS4", "GLOBIGNORE", "BASHOPTS", "SHELLOPTS", "JAVA_TOOL_OPTIONS",
                   "PERLIO_DEBUG", "PERLLIB", "PERL5LIB", "PERL5OPT", "PERL5DB", "FPATH", "NULLCMD",
                   "READNULLCMD", "ZDOTDIR", "TMPPREFIX", "PYTHONHOME", "PYTHONPATH",
                   "PYTHONINSPECT", "PYTHONUSERBASE", "RUBYLIB", "RUBYOPT")

# Variables that decide where ML runs look for things; reported by the env group.
RELEVANT_VARS = ("HOME", "PATH", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_ETAG_TIMEOUT",
                 "TORCH_HOME", "XDG_CACHE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CUDA_VISIBLE_DEVICES",
                 "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH")


class LaunchSpecError(ValueError):
    """A `--launch` value that cannot be understood."""


def _expand(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.expandvars(path)


def hf_cache_dir(env: Mapping[str, str], home: str) -> str:
    """The Hugging Face Hub cache the process with `env` and `home` will use.

    HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > $HF_HOME/hub > $XDG_CACHE_HOME/huggingface/hub >
    ~/.cache/huggingface/hub, exactly as huggingface_hub.constants computes it at import time.
    """
    default_home = os.path.join(home, ".cache")
    hf_home = _expand(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", default_home), "huggingface")), home)
    legacy = env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return os.path.abspath(_expand(env.get("HF_HUB_CACHE", legacy), home))


def torch_hub_dir(env: Mapping[str, str], home: str) -> str:
    """torch.hub's directory: $TORCH_HOME/hub > $XDG_CACHE_HOME/torch/hub > ~/.cache/torch/hub."""
    torch_home = _expand(env.get("TORCH_HOME", os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "torch")), home)
    return os.path.abspath(os.path.join(torch_home, "hub"))


def is_offline(env: Mapping[str, str]) -> bool:
    """huggingface_hub's offline switch: HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE, truthy."""
    value = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")
    return bool(value) and value.upper() in _TRUE


def which(cmd: str, env: Mapping[str, str]) -> Optional[str]:
    """`cmd` resolved on the PATH of `env` (not ours)."""
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) else None
    for d in env.get("PATH", "").split(os.pathsep):
        p = os.path.join(d or ".", cmd)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


@dataclass(frozen=True)
class LaunchSpec:
    """A parsed `--launch` value: `current`, `sudo`, `sudo -E` or `sudo --preserve-env=A,B`."""

    mode: str  # current | sudo | sudo-E | preserve
    preserve: Tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.mode == "preserve":
            return "sudo --preserve-env=" + ",".join(self.preserve)
        return {"sudo-E": "sudo -E"}.get(self.mode, self.mode)

    @property
    def argv_prefix(self) -> Tuple[str, ...]:
        """The argv words that start a command this way (empty for `current`)."""
        if self.mode == "current":
            return ()
        if self.mode == "sudo-E":
            return ("sudo", "-E")
        if self.mode == "preserve":
            return ("sudo", "--preserve-env=" + ",".join(self.preserve))
        return ("sudo",)


def parse_launch(text: str) -> LaunchSpec:
    """Parse a `--launch` value; raises LaunchSpecError with a one-line reason."""
    words = shlex.split(text or "current")
    if words in (["current"], ["none"], []):
        return LaunchSpec("current")
    if words[0] != "sudo":
        raise LaunchSpecError(f"--launch {text!r}: expected current, sudo, sudo-E or \"sudo --preserve-env=A,B\"")
    if words == ["sudo"]:
        return LaunchSpec("sudo")
    if words in (["sudo-E"], ["sudo", "-E"], ["sudo", "--preserve-env"]):
        return LaunchSpec("sudo-E")
    if words[0] == "sudo-E" and len(words) == 1:
        return LaunchSpec("sudo-E")
    names = []
    for w in words[1:]:
        if w.startswith("--preserve-env="):
            names += [n for n in w.split("=", 1)[1].split(",") if n]
        else:
            raise LaunchSpecError(f"--launch {text!r}: unsupported sudo option {w!r}")
    return LaunchSpec("preserve", tuple(names))


def _sudo_deleted(name: str) -> bool:
    return name in SUDO_ENV_DELETE or name.startswith(SUDO_ENV_DELETE_PREFIXES)


def simulate_sudo(env: Mapping[str, str], spec: LaunchSpec, caller: pwd.struct_passwd,
                  target: pwd.struct_passwd, command: str = "") -> Dict[str, str]:
    """The environment sudo's defaults give the command (env_reset, secure_path, SUDO_* added).

    `sudo -E` keeps everything but sudo's env_delete list, and PATH still becomes secure_path;
    plain `sudo` keeps a few terminal variables and resets HOME, USER, LOGNAME, SHELL to the
    target; `--preserve-env=A,B` is plain `sudo` plus A and B.
    """
    if spec.mode == "sudo-E":
        out = {k: v for k, v in env.items() if not _sudo_deleted(k)}
    else:
        keep = set(SUDO_ENV_RESET_KEEP) | set(spec.preserve)
        out = {k: v for k, v in env.items() if k in keep and not _sudo_deleted(k)}
        out.update(HOME=target.pw_dir, SHELL=target.pw_shell, MAIL=f"/var/mail/{target.pw_name}")
    out.update(PATH=SECURE_PATH, USER=target.pw_name, LOGNAME=target.pw_name,
               SUDO_USER=caller.pw_name, SUDO_UID=str(caller.pw_uid), SUDO_GID=str(caller.pw_gid))
    if command:
        out["SUDO_COMMAND"] = command
    if spec.mode == "preserve" and "HOME" in spec.preserve and "HOME" in env:
        out["HOME"] = env["HOME"]
    if spec.mode == "sudo-E":
        out.setdefault("HOME", env.get("HOME", target.pw_dir))
    return out


def invoking_environment() -> Dict[str, str]:
    """When we run under sudo: the environment of the shell that typed `sudo` (read via /proc).

    Walks up the parent chain to the first process not owned by root whose uid is SUDO_UID.
    Returns {} when it cannot be read.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return {}
    sudo_uid = os.environ.get("SUDO_UID")
    if sudo_uid is None:
        return {}
    try:
        proc = psutil.Process().parent()
        while proc is not None:
            if proc.uids().real == int(sudo_uid) and proc.name() != "sudo":
                return dict(proc.environ())
            proc = proc.parent()
    except (psutil.Error, OSError, ValueError):
        return {}
    return {}


def _pw(uid: int = None, name: str = None):
    try:
        return pwd.getpwnam(name) if name is not None else pwd.getpwuid(uid)
    except KeyError:
        return None


def build_launch_context(how: str = "current", environ: Optional[Mapping[str, str]] = None,
                         cwd: Optional[str] = None) -> LaunchContext:
    """The launch context for `--launch how`, from this process's environment (or `environ`).

    When this process itself runs under sudo (root with SUDO_USER set) and `how` is `current`,
    the launch context is this process's own and the invoking user is SUDO_USER, with that
    user's shell environment recovered from /proc where readable.
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
            return LaunchContext(
                how="sudo (this process)", source="self", env=env, user=my_name, uid=os.getuid(),
                gid=os.getgid(), home=my_home, cwd=cwd, invoking_user=env["SUDO_USER"],
                invoking_uid=int(env.get("SUDO_UID", inv.pw_uid if inv else -1)),
                invoking_home=(inv_env.get("HOME") or (inv.pw_dir if inv else "")), invoking_env=inv_env,
                notes=("the doctor runs under sudo: the launch context is its own environment",))
        return LaunchContext(how="current", source="self", env=env, user=my_name, uid=os.getuid(),
                             gid=os.getgid(), home=my_home, cwd=cwd, invoking_user=my_name,
                             invoking_uid=os.getuid(), invoking_home=my_home, invoking_env=env)
    root = _pw(0)
    caller = me if me else root
    launched = simulate_sudo(env, spec, caller, root)
    return LaunchContext(
        how=spec.label, source="simulated", env=launched, user=root.pw_name, uid=0, gid=0,
        home=launched.get("HOME", root.pw_dir), cwd=cwd, invoking_user=my_name, invoking_uid=os.getuid(),
        invoking_home=my_home, invoking_env=env,
        notes=(f"simulated from sudo's defaults (env_reset, secure_path={SECURE_PATH})",))


def other_cache_locations(ctx: LaunchContext) -> Tuple[Tuple[str, str, str], ...]:
    """Other places the same files may already be: (label, hf cache, torch hub) of the invoking
    user's environment and this process's, excluding the launch context's own."""
    seen = {(ctx.hf_cache, ctx.torch_hub)}
    out = []
    candidates = [("invoking user " + ctx.invoking_user, ctx.invoking_env or {}, ctx.invoking_home)]
    if ctx.invoking_home and not ctx.invoking_env:
        candidates.append((f"{ctx.invoking_user}'s default", {}, ctx.invoking_home))
    candidates.append(("this shell", os.environ, os.environ.get("HOME", "")))
    if ctx.invoking_home:
        candidates.append((f"{ctx.invoking_user}'s default", {}, ctx.invoking_home))
    for label, env, home in candidates:
        if not home:
            continue
        pair = (hf_cache_dir(env, home), torch_hub_dir(env, home))
        if pair not in seen:
            seen.add(pair)
            out.append((label,) + pair)
    return tuple(out)
