"""What the doctor's commands and the runner share below the command line: the options every command
takes, and the registry, plan and launch context built from them (`make_context`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from core.errors import UsageError
from core.vocab import GROUPS

BUNDLED_SETTINGS = Path(__file__).resolve().parents[1] / "settings"
DEFAULT_PROBE_TIMEOUT = 3.0


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared by mutation-doctor and mutation-run."""
    p.add_argument("-ec", "--experiment-config", dest="settings", metavar="FILE",
                   help="settings JSON (the same format as mutation.py's); without it every model of the registry is checked")
    p.add_argument("--models-config", metavar="FILE",
                   help="model registry (default: PROJECT_ROOT/mutation/models_config.json if present, "
                        "else the bundled settings/models_config.json)")
    p.add_argument("--project-root", metavar="DIR", default=".", help="anchors the registry's repo paths (default: .)")
    p.add_argument("--launch", metavar="HOW", default=None,
                   help='how experiments are started: current, sudo, sudo-E, or "sudo --preserve-env=A,B" '
                        "(default: current; under sudo the doctor's own environment)")
    p.add_argument("--only", metavar="GROUP[,GROUP]", help=f"check groups to run: {', '.join(GROUPS)}")
    p.add_argument("--probe-timeout", type=float, default=None, metavar="S",
                   help=f"network probe timeout per stage (default {DEFAULT_PROBE_TIMEOUT:g})")
    p.add_argument("--needs-lock", metavar="FILE",
                   help="the needs lock: what successful runs used (default: needs.lock.json beside the registry)")
    p.add_argument("--locked", action="store_true",
                   help="weights whose sha256 differs from the needs lock fail (default: a warning)")
    p.add_argument("--max-experiments", type=int, default=None, metavar="N",
                   help="refuse a settings file that expands to more than N experiments (default 10000)")


def add_deprecated_timeout(p: argparse.ArgumentParser) -> None:
    """The doctor's old spelling of --probe-timeout, accepted (hidden) with a note on stderr."""
    p.add_argument("--timeout", dest="deprecated_timeout", type=float, default=None, help=argparse.SUPPRESS)


def probe_timeout(args, prog: str = "mutation-doctor") -> float:
    """The network probe timeout the arguments ask for; the deprecated --timeout works with a note."""
    value = getattr(args, "probe_timeout", None)
    old = getattr(args, "deprecated_timeout", None)
    if value is None and old is not None:
        print(f"{prog}: --timeout is deprecated, use --probe-timeout", file=sys.stderr)
        value = args.probe_timeout = old  # noted once, however often the context is built
    if value is None:
        value = getattr(args, "timeout", None)  # callers that set the namespace's timeout themselves
    value = DEFAULT_PROBE_TIMEOUT if value is None else value
    if value <= 0:
        raise UsageError("--probe-timeout must be a positive number of seconds")
    return value


def parse_groups(text: Optional[str]) -> tuple:
    if not text:
        return GROUPS
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise UsageError(f"--only {text}: unknown group {', '.join(bad)} (expected {', '.join(GROUPS)})")
    return groups


def default_registry(project_root: str) -> str:
    own = os.path.join(project_root, "mutation", "models_config.json")
    for cand in (own, os.path.join(project_root, "settings", "models_config.json"),
                 str(BUNDLED_SETTINGS / "models_config.json")):
        if os.path.isfile(cand):
            return cand
    return own


def resolve_input(path: str, project_root: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    cand = os.path.join(project_root, path)
    return cand if os.path.exists(cand) else os.path.abspath(path)


def default_launch(args) -> str:
    """The runner's launch policy is the doctor's default: `current` (under sudo: ourselves)."""
    return args.launch or os.environ.get("MUTATION_LAUNCH") or "current"


def validate_inputs(args, settings: Optional[str], registry_path: str) -> None:
    """Refuse, one line per problem, files that cannot be used (core.validate), before loading them."""
    from core.validate import MAX_EXPERIMENTS, check_inputs, refuse_fatal

    limit = getattr(args, "max_experiments", None)
    if limit is not None and limit < 1:
        raise UsageError("--max-experiments must be 1 or more")
    refuse_fatal(check_inputs(settings, registry_path, limit or MAX_EXPERIMENTS))


def make_context(args, **extra):
    """Registry, plan and launch context from parsed arguments; raises UsageError / SettingsError."""
    from core.context import DoctorContext, Options
    from core.launch import LaunchSpecError, build_launch_context
    from core.plan import load_plan, registry_plan
    from core.registry import load_registry

    root = os.path.abspath(args.project_root)
    if not os.path.isdir(root):
        raise UsageError(f"--project-root {args.project_root}: not a folder")
    registry_path = resolve_input(args.models_config, root) if args.models_config else default_registry(root)
    validate_inputs(args, resolve_input(args.settings, root) if args.settings else None, registry_path)
    registry = load_registry(registry_path, root)
    settings = resolve_input(args.settings, root) if args.settings else None
    plan = load_plan(settings, registry) if settings else registry_plan(registry)
    how = default_launch(args)
    try:
        launch = build_launch_context(how)
    except LaunchSpecError as e:
        raise UsageError(str(e)) from None
    options = Options(project_root=root, settings_file=settings, models_config=registry.path, launch=how,
                      groups=parse_groups(args.only), verify=getattr(args, "verify", False),
                      deep=getattr(args, "deep", False), timeout=probe_timeout(args),
                      needs_lock=getattr(args, "needs_lock", None), locked=bool(getattr(args, "locked", False)), **extra)
    plan = discovered(plan, registry, launch, options)
    return DoctorContext(options=options, registry=registry, plan=plan, launch=launch)


def discovered(plan, registry, launch, options):
    """The plan with each side's needs as declared, observed (the needs lock beside the registry)
    and discovered in the repos' code, evaluated with the launched process's HOME and PATH."""
    from core.discover.plan import with_discovered
    from core.memo import memo_dir

    return with_discovered(plan, registry, launch.home, launch.env.get("PATH", ""), memo_dir(options),
                           observed_needs(registry, options))[0]


def observed_needs(registry, options=None):
    """`observed(repo, repo_dir, model)` from the needs lock beside the registry, or None (no lock,
    or one that cannot be read: the runner that writes it reports that)."""
    from core import needslock

    path = needslock.path_for(options, registry.path)  # --needs-lock FILE, else beside the registry
    if not os.path.isfile(path):
        return None
    try:
        lock = needslock.read(path)
    except needslock.LockError:
        return None
    return lambda repo, repo_dir, model: needslock.found(lock, repo, repo_dir, model)
