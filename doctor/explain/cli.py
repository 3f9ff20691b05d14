"""`mutation-doctor explain PATH [--json] [--markdown FILE] [--rerun FILE] [-v]`.

Exit 0 when nothing failed, 1 when an experiment failed or was held back, 2 for an unusable
PATH or option (one line on stderr, never a traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from doctor.explain.readers import DEFAULT_CAP, ExplainInputError

PROG = "mutation-doctor explain"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise ExplainInputError(message)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=(
        "Explain why experiments failed, from their result folders: cause, confidence, evidence, "
        "chain of events and fix commands, for mutation-run results and for mutation.py results."))
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The explain options (also used when wiring `explain` as a mutation-doctor subcommand)."""
    p.add_argument("path", metavar="PATH",
                   help="a results root, one run folder (run_<ts>) or one experiment folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the terminal report")
    p.add_argument("--markdown", metavar="FILE",
                   help="write the batch report as Markdown to FILE (and the rerun settings next to it)")
    p.add_argument("--rerun", metavar="FILE",
                   help="write a settings file with just the failed/blocked experiments to FILE")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every experiment with its evidence and chain of events, successes included")
    p.add_argument("--models-config", metavar="FILE",
                   help="registry whose `requires` say which models need which weights "
                        "(default: the shipped settings/models_config.json)")
    p.add_argument("-j", "--jobs", metavar="N", type=int, default=None,
                   help="worker processes for large batches (default: up to 4 when there are 500+ experiments)")
    p.add_argument("--max-log-bytes", metavar="N", type=int, default=DEFAULT_CAP,
                   help=f"read at most N bytes from the end of each log (default {DEFAULT_CAP})")


def rerun_path_for(markdown: Optional[str], rerun: Optional[str]) -> Optional[str]:
    if rerun:
        return os.path.abspath(rerun)
    if markdown:
        base = os.path.splitext(os.path.abspath(markdown))[0]
        return base + ".rerun.json"
    return None


def _writable_target(path: str, what: str) -> None:
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise ExplainInputError(f"{path}: folder {d} does not exist (for the {what})")
    if os.path.isdir(path):
        raise ExplainInputError(f"{path}: is a folder; expected a file name for the {what}")


def write_report(path: str, text: str) -> None:
    """Write the report without following a link planted at `path` (core.safefs.write_file)."""
    from core.safefs import write_file

    why = write_file(path, text.encode("utf-8"))
    if why:
        raise ExplainInputError(why)


def run(args: argparse.Namespace) -> int:
    from doctor.explain.batch import explain_path
    from doctor.explain import render

    if args.max_log_bytes < 4096:
        raise ExplainInputError(f"--max-log-bytes {args.max_log_bytes}: expected at least 4096")
    if args.models_config and not os.path.isfile(args.models_config):
        raise ExplainInputError(f"--models-config {args.models_config}: no such file")
    if args.markdown:
        _writable_target(args.markdown, "Markdown report")
    if args.rerun:
        _writable_target(args.rerun, "rerun settings file")
    rerun = rerun_path_for(args.markdown, args.rerun)
    if args.jobs is not None and args.jobs < 1:
        raise ExplainInputError(f"--jobs {args.jobs}: expected 1 or more")
    report = explain_path(args.path, registry=args.models_config, cap=args.max_log_bytes, rerun_path=rerun,
                          jobs=args.jobs)
    written = None
    if rerun and report.to_rerun:
        try:
            render.write_rerun(report, rerun)
            written = rerun
        except OSError as e:
            raise ExplainInputError(f"{rerun}: cannot write the rerun settings file: {e.strerror or e}")
    if args.markdown:
        try:
            write_report(args.markdown, render.render_markdown(report, written))
        except OSError as e:
            raise ExplainInputError(f"{args.markdown}: cannot write the report: {e.strerror or e}")
    if args.json:
        # Indented for a person at a terminal; compact (and much faster to encode) when piped.
        sys.stdout.write(render.dumps(report, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        render.render_terminal(report, verbose=args.verbose, rerun_file=written,
                               markdown_file=args.markdown)
    return report.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: returns the exit code (0 nothing failed, 1 failures, 2 unusable input)."""
    from core.errors import guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(PROG, lambda: run(build_parser().parse_args(argv)))
