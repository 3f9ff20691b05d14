"""`mutation-run`: run an experiment batch, gated by the doctor, into a crash-safe results folder.

Exit codes: 0 every experiment passed; 1 something failed or was blocked; 2 usage error or a
settings file that cannot be read; 130 stopped by Ctrl-C (143 by SIGTERM, 129 by SIGHUP).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from typing import List, Optional, Sequence

from core.vocab import BLOCKED, FAIL, UNVERIFIED
from runner.results import FORMAT_VERSION, STATUSES


def build_parser() -> argparse.ArgumentParser:
    from doctor.cli import add_common_args
    from runner import backends

    p = argparse.ArgumentParser(
        prog="mutation-run", conflict_handler="resolve",
        description="Runs an experiment batch (the settings format of mutation.py) with each child's environment "
                    "built explicitly, holding back what the doctor finds blocked, into results/run_<ts>/.",
        epilog="Exit codes: 0 all passed, 1 something failed or was blocked, 2 usage, 130 Ctrl-C. "
               "After a crash or kill: mutation-run --resume results/run_<ts>.")
    add_common_args(p)  # -ec, --models-config, --project-root, --launch, --only (its --timeout is replaced below)
    p.add_argument("--require-preflight", action="store_true",
                   help="do not start experiments the doctor blocks (they are recorded as blocked, with the fixes)")
    p.add_argument("--strict", action="store_true",
                   help="also hold back experiments the doctor could not verify (verdict unverified: none of their needs "
                        "could be established); implies --require-preflight")
    p.add_argument("--dry-run", action="store_true",
                   help="print each experiment's verdict, exact command and environment changes; run nothing")
    p.add_argument("--results-dir", metavar="DIR", help="where run_<ts>/ folders go (default: PROJECT_ROOT/results)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: rerun only what did not finish")
    p.add_argument("--max-retries", type=int, metavar="N",
                   help="retries of a transiently failed experiment (default: the settings' max_retries, else 2)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop an attempt after SECONDS (default: none)")
    p.add_argument("--probe-timeout", type=float, default=None, metavar="S",
                   help="the doctor's network probe timeout per stage (default 3)")
    p.add_argument("--grace", type=float, default=None, metavar="S",
                   help="seconds between SIGTERM and SIGKILL when stopping an experiment (default 10)")
    p.add_argument("--retry-delay", type=float, default=None, metavar="S", help="pause before a retry (default 10)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the mutation sampling (default: random, recorded)")
    p.add_argument("--wait-for-gpu", type=float, default=None, metavar="SECONDS",
                   help="before an experiment that declares gpu_memory_gb, wait up to SECONDS for that much free memory")
    p.add_argument("--no-energy", action="store_true",
                   help="do not wrap experiments in `perf stat` even where the plan asks for energy measurement")
    p.add_argument("--allow-download", action="store_true",
                   help="weights missing from the cache do not block (the run may download them)")
    p.add_argument("--backend", choices=backends.names(), default=None,
                   help=f"how each experiment runs (default: {backends.DEFAULT}, a process group on this machine)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the experiments' output")
    p.add_argument("--no-observe", action="store_true",
                   help="do not put the observer in the experiments' Python processes (no needs.json, no needs lock update)")
    from runner.backends.slurm_batch import add_slurm_args

    add_slurm_args(p)  # --partition, --gpus-per-node, --time, ... of --backend slurm
    p.add_argument("--json", action="store_true", help="print the outcome (or the --dry-run plan) as one JSON object")
    return p


class Console:
    """Status lines on stderr (stdout carries the experiments' output, or the JSON)."""

    def __init__(self):
        from rich.console import Console as RichConsole

        self.rich = RichConsole(stderr=True, highlight=False, soft_wrap=True)

    def say(self, msg: str, fixes: Sequence[str] = (), rule: bool = False) -> None:
        try:
            self._say(msg, fixes, rule)
        except OSError:  # the terminal went away (logout under nohup): the batch goes on, the record stays
            pass

    def _say(self, msg: str, fixes: Sequence[str], rule: bool) -> None:
        from rich.markup import escape

        if rule and self.rich.is_terminal:
            self.rich.rule(escape(msg), align="left", style="cyan")
        else:
            self.rich.print(("[cyan]" + escape(msg) + "[/cyan]") if rule else escape(msg))
        for fix in fixes:
            self.rich.print("    fix: " + escape(fix))


def _options_from(args, manifest: Optional[dict]):
    from runner.batch import Options

    saved = (manifest or {}).get("options") or {}

    def pick(name, default):
        value = getattr(args, name, None)
        if value is not None:
            return value
        return saved.get(name, default)

    strict = bool(getattr(args, "strict", False) or saved.get("strict", False))
    return Options(require_preflight=bool(args.require_preflight or strict or saved.get("require_preflight", False)),
                   strict=strict,
                   timeout=pick("timeout", None), grace=float(pick("grace", 10.0)),
                   max_retries=int(pick("max_retries", -1)), retry_delay=float(pick("retry_delay", 10.0)),
                   wait_for_gpu=float(pick("wait_for_gpu", 0.0)), stream=not args.quiet, json_out=args.json,
                   backend=str(pick("backend", "local")),
                   observe=not (getattr(args, "no_observe", False) or saved.get("observe") is False))


def _check_args(args) -> None:
    from doctor.cli import UsageError

    for name in ("timeout", "grace", "retry_delay", "wait_for_gpu", "probe_timeout"):
        v = getattr(args, name, None)
        if v is not None and (v < 0 or (name in ("timeout", "probe_timeout") and v == 0)):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    if args.max_retries is not None and args.max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    if args.resume and args.dry_run:
        raise UsageError("--resume and --dry-run cannot be combined")


def _context(args, manifest: Optional[dict]):
    from doctor.cli import make_context

    ns = argparse.Namespace(**vars(args))
    if manifest:
        for key, name in (("settings", "settings_file"), ("models_config", "models_config"),
                          ("project_root", "project_root"), ("launch", "launch"), ("only", "only")):
            if getattr(ns, key, None) in (None, ".") and manifest.get(name) is not None:
                setattr(ns, key, manifest[name])
    ns.timeout = args.probe_timeout if args.probe_timeout is not None else (manifest or {}).get("probe_timeout", 3.0)
    extra = {"allow_download": True} if args.allow_download else {}
    return make_context(ns, **extra), ns


def _dry_run(args, ctx, jobs, preflights, seed, energy, extra: Optional[dict] = None) -> int:
    from runner import batch
    from runner.command import side_command

    items = []
    for job in jobs:
        pf = preflights[job.id]
        cmd, cwd = side_command(ctx.registry, job.foreground)
        bg = None
        if job.background is not None:
            bg_cmd, bg_cwd = side_command(ctx.registry, job.background)
            bg = {"repo": job.background.repo, "model": job.background.model,
                  "hyperparameters": dict(job.background.hyperparameters),
                  "argv": list(pf.child.prefix) + bg_cmd, "cwd": bg_cwd}
        rec = pf.child.record(argv=cmd, cwd=cwd)
        items.append({"id": job.id, "mode": job.experiment.mode, "repo": job.foreground.repo, "model": job.foreground.model,
                      "hyperparameters": dict(job.foreground.hyperparameters), "verdict": pf.verdict,
                      "blocked_by": list(pf.blocked_by), "fix": pf.fixes(),
                      "would_run": not batch.held_back(pf.verdict, args.require_preflight or args.strict, args.strict),
                      "argv": rec["argv"], "cwd": cwd, "env_set": rec["env_set"], "env_dropped": rec["env_dropped"],
                      "hf_cache": rec["hf_cache"], "torch_hub": rec["torch_hub"], "offline": rec["offline"],
                      "background": bg, "warnings": list(job.warnings),
                      "energy": ({"perf": energy.perf, "events": list(energy.events)} if energy.measures(job.id)
                                 else None)})
    blocked = sum(1 for i in items if i["verdict"] == "blocked")
    if args.json:
        json.dump({"format_version": FORMAT_VERSION, "dry_run": True, "settings_file": ctx.plan.file,
                   "models_config": ctx.registry.path, "seed": seed, "launch": {"how": ctx.launch.how, "user": ctx.launch.user},
                   "experiments": items, "summary": {"experiments": len(items), "pass": len(items) - blocked, "blocked": blocked},
                   **(extra or {})},
                  sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        w = sys.stdout.write
        w(f"mutation-run --dry-run: {ctx.plan.name}: {len(items)} experiment(s), seed {seed}, launch {ctx.launch.how}\n")
        for n, it in enumerate(items, 1):
            mark = "✓" if it["verdict"] == "pass" else "✗"
            w(f"\n[{n}/{len(items)}] {mark} {it['id']}  ({it['mode']}) {it['verdict']}"
              + (f" by {', '.join(it['blocked_by'])}" if it["blocked_by"] else "")
              + ("" if it["would_run"] else "  -> not started") + "\n")
            w(f"    cd {shlex.quote(it['cwd'])}\n")
            env_words = [f"{k}={shlex.quote(v)}" for k, v in it["env_set"].items()]
            w("    " + " ".join(env_words + [shlex.quote(a) for a in it["argv"]]) + "\n")
            if it["env_dropped"]:
                w(f"    unset: {' '.join(it['env_dropped'])}\n")
            if it["background"]:
                w(f"    background (looping, cd {shlex.quote(it['background']['cwd'])}): "
                  + " ".join(shlex.quote(a) for a in it["background"]["argv"]) + "\n")
            if it["energy"]:
                w(f"    energy: wrapped in {it['energy']['perf']} stat -a -e {','.join(it['energy']['events'])}\n")
            for fix in it["fix"]:
                w(f"    fix: {fix}\n")
            for warn in it["warnings"]:
                w(f"    ! {warn}\n")
        w(f"\n{len(items) - blocked} of {len(items)} can run, {blocked} blocked\n")
        if extra and extra.get("sbatch_script"):
            w("\nsbatch script (one array task per experiment):\n" + extra["sbatch_script"])
    return 1 if blocked or not items else 0


def _refuse_invalid(args, ctx) -> None:
    """Every value the runner will use is valid before anything starts (core.validate, the
    validator of the doctor's settings check): else one line per problem, exit 2."""
    from core.validate import MAX_EXPERIMENTS, InvalidInput, check_inputs

    problems = check_inputs(ctx.plan.file, ctx.registry.path, getattr(args, "max_experiments", None) or MAX_EXPERIMENTS)
    if problems:
        raise InvalidInput(problems)


def _settings_gate(args, ctx, jobs, options, say) -> Optional[int]:
    """None to go on; else the exit code (1) of a batch held back before anything is written:
    under --require-preflight the settings file fails a check, or there is nothing to run."""
    failing = [f for f in ctx.plan.findings if f.status == FAIL]
    for f in failing:
        say(f"settings: {f.title} ({f.detail})", fixes=f.fix)
    if options.require_preflight and failing:
        why = f"the settings file fails {len(failing)} check(s) and --require-preflight holds the batch back"
    elif not jobs:
        why = "the settings file yields no experiment to run" + (f" ({len(failing)} failing check(s))" if failing else "")
    else:
        return None
    say(f"nothing run: {why}")
    if args.json:
        json.dump({"format_version": FORMAT_VERSION, "run_dir": None, "exit_code": 1, "held_back": why,
                   "settings_failures": [f.id for f in failing], "counts": {s: 0 for s in STATUSES},
                   "not_started": len(jobs), "experiments": []}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return 1


def _jobs(args, ctx, manifest: Optional[dict]):
    """(seed, jobs, draws): drawn afresh against the history the settings ask for (draws: what
    deduplication did), or for --resume the values run.json recorded (draws None)."""
    from core.errors import UsageError
    from runner.expand import expand_plan, jobs_from_manifest

    if manifest is None:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
        results = [os.path.join(ctx.options.project_root, "results")] + ([args.results_dir] if args.results_dir else [])
        return (seed, *expand_plan(ctx.plan, ctx.registry, seed, results))
    jobs = jobs_from_manifest(ctx.plan.experiments, manifest["experiments"])
    missing = [r["id"] for r in manifest["experiments"] if r["id"] not in {j.id for j in jobs}]
    if missing:
        raise UsageError(f"--resume {args.resume}: the settings file no longer produces {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}; resume with the settings the run started with")
    return manifest.get("seed"), jobs, None


def _run_json(ctx, ns, options, jobs, seed, started: float, slurm) -> dict:
    """The run's manifest: what --resume needs to continue it exactly."""
    return {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "created_epoch": started, "experiment_name": ctx.plan.name, "settings_file": ctx.plan.file,
            "models_config": ctx.registry.path, "project_root": ctx.options.project_root, "launch": ns.launch,
            "only": ns.only, "probe_timeout": ns.timeout, "seed": seed,
            "options": {"require_preflight": options.require_preflight, "strict": options.strict,
                        "timeout": options.timeout, "grace": options.grace,
                        "max_retries": options.max_retries, "retry_delay": options.retry_delay,
                        "wait_for_gpu": options.wait_for_gpu, "backend": options.backend,
                        "observe": options.observe},
            "argv": list(sys.argv), "experiments": [j.to_dict() for j in jobs],
            **({"slurm": slurm.to_dict()} if slurm else {})}


def _energy(args, ctx, base_report, preflights):
    """Whether and how experiments are measured with perf (judged in the children's environment)."""
    from runner.energy import EnergyPlan
    from runner.energy import plan as energy_plan

    if args.no_energy:
        return EnergyPlan(why_not="--no-energy")
    some = next(iter(preflights.values()), None)
    return energy_plan(ctx, base_report, some.child.popen_env() if some else ctx.launch.env,
                       some.child.prefix if some else ())


def _say_preflight(say, jobs, preflights, options) -> None:
    blocked = [pf for pf in preflights.values() if pf.verdict == BLOCKED]
    unverified = [pf for pf in preflights.values() if pf.verdict == UNVERIFIED]
    say(f"preflight: {len(jobs) - len(blocked) - len(unverified)} can run, {len(blocked)} blocked"
        + ("" if options.require_preflight or not blocked else " (running them anyway: no --require-preflight)")
        + (f", {len(unverified)} unverified" + (" (held back: --strict)" if options.strict else " (running them: no --strict)")
           if unverified else ""))


def run(args) -> int:
    from doctor.cli import UsageError
    from core.ownership import sudo_owner
    from runner.batch import Batch, new_run_dir, new_run_token
    from runner.execute import StopRequest
    from runner.launchenv import preflight
    from runner.manifest import load_manifest
    from runner.results import write_json

    _check_args(args)
    started = time.time()
    manifest = load_manifest(os.path.abspath(args.resume)) if args.resume else None
    if manifest is None and not args.settings:
        raise UsageError("-ec FILE is required (the settings file of the batch), or --resume RUN_DIR")
    ctx, ns = _context(args, manifest)
    console = Console()
    say = console.say
    seed, jobs, draws = _jobs(args, ctx, manifest)
    options = _options_from(args, manifest)
    if options.max_retries < 0:
        options.max_retries = ctx.plan.max_retries
    slurm = None
    if options.backend == "slurm":
        from runner.backends import slurm_batch

        slurm = slurm_batch.slurm_options(args, manifest)
    _refuse_invalid(args, ctx)
    held = None if args.dry_run else _settings_gate(args, ctx, jobs, options, say)
    if held is not None:
        return held

    quiet_progress = (lambda _m: None) if (args.json and args.dry_run) else say
    for line in draws.lines() if draws else ():  # before anything runs: history, repeats
        quiet_progress(line)
    base_report, preflights = preflight(ctx, [j.experiment for j in jobs], progress=quiet_progress)
    energy = _energy(args, ctx, base_report, preflights)
    if args.dry_run:
        return _dry_run(args, ctx, jobs, preflights, seed, energy,
                        extra=dict(slurm_batch.dry_run_extra(slurm, args.results_dir or "results", len(jobs)) if slurm else {},
                                   dedup=draws.to_dict()))

    owner = sudo_owner()
    if manifest is not None:
        run_dir = os.path.abspath(args.resume)
        since = float(manifest.get("created_epoch") or started) - 1.0
    else:
        results_dir = os.path.abspath(args.results_dir) if args.results_dir else os.path.join(
            ctx.options.project_root, "results")
        if slurm:
            slurm_batch.check_submission(ctx, slurm, preflights, results_dir)
        try:
            run_dir = new_run_dir(results_dir, owner)
        except OSError as e:
            raise UsageError(f"--results-dir {results_dir}: cannot create a run folder: {e.strerror}") from None
        since = started - 1.0
        write_json(os.path.join(run_dir, "run.json"), dict(_run_json(ctx, ns, options, jobs, seed, started, slurm),
                                                           dedup=draws.to_dict(), run_token=new_run_token(run_dir)))
    say(f"mutation-run: {ctx.plan.name}: {len(jobs)} experiment(s) -> {run_dir}")
    _say_preflight(say, jobs, preflights, options)

    stop = StopRequest().install()
    if slurm:
        batch = slurm_batch.SlurmBatch(ctx=ctx, jobs=jobs, preflights=preflights, run_dir=run_dir, options=options,
                                       slurm=slurm, say=say, stop=stop, no_energy=args.no_energy)
    else:
        batch = Batch(ctx=ctx, jobs=jobs, preflights=preflights, run_dir=run_dir, options=options, say=say, stop=stop,
                      owner=owner, since=since, energy=energy)
    if energy.perf:
        say(f"energy: {len(energy.experiments)} experiment(s) measured with {energy.perf} stat ({', '.join(energy.events)})")
    elif energy.asked:
        say(f"energy: not measured ({energy.why_not})")
    if manifest is None:
        batch.take_snapshot()  # after a crash the snapshot is gone: a resume relies on the run's start time
    try:
        outcomes = batch.run(resume=manifest is not None)
    finally:
        stop.restore()
        batch.backend.close()
        changed = batch.give_back_all()
        if changed:
            say(f"gave {len(changed)} file(s) created as root back to {owner[2]}")
    return _finish(args, ctx, jobs, outcomes, stop, run_dir, say)


def _finish(args, ctx, jobs, outcomes, stop, run_dir: str, say) -> int:
    """The summary line, the exit code, and with --json the outcome object."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    not_started = len(jobs) - len(outcomes)
    say(f"summary: {counts['passed']} passed, {counts['failed']} failed, {counts['blocked']} blocked"
        + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "")
        + (f", {not_started} not started" if not_started else "")
        + f" -> {os.path.join(run_dir, 'summary.csv')}")
    if stop.requested:
        say(f"stopped; continue with: mutation-run --resume {shlex.quote(run_dir)}")
        code = stop.exit_code
    else:
        failing = any(f.status == FAIL for f in ctx.plan.findings)  # entries the file asked for and that did not run
        code = 0 if jobs and counts["passed"] == len(jobs) and not failing else 1
    if args.json:
        json.dump({"format_version": FORMAT_VERSION, "run_dir": run_dir, "exit_code": code, "counts": counts,
                   "not_started": not_started,
                   "experiments": [{"id": o.id, "status": o.status, "verdict": o.verdict, "exit_code": o.exit_code,
                                    "attempts": o.attempts, "duration_seconds": round(o.duration, 3),
                                    "metrics": dict(o.metrics), "warnings": list(o.warnings)} for o in outcomes]},
                  sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    from doctor.cli import guarded

    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    return guarded("mutation-run", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
