"""The exact command lines that fixes print: this project's own tools, run the way the
experiments are launched (under sudo with the script's absolute path, since secure_path would
not find a virtualenv's script)."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Sequence

from core.sudoenv import parse_launch


def quote(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def script(name: str) -> str:
    """The absolute path of one of our console scripts (beside this interpreter, else on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else (shutil.which(name) or name)


def _settings(ctx) -> list:
    f = getattr(ctx.options, "settings_file", None)
    return ["-ec", f] if f else []


def doctor_command(ctx, verb: str = "", as_launch_user: bool = False, launch: str = None) -> str:
    """mutation-doctor with this run's settings and `--launch` (or `launch`). `as_launch_user`:
    prefixed with the launch's sudo words instead (when we are not root already), so it looks at
    or writes the launch user's caches."""
    how = launch or getattr(ctx.options, "launch", "current") or "current"
    spec = parse_launch(how)
    sudo = as_launch_user and spec.mode != "current" and os.getuid() != 0
    words = [*spec.argv_prefix, script("mutation-doctor")] if sudo else ["mutation-doctor"]
    words += ([verb] if verb else []) + _settings(ctx)
    if not sudo and spec.mode != "current":
        words += ["--launch", how]
    return quote(*words)


def prefetch_fix(ctx) -> str:
    """The one prefetch line every missing-weights finding shares (so lists of fixes dedupe)."""
    return doctor_command(ctx, "prefetch", as_launch_user=True) + "  # where the hub is reachable; copy the cache here otherwise"


def run_command(ctx, sudo_words: Sequence[str], absolute: bool = None) -> str:
    """The batch launched through `sudo_words` (e.g. sudo --preserve-env=HF_HUB_OFFLINE); the
    runner by absolute path whenever it starts after sudo (`absolute` defaults to that)."""
    absolute = bool(sudo_words) if absolute is None else absolute
    runner = script("mutation-run") if absolute else "mutation-run"
    return quote(*sudo_words, runner, "--require-preflight", *_settings(ctx))
