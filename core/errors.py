"""User-facing errors: a mistake on the command line or in an input file is one line and exit 2.

SettingsError (core.registry) names a file and a JSON path; UsageError everything else the user
typed. `guarded` is the one place both become one stderr line, for every command of the project.
"""
from __future__ import annotations

import sys


class UsageError(Exception):
    """A mistake on the command line or in an input file: printed as one line, exit 2."""


def guarded(prog: str, body) -> int:
    """Run `body()`; a user mistake is one line on stderr and exit 2, never a traceback."""
    from core.registry import SettingsError

    try:
        return body()
    except (UsageError, SettingsError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
