"""`mutation-doctor`: find, before launch, what will make an experiment batch fail.

Exit codes: 0 nothing blocked; 1 at least one experiment blocked or a failing check;
2 usage error or a settings file that cannot be read at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.model import GROUPS

BUNDLED_SETTINGS = Path(__file__).resolve().parents[1] / "settings"


class UsageError(Exception):
    """A mistake on the command line or in an input file: printed as one line, exit 2."""


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
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="network probe timeout per stage (default 3)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mutation-doctor",
        description="Checks an experiment batch before launch: settings, weights and data in the caches the "
                    "launched process will use, its environment under sudo, the network and the machine.",
        epilog="subcommands: `mutation-doctor prefetch [-ec FILE]` downloads missing weights into the launch "
               "context's caches; `mutation-doctor explain RESULTS` explains failed experiments. "
               "Exit codes: 0 nothing blocked, 1 something blocked or failing, 2 usage or unreadable settings.")
    add_common_args(p)
    p.add_argument("--verify", action="store_true", help="hash weight files against their sha256 (memoised)")
    p.add_argument("--deep", action="store_true", help="also load each model offline in a subprocess")
    p.add_argument("--allow-download", action="store_true",
                   help="treat weights missing from the cache as a warning (the run may download them)")
    p.add_argument("--json", action="store_true", help="print one JSON object (format_version 1)")
    p.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown")
    p.add_argument("-v", "--verbose", action="store_true", help="show passing checks and details")
    return p


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
    registry = load_registry(registry_path, root)
    settings = resolve_input(args.settings, root) if args.settings else None
    plan = load_plan(settings, registry) if settings else registry_plan(registry)
    how = default_launch(args)
    try:
        launch = build_launch_context(how)
    except LaunchSpecError as e:
        raise UsageError(str(e)) from None
    if getattr(args, "timeout", 3.0) <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    options = Options(project_root=root, settings_file=settings, models_config=registry.path, launch=how,
                      groups=parse_groups(args.only), verify=getattr(args, "verify", False),
                      deep=getattr(args, "deep", False), timeout=args.timeout, **extra)
    return DoctorContext(options=options, registry=registry, plan=plan, launch=launch)


def run_check_command(args) -> int:
    from rich.console import Console

    from doctor import render
    from doctor.engine import run_doctor

    ctx = make_context(args, allow_download=args.allow_download)
    err = Console(stderr=True)
    if args.json or not err.is_terminal:
        report = run_doctor(ctx)
    else:
        with err.status("checking…") as status:
            report = run_doctor(ctx, progress=lambda c, _: status.update(f"checked: {c.title}"))
    if args.markdown:
        try:
            Path(args.markdown).write_text(render.to_markdown(report), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--markdown {args.markdown}: {e.strerror}") from None
    if args.json:
        json.dump(render.to_json(report), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        render.render_terminal(report, render.report_console(), verbose=args.verbose)
    return report.exit_code


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if argv and argv[0] == "explain":
            from doctor.explain.cli import main as explain_main

            return explain_main(argv[1:])
        if argv and argv[0] == "prefetch":
            from doctor.prefetch import main as prefetch_main

            return prefetch_main(argv[1:])
        return run_check_command(build_parser().parse_args(argv[1:] if argv[:1] == ["check"] else argv))

    return guarded("mutation-doctor", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
