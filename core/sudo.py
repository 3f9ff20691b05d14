"""The real sudo, asked where it answers without a password, and caches inspected as the launch user.

Everything here runs `sudo -n` (never a password prompt) with argv lists and a short timeout:
- `sudo -n -l` lists the Defaults that apply to the user (env_reset, env_keep, secure_path, setenv)
  and the rules (SETENV/ALL decide whether `-E` / `--preserve-env` are allowed);
- `sudo -n [-E | --preserve-env=A,B] /usr/bin/env -0` shows the environment a launched command
  really gets;
- `sudo -V`, as root, shows the built-in env_keep / env_check / env_delete lists.
When the doctor runs as root (started with sudo, or by root), `sudo` asked as root is not what
the user gets, so the questions are asked as the invoking user (setpriv, same environment).

`python -m core.sudo needstates` (or `needstate_argv()`) is the probe that inspects caches as
the launch user: it reads inspection tasks as JSON on stdin and prints FileStates as JSON.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from core.envpath import which
from core.sudoenv import (SECURE_PATH, SUDO_ENV_CHECK, SUDO_ENV_DELETE, SUDO_ENV_KEEP, LaunchSpec, parse_launch,
                          simulate_sudo)
from core.model import LaunchContext

SUDO_TIMEOUT = 3.0
ENV_BINARY = "/usr/bin/env"
# Variables that differ between asking and launching by construction, never a disagreement.
NOT_COMPARED = ("SUDO_COMMAND",)
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class SudoDefaults:
    """The Defaults sudo applies to one user, as `sudo -n -l` lists them (lists are the effective ones:
    the built-in lists with the sudoers `env_keep += ...` style entries applied).

    `setenv` is True when the user may use `-E` / `--preserve-env` (the SETENV tag, an `ALL` command
    or `Defaults setenv`); `rules` are the command lines sudo listed (e.g. `(ALL) NOPASSWD: ALL`).
    """

    env_reset: bool = True
    env_keep: Tuple[str, ...] = SUDO_ENV_KEEP
    env_check: Tuple[str, ...] = SUDO_ENV_CHECK
    env_delete: Tuple[str, ...] = SUDO_ENV_DELETE
    secure_path: Optional[str] = SECURE_PATH
    setenv: bool = False
    entries: Tuple[str, ...] = ()
    rules: Tuple[str, ...] = ()

    @property
    def added_keep(self) -> Tuple[str, ...]:
        """Names the sudoers configuration keeps beyond the built-in env_keep list."""
        return tuple(n for n in self.env_keep if n not in SUDO_ENV_KEEP)


@dataclass(frozen=True)
class SudoAnswer:
    """What the real sudo said about one way of launching, asked as one user.

    `ok`: sudo answered and `env` is what the launched command got. Otherwise `reason` says why
    (sudo absent, a password is required, no answer in time ...) and `refused` is True when sudo
    would refuse the launch itself (e.g. "you are not allowed to preserve the environment").
    `defaults` is filled whenever `sudo -n -l` answered, even if the environment could not be asked.
    """

    how: str
    as_user: str
    argv: Tuple[str, ...] = ()
    ok: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    defaults: Optional[SudoDefaults] = None
    reason: str = ""
    refused: bool = False
    elapsed: float = 0.0


# ---- running things as another user, and sudo itself ------------------------------------------------------

def find_sudo(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The sudo the user would run: on the PATH of `env`, else ours, else /usr/bin/sudo."""
    for cand in (which("sudo", env or {}), shutil.which("sudo"), "/usr/bin/sudo"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def as_user_prefix(user: Optional[str]) -> Tuple[str, ...]:
    """argv words that run a command as `user` when we are root (setpriv keeps the environment
    exactly as given); empty when no switch is needed or possible."""
    if not user or os.getuid() != 0:
        return ()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return ()
    if pw.pw_uid == 0:
        return ()
    setpriv = shutil.which("setpriv") or ("/usr/bin/setpriv" if os.access("/usr/bin/setpriv", os.X_OK) else None)
    if setpriv:
        return (setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if os.access(runuser, os.X_OK):
        # runuser without -l changes only HOME, SHELL, USER and LOGNAME; -p keeps even those
        return (runuser, "-p", "-u", user, "--")
    return ()


def _run(argv: Sequence[str], env: Mapping[str, str], timeout: float, input: Optional[str] = None,
         cwd: str = "/") -> Tuple[int, str, str]:
    try:
        p = subprocess.run(list(argv), env=dict(env), input=input, capture_output=True, text=True,
                           timeout=timeout, cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return -1, "", f"no answer within {timeout:g} s"
    except OSError as e:
        return -2, "", f"cannot start {argv[0]}: {e.strerror}"


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    line = lines[-1] if lines else ""
    return line[len("sudo: "):] if line.startswith("sudo: ") else line


_REFUSALS = ("not allowed to preserve the environment", "not allowed to set the following environment variables")


def _sudo_flags(spec: LaunchSpec) -> Tuple[str, ...]:
    return tuple(w for w in spec.argv_prefix[1:])


# ---- sudo -l and sudo -V ---------------------------------------------------------------------------------

def _split_entries(text: str) -> List[str]:
    """Split `a, b="x, y", c=d\\:e` on top-level commas (sudo quotes lists, escapes colons)."""
    out, cur, quoted, esc = [], [], False, False
    for ch in text:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            cur.append(ch)
            esc = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return [e for e in out if e]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.replace("\\:", ":").replace('\\"', '"').replace("\\,", ",")


def parse_sudo_list(text: str, builtin: Optional[Mapping[str, Tuple[str, ...]]] = None) -> SudoDefaults:
    """SudoDefaults from the output of `sudo -l`: its "Matching Defaults entries" and the rules.

    `builtin` (from `sudo -V` as root) replaces Debian's built-in env lists when given.
    """
    builtin = builtin or {}
    lists = {"env_keep": list(builtin.get("env_keep", SUDO_ENV_KEEP)),
             "env_check": list(builtin.get("env_check", SUDO_ENV_CHECK)),
             "env_delete": list(builtin.get("env_delete", SUDO_ENV_DELETE))}
    flags = {"env_reset": True, "setenv": False}
    secure_path: Optional[str] = None
    entries, rules, section = [], [], None
    for raw in text.splitlines():
        line = raw.rstrip()
        low = line.strip().lower()
        if not line.strip():
            section = None if section == "rules" else section
            continue
        if low.startswith("matching defaults entries") or low.startswith("runas and command-specific defaults"):
            section = "defaults"
            continue
        if low.startswith("user ") and "may run the following commands" in low:
            section = "rules"
            continue
        if section == "defaults" and raw[:1].isspace():
            entries += _split_entries(line.strip())
        elif section == "rules" and raw[:1].isspace():
            rules.append(line.strip())
    for e in entries:
        name, op, value = e, "", ""
        for sep in ("+=", "-=", "="):
            if sep in e:
                name, value = e.split(sep, 1)
                op = sep
                break
        name = name.strip()
        if name.startswith("!") and not op:
            if name[1:] in flags:
                flags[name[1:]] = False
            if name[1:] == "secure_path":
                secure_path = ""
            continue
        if name in flags and not op:
            flags[name] = True
        elif name == "secure_path" and op == "=":
            secure_path = _unquote(value)
        elif name in lists:
            names = _unquote(value).split()
            if op == "=":
                lists[name] = names
            elif op == "+=":
                lists[name] += [n for n in names if n not in lists[name]]
            elif op == "-=":
                lists[name] = [n for n in lists[name] if n not in names]
    setenv = flags["setenv"] or any(r.rstrip().endswith(" ALL") or r.strip() == "ALL" or "SETENV:" in r
                                    for r in rules)
    return SudoDefaults(env_reset=flags["env_reset"], env_keep=tuple(lists["env_keep"]),
                        env_check=tuple(lists["env_check"]), env_delete=tuple(lists["env_delete"]),
                        secure_path=secure_path, setenv=setenv, entries=tuple(entries), rules=tuple(rules))


def parse_sudo_version(text: str) -> Dict[str, Tuple[str, ...]]:
    """The built-in env lists from `sudo -V` (as root): env_keep, env_check, env_delete."""
    heads = {"environment variables to preserve": "env_keep",
             "environment variables to check for safety": "env_check",
             "environment variables to remove": "env_delete"}
    out: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        key = heads.get(line.strip().rstrip(":").lower())
        if key:
            current = key
            out[key] = []
        elif current and line.startswith("\t") and line.strip():
            if line.strip() != "*=()*":  # bash functions, handled separately
                out[current].append(line.strip())
        else:
            current = None
    return {k: tuple(v) for k, v in out.items()}


_cache_lock = threading.Lock()
_version_cache: Dict[str, Dict[str, Tuple[str, ...]]] = {}
_passwordless: Dict[Tuple[int, str], bool] = {}


def builtin_lists(timeout: float = SUDO_TIMEOUT) -> Dict[str, Tuple[str, ...]]:
    """`sudo -V` as root (memoised): the built-in env lists; {} when not root or sudo is absent."""
    sudo = find_sudo()
    if os.getuid() != 0 or not sudo:
        return {}
    with _cache_lock:
        if sudo in _version_cache:
            return _version_cache[sudo]
    rc, out, _ = _run([sudo, "-V"], os.environ, timeout)
    lists = parse_sudo_version(out) if rc == 0 else {}
    with _cache_lock:
        _version_cache[sudo] = lists
    return lists


def ask_defaults(env: Mapping[str, str], user: Optional[str] = None,
                 timeout: float = SUDO_TIMEOUT) -> Tuple[Optional[SudoDefaults], str]:
    """`sudo -n -l` as `user` (or as ourselves): (SudoDefaults, "") or (None, why not)."""
    sudo = find_sudo(env)
    if not sudo:
        return None, "sudo is not installed"
    rc, out, err = _run([*as_user_prefix(user), sudo, "-n", "-l"], env, timeout)
    if rc != 0:
        return None, _last_line(err) or f"sudo -n -l exited with {rc}"
    return parse_sudo_list(out, builtin_lists(timeout)), ""


def passwordless(timeout: float = SUDO_TIMEOUT) -> bool:
    """Whether this process may run commands with `sudo -n` (memoised per uid; `sudo -n -l`)."""
    if os.getuid() == 0:
        return True
    key = (os.getuid(), find_sudo() or "")
    with _cache_lock:
        if key in _passwordless:
            return _passwordless[key]
    d, _ = ask_defaults(os.environ, None, timeout)
    ok = d is not None and any("NOPASSWD" in r for r in d.rules)
    with _cache_lock:
        _passwordless[key] = ok
    return ok


def _remember_passwordless(user: Optional[str], ok: bool) -> None:
    if user or os.getuid() == 0:
        return
    with _cache_lock:
        _passwordless[(os.getuid(), find_sudo() or "")] = ok


def ask(spec: LaunchSpec, env: Mapping[str, str], user: Optional[str] = None,
        timeout: float = SUDO_TIMEOUT) -> SudoAnswer:
    """Ask the real sudo what a command launched with `spec` gets, as `user` with environment `env`.

    `user` matters when we are root: the question is then asked as that user (setpriv), because
    sudo run by root is not what the user's sudo does. Two calls at most (`sudo -n -l`, then
    `sudo -n <flags> /usr/bin/env -0`), each bounded by `timeout`.
    """
    t0 = time.monotonic()
    who = user or (pwd.getpwuid(os.getuid()).pw_name if _has_pw(os.getuid()) else str(os.getuid()))
    sudo = find_sudo(env)
    if not sudo:
        return SudoAnswer(spec.label, who, reason="sudo is not installed")
    if os.getuid() == 0 and user and not as_user_prefix(user) and _uid_of(user) != 0:
        return SudoAnswer(spec.label, who, reason=f"cannot switch to {user} to ask sudo (setpriv/runuser missing)")
    defaults, why = ask_defaults(env, user, timeout)
    if defaults is None:
        _remember_passwordless(user, False)
        return SudoAnswer(spec.label, who, reason=why, elapsed=time.monotonic() - t0)
    envbin = ENV_BINARY if os.access(ENV_BINARY, os.X_OK) else "env"
    argv = (*as_user_prefix(user), sudo, "-n", *_sudo_flags(spec), envbin, "-0")
    rc, out, err = _run(argv, env, timeout)
    elapsed = time.monotonic() - t0
    if rc != 0:
        reason = _last_line(err) or f"sudo exited with {rc}"
        return SudoAnswer(spec.label, who, argv=argv, defaults=defaults, reason=reason,
                          refused=any(r in reason for r in _REFUSALS), elapsed=elapsed)
    _remember_passwordless(user, True)
    launched = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return SudoAnswer(spec.label, who, argv=argv, ok=True, env=launched, defaults=defaults, elapsed=elapsed)


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _uid_of(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return -1


# ---- real against simulated ------------------------------------------------------------------------------

def simulation_differences(launch: LaunchContext) -> Tuple[Tuple[str, Optional[str], Optional[str]], ...]:
    """For a launch context learnt from the real sudo: (name, simulated value, real value) of every
    variable where sudo's built-in defaults, applied to the invoking environment, predict otherwise.
    None means "not set". Empty for other sources."""
    if launch.source != "real":
        return ()
    try:
        spec = parse_launch(launch.how)
        caller = pwd.getpwnam(launch.invoking_user)
        target = pwd.getpwuid(launch.uid)
    except (ValueError, KeyError):
        return ()
    simulated = simulate_sudo(launch.invoking_env, spec, caller, target)
    out = []
    for k in sorted(set(simulated) | set(launch.env)):
        if k in NOT_COMPARED:
            continue
        a, b = simulated.get(k), launch.env.get(k)
        if a != b:
            out.append((k, a, b))
    return tuple(out)


# ---- caches inspected as the launch user -----------------------------------------------------------------

def inspect_task(task: Sequence, verify: bool = False, memo=None):
    """One inspection task, here, as this process: ("hf", cache, repo_id, file, revision),
    ("torch", hub_dir, file), ("path", path, kind) or ("python", path). Returns a FileState."""
    from core import hubcache

    op, args = task[0], list(task[1:])
    if op == "hf":
        cache, repo_id, filename, revision = args
        return hubcache.inspect_hf_file(cache, repo_id, filename, revision, verify=verify, memo=memo)
    if op == "torch":
        return hubcache.inspect_torch_checkpoint(args[0], args[1], verify, memo)
    if op == "path":
        return hubcache.inspect_path(args[0], args[1])
    if op == "python":
        return hubcache.inspect_python(args[0])
    raise ValueError(f"unknown inspection task {op!r}")


_PROBE_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); from core.sudo import probe_main; "
               "sys.exit(probe_main())")


def needstate_argv(prefix: Sequence[str] = ("sudo", "-n"), python: Optional[str] = None) -> List[str]:
    """The command that inspects as the launch user: `sudo -n <python> -I -B -c ... <project dir>`.

    -I: no PYTHONPATH, user site or cwd on sys.path; -B: root writes no .pyc into the user's tree.
    """
    return [*prefix, python or sys.executable, "-I", "-B", "-c", _PROBE_CODE, ROOT_DIR]


def probe_main(stdin=None, stdout=None) -> int:
    """Entry of the probe: {"tasks": [...], "verify": bool, "memo": path|null} on stdin, one JSON
    object {"uid": ..., "states": [FileState fields ...]} on stdout. Writes nothing to disk."""
    from core.hubcache import HashMemo

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        req = json.load(stdin)
        memo = HashMemo(req.get("memo")) if req.get("verify") else None  # read-only: never saved here
        states = []
        for task in req.get("tasks", []):
            try:
                states.append(asdict(inspect_task(task, bool(req.get("verify")), memo)))
            except Exception as e:  # noqa: BLE001 - one bad task must not hide the others
                states.append({"status": "unknown", "path": str(task[1] if len(task) > 1 else ""),
                               "detail": f"{type(e).__name__}: {e}"})
    except (ValueError, TypeError) as e:
        json.dump({"error": f"bad request: {e}"}, stdout)
        return 2
    json.dump({"uid": os.getuid(), "states": states}, stdout)
    stdout.write("\n")
    return 0


def inspect_as(tasks: Sequence[Sequence], verify: bool = False, memo_path: Optional[str] = None,
               prefix: Sequence[str] = ("sudo", "-n"), timeout: Optional[float] = None):
    """Run the inspection tasks through `prefix` (default `sudo -n`): (list of FileState, "") or
    (None, why it could not be done)."""
    from core.hubcache import FileState

    sudo = find_sudo()
    if prefix and prefix[0] == "sudo":
        if not sudo:
            return None, "sudo is not installed"
        prefix = (sudo, *prefix[1:])
    timeout = timeout if timeout is not None else (600.0 if verify else 60.0)
    req = json.dumps({"tasks": [list(t) for t in tasks], "verify": verify, "memo": memo_path})
    rc, out, err = _run(needstate_argv(prefix), os.environ, timeout, input=req)
    if rc != 0:
        return None, _last_line(err) or f"the probe exited with {rc}"
    try:
        data = json.loads(out.strip().splitlines()[-1])
        states = [FileState(**{**s, "leftovers": tuple(s.get("leftovers") or ())}) for s in data["states"]]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return None, f"unreadable answer from the probe: {e}"
    if len(states) != len(tasks):
        return None, "the probe answered for a different number of tasks"
    return states, ""


if __name__ == "__main__":  # pragma: no cover - `python -m core.sudo needstates`
    if sys.argv[1:2] != ["needstates"]:
        print("usage: python -m core.sudo needstates < tasks.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(probe_main())
