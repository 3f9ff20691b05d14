"""Paths as a given process sees them: `~` from its HOME, `$VAR` from its environment, commands on its PATH.

Evaluated on an arbitrary environment and HOME (the launched process's), never this process's.
No project imports.
"""
from __future__ import annotations

import os
import pwd
import re
from typing import Mapping, Optional

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


def which(cmd: str, env: Mapping[str, str]) -> Optional[str]:
    """`cmd` resolved on the PATH of `env` (not ours)."""
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) else None
    for d in env.get("PATH", "").split(os.pathsep):
        p = os.path.join(d or ".", cmd)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None
