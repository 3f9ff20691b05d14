"""Launch contexts: what the experiment process will really get (environment, HOME, user, caches).

The cache-directory functions reproduce huggingface_hub's and torch.hub's own precedence, evaluated
on an arbitrary environment and HOME instead of this process's, so that the doctor can answer
"where will the launched process look?" without starting it.
"""
from __future__ import annotations

import fnmatch
import os
import pwd
import re
import shlex
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from core.model import LaunchContext

_TRUE = {"1", "ON", "YES", "TRUE"}

# sudo's defaults as Debian's sudo 1.9 prints them with `sudo -V` (env_reset on, secure_path set by
# /etc/sudoers). env_keep: kept as they are; env_check: kept when their value holds no '/' or '%'
# (TZ: a zoneinfo name or path); env_delete: removed even under `sudo -E`.
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUDO_ENV_KEEP = ("XDG_CURRENT_DESKTOP", "XAUTHORIZATION", "XAUTHORITY", "PS2", "PS1", "PATH", "LS_COLORS",
                 "KRB5CCNAME", "HOSTNAME", "DPKG_COLORS", "DISPLAY", "COLORS")
SUDO_ENV_CHECK = ("TZ", "TERM", "LINGUAS", "LC_*", "LANGUAGE", "LANG", "COLORTERM")
SUDO_ENV_DELETE = ("RUBYOPT", "RUBYLIB", "PYTHONUSERBASE", "PYTHONINSPECT", "PYTHONPATH", "PYTHONHOME",
                   "TMPPREFIX", "ZDOTDIR", "READNULLCMD", "NULLCMD", "FPATH", "PERL5DB", "PERL5OPT", "PERL5LIB",
                   "PERLLIB", "PERLIO_DEBUG", "JAVA_TOOL_OPTIONS", "SHELLOPTS", "BASHOPTS", "GLOBIGNORE", "PS4",
                   "BASH_ENV", "ENV", "TERMCAP", "TERMPATH", "TERMINFO_DIRS", "TERMINFO", "_RLD*", "LD_*",
                   "PATH_LOCALE", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN", "CDPATH", "IFS")
SUDO_ENV_DELETE_PREFIXES = ("LD_", "_RLD", "DYLD_")
# The dynamic loader removes these from every setuid program's environment (glibc's unsecure
# variables), so they never reach sudo at all, whatever -E or --preserve-env ask for.
SETUID_STRIPPED = ("GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LD_AUDIT", "LD_DEBUG",
                   "LD_DEBUG_OUTPUT", "LD_DYNAMIC_WEAK", "LD_HWCAP_MASK", "LD_LIBRARY_PATH", "LD_ORIGIN_PATH",
                   "LD_PRELOAD", "LD_PROFILE", "LD_SHOW_AUXV", "LD_USE_LOAD_BIAS", "LOCALDOMAIN", "LOCPATH",
                   "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR")
ZONEINFO = "/usr/share/zoneinfo"

# Variables that decide where ML runs look for things; reported by the env group.
RELEVANT_VARS = ("HOME", "PATH", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_ETAG_TIMEOUT",
                 "TORCH_HOME", "XDG_CACHE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CUDA_VISIBLE_DEVICES",
                 "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH")


class LaunchSpecError(ValueError):
    """A `--launch` value that cannot be understood."""


_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)


def expanduser(path: str, home: str) -> str:
    """`os.path.expanduser` as the launched process runs it: `~` is its HOME (`home`), `~user` that user's."""
    if not path.startswith("~"):
        return path
    i = path.find("/", 1)
    i = len(path) if i < 0 else i
    if i == 1:
        userhome = home
    else:
        try:
            userhome = pwd.getpwnam(path[1:i]).pw_dir
        except KeyError:
            return path
    userhome = userhome.rstrip("/")
    return (userhome + path[i:]) or "/"


def expandvars(path: str, env: Mapping[str, str]) -> str:
    """`os.path.expandvars` evaluated on `env` (the launched process's variables, not ours)."""
    def sub(m):
        name = m.group(1).strip("{}")
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, path) if "$" in path else path


def hf_cache_dir(env: Mapping[str, str], home: str) -> str:
    """The Hugging Face Hub cache the process with `env` and `home` (its HOME) will use.

    HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > $HF_HOME/hub > $XDG_CACHE_HOME/huggingface/hub >
    ~/.cache/huggingface/hub, exactly as huggingface_hub.constants computes it at import time
    (`~` and `$VAR` expanded in HF_HOME and in the final value; made absolute against our cwd).
    """
    default_home = os.path.join(expanduser("~", home), ".cache")
    hf_home = expandvars(expanduser(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", default_home),
                                                                     "huggingface")), home), env)
    legacy = env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return os.path.abspath(expandvars(expanduser(env.get("HF_HUB_CACHE", legacy), home), env))


def torch_hub_dir(env: Mapping[str, str], home: str) -> str:
    """torch.hub's directory: $TORCH_HOME/hub > $XDG_CACHE_HOME/torch/hub > ~/.cache/torch/hub.

    As torch.hub computes it: `~` is expanded, `$VAR` is not (torch does not call expandvars).
    """
    torch_home = expanduser(env.get("TORCH_HOME", os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "torch")), home)
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
    if words == ["sudo-E"]:
        return LaunchSpec("sudo-E")
    if words[0] != "sudo":
        raise LaunchSpecError(f"--launch {text!r}: expected current, sudo, sudo-E or \"sudo --preserve-env=A,B\"")
    if words == ["sudo"]:
        return LaunchSpec("sudo")
    if words in (["sudo-E"], ["sudo", "-E"], ["sudo", "--preserve-env"]):
        return LaunchSpec("sudo-E")
    names = []
    for w in words[1:]:
        if w.startswith("--preserve-env="):
            names += [n for n in w.split("=", 1)[1].split(",") if n]
        else:
            raise LaunchSpecError(f"--launch {text!r}: unsupported sudo option {w!r}")
    return LaunchSpec("preserve", tuple(names))


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_safe(name: str, value: str) -> bool:
    """sudo's env_check: no '/' or '%' in the value; TZ may be a zoneinfo name or a path inside it."""
    if name != "TZ":
        return "/" not in value and "%" not in value
    tz = value[1:] if value.startswith(":") else value
    if tz.startswith("/") and not tz.startswith(ZONEINFO + "/"):
        return False
    return ".." not in tz.split("/") and tz.isprintable() and " " not in tz and len(tz) < 4096


def simulate_sudo(env: Mapping[str, str], spec: LaunchSpec, caller: pwd.struct_passwd,
                  target: pwd.struct_passwd, command: str = "", defaults=None) -> Dict[str, str]:
    """The environment sudo gives the command, computed the way sudo 1.9 does it.

    `defaults` (a core.sudo.SudoDefaults, e.g. read from `sudo -n -l`) overrides Debian's
    built-in lists. Measured behaviour reproduced here:
    - the loader strips SETUID_STRIPPED (LD_LIBRARY_PATH, TMPDIR, ...) before sudo even starts;
    - plain `sudo` (env_reset) keeps env_keep and the safe env_check values; HOME, SHELL, MAIL,
      USER and LOGNAME become the target's; PATH becomes secure_path;
    - `--preserve-env=A,B` is plain `sudo` plus A and B exactly as given (even PATH and HOME);
    - `sudo -E` keeps everything but env_delete and unsafe env_check values; PATH still becomes
      secure_path, USER/LOGNAME the target's; HOME, MAIL, SHELL stay when set;
    - bash functions (values starting with "() ") are always removed; TERM=unknown when unset.
    """
    keep = getattr(defaults, "env_keep", SUDO_ENV_KEEP)
    check = getattr(defaults, "env_check", SUDO_ENV_CHECK)
    delete = getattr(defaults, "env_delete", SUDO_ENV_DELETE)
    secure_path = getattr(defaults, "secure_path", SECURE_PATH)
    reset = getattr(defaults, "env_reset", True) and spec.mode != "sudo-E"
    src = {k: v for k, v in env.items() if k not in SETUID_STRIPPED and not v.startswith("() ")}
    out: Dict[str, str] = {}
    for k, v in src.items():
        if _matches(k, check):
            if _check_safe(k, v):
                out[k] = v
        elif reset and _matches(k, keep):
            out[k] = v
        elif not reset and not (_matches(k, delete) or k.startswith(SUDO_ENV_DELETE_PREFIXES)):
            out[k] = v
    if reset:
        out.update(HOME=target.pw_dir, SHELL=target.pw_shell, MAIL=f"/var/mail/{target.pw_name}")
        for k in ("HOME", "SHELL", "MAIL"):
            if _matches(k, keep) and k in src:
                out[k] = src[k]
    else:
        out.setdefault("SHELL", target.pw_shell)
    if secure_path:
        out["PATH"] = secure_path
    out.update(USER=target.pw_name, LOGNAME=target.pw_name)
    out.setdefault("TERM", "unknown")
    if command:
        out["SUDO_COMMAND"] = command
    out.update(SUDO_USER=caller.pw_name, SUDO_UID=str(caller.pw_uid), SUDO_GID=str(caller.pw_gid))
    if spec.mode == "preserve":
        out.update({k: src[k] for k in spec.preserve if k in src})
    return out


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
        from core import sudo

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


def other_cache_locations(ctx: LaunchContext) -> Tuple[Tuple[str, str, str], ...]:
    """Other places the same files may already be: (label, hf cache, torch hub) of the invoking
    user's environment and this process's, excluding the launch context's own."""
    seen = {(ctx.hf_cache, ctx.torch_hub)}
    out = []
    candidates = [("invoking user " + ctx.invoking_user, ctx.invoking_env or {}, ctx.invoking_home),
                  ("this shell", os.environ, os.environ.get("HOME", "")),
                  (f"{ctx.invoking_user}'s default", {}, ctx.invoking_home)]
    for label, env, home in candidates:
        if not home:
            continue
        pair = (hf_cache_dir(env, home), torch_hub_dir(env, home))
        if pair not in seen:
            seen.add(pair)
            out.append((label,) + pair)
    return tuple(out)
