"""`mutation-doctor`: find, before launch, what will make an experiment batch fail.

Exit codes: 0 every experiment can run; 1 at least one experiment blocked or a failing check;
2 usage error or a settings file that cannot be read at all; 3 nothing blocked, but some experiment
unverified (none of its needs could be established).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence

from core.errors import UsageError, guarded  # noqa: F401 - re-exported for the runner
from doctor.operations import (BUNDLED_SETTINGS, add_common_args, add_deprecated_timeout,  # noqa: F401 - re-exported
                               default_launch, default_registry, make_context, parse_groups, resolve_input)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mutation-doctor",
        description="Checks an experiment batch before launch: settings, weights and data in the caches the "
                    "launched process will use, its environment under sudo, the network and the machine.",
        epilog="subcommands: `mutation-doctor prefetch [-ec FILE]` downloads missing weights into the launch "
               "context's caches; `mutation-doctor explain RESULTS` explains failed experiments; "
               "`mutation-doctor needs [-ec FILE]` lists what each model needs and where that was learnt. "
               "Exit codes: 0 every experiment can run, 1 something blocked or failing, 2 usage or unreadable "
               "settings, 3 nothing blocked but some experiment unverified.")
    add_common_args(p)
    add_deprecated_timeout(p)
    p.add_argument("--verify", action="store_true", help="hash weight files against their sha256 (memoised)")
    p.add_argument("--deep", action="store_true", help="also load each model offline in a subprocess")
    p.add_argument("--allow-download", action="store_true",
                   help="treat weights missing from the cache as a warning (the run may download them)")
    p.add_argument("--json", action="store_true", help="print one JSON object (format_version 1)")
    p.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown")
    p.add_argument("-v", "--verbose", action="store_true", help="show passing checks and details")
    return p


def run_check_command(args) -> int:
    from rich.console import Console

    from doctor import render
    from doctor.engine import run_doctor
    from doctor.launchmatrix import for_report as launch_matrix

    ctx = make_context(args, allow_download=args.allow_download)
    ctx, matrix = launch_matrix(args, ctx, lambda how: make_context(argparse.Namespace(**{**vars(args), "launch": how}),
                                                                    allow_download=args.allow_download))
    err = Console(stderr=True)
    if args.json or not err.is_terminal:
        report = run_doctor(ctx)
    else:
        with err.status("checking…") as status:
            report = run_doctor(ctx, progress=lambda c, _: status.update(f"checked: {c.title}"))
    if matrix:
        report = dataclasses.replace(report, launch_matrix=matrix)
    if args.markdown:
        from core.safefs import write_file

        why = write_file(args.markdown, render.to_markdown(report).encode("utf-8"))
        if why:  # a link planted at the report's name is replaced, never written through
            raise UsageError(f"--markdown {args.markdown}: {why}")
    if args.json:
        json.dump(render.to_json(report), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        render.render_terminal(report, render.report_console(), verbose=args.verbose)
    return report.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if argv and argv[0] == "explain":
            from doctor.explain.cli import main as explain_main

            return explain_main(argv[1:])
        if argv and argv[0] == "needs":
            from doctor.needs import main as needs_main

            return needs_main(argv[1:])
        if argv and argv[0] == "prefetch":
            from doctor.prefetch import main as prefetch_main

            return prefetch_main(argv[1:])
        return run_check_command(build_parser().parse_args(argv[1:] if argv[:1] == ["check"] else argv))

    return guarded("mutation-doctor", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
