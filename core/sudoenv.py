"""sudo's environment rules: `--launch` values, sudo's default lists, and the environment sudo gives a command.

Pure functions over an environment mapping; no project imports.
"""
from __future__ import annotations

import fnmatch
import pwd
import shlex
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

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


class LaunchSpecError(ValueError):
    """A `--launch` value that cannot be understood."""


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
