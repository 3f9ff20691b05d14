"""The batch: gate, launch, retry, record, resume.

`Batch` takes the expanded jobs and their preflights and runs them one after another into a run
folder, keeping the journal so that a `--resume` after any interruption continues exactly where
the batch stopped.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from core.safefs import Owner, SafeTree
from core.secrets import mask_text
from core.vocab import BLOCKED, PASS, UNVERIFIED
from runner import gpuwatch
from runner.backends.base import TOKEN_VAR, Backend, JobSpec
from runner.command import side_command
from runner.energy import EnergyPlan
from runner.energy import read_metrics as read_energy
from runner.execute import LOG, AttemptLoop, Attempts, StopRequest
from runner.expand import Job
from runner.launchenv import Preflight, observe, record_observation
from runner.logtail import error_excerpt, extract_metrics, read_tail
from runner.results import STATUSES, Journal, experiment_record, journal_state, read_json, write_json, write_summary

BG_LOG = "background.log"
SUMMARY_EVERY = 1.0
UNVERIFIED_RAN = ("preflight could not verify this experiment (none of its needs could be established); "
                  "it ran anyway: mutation-run --strict holds such experiments back")
NO_METRIC = "trained nothing? exit code 0 but none of the registry's log_patterns ({}) matched the log"


@dataclass
class Options:
    """How the batch runs (from the command line, or run.json when resuming)."""

    require_preflight: bool = False
    timeout: Optional[float] = None
    grace: float = 10.0
    max_retries: int = 2
    retry_delay: float = 10.0
    wait_for_gpu: float = 0.0
    stream: bool = True
    json_out: bool = False
    backend: str = "local"
    strict: bool = False  # verdict unverified is held back too
    observe: bool = True  # the observer in the experiments' Python processes (runner.launchenv.observe)


@dataclass
class Outcome:
    """One experiment's end, as the terminal summary and the exit code see it."""

    id: str
    status: str
    verdict: str
    exit_code: Optional[int] = None
    attempts: int = 0
    duration: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    warnings: Sequence[str] = ()
    reason: str = ""


@dataclass
class JobPlan:
    """What an experiment will run: the foreground job, the background job (parallel mode), the
    experiment.json `launch` object, warnings so far, whether energy is measured, its timestamp."""

    spec: JobSpec
    background: Optional[JobSpec]
    launch: dict
    warnings: List[str]
    measured: bool
    timestamp: str


def held_back(verdict: str, require_preflight: bool, strict: bool) -> bool:
    """Whether the gate keeps an experiment of this verdict from starting: blocked ones under
    --require-preflight, unverified ones too under --strict (which implies --require-preflight)."""
    return require_preflight and (verdict == BLOCKED or (strict and verdict == UNVERIFIED))


def user_timestamp() -> str:
    """mutation.py's timestamp format (naive local time, microseconds)."""
    return _dt.datetime.now().isoformat()


def new_run_dir(results_dir: str, owner: Optional[tuple] = None) -> str:
    """A new run_YYYYmmdd_HHMMSS[_N] folder in `results_dir` (made when missing). Acting for a
    sudo user (`owner`), the folders made on the way are theirs at once; the run folder is given
    back by the batch; an existing results folder keeps its owner. OSError when it cannot be made."""
    with SafeTree(results_dir, Owner(owner[0], owner[1]) if owner else None, hold=True) as parent:
        if parent.fd is None:
            raise OSError(errno.EPERM, parent.refused[-1].reason if parent.refused else "cannot open it")
        base = "run_" + _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        for n in range(1, 1000):
            name = base if n == 1 else f"{base}_{n}"
            if parent.mkdir_new(name):
                return os.path.join(parent.root, name)
    raise OSError(errno.EEXIST, f"no free run folder name in {results_dir}")


def new_run_token(run_dir: str) -> str:
    """The run token of a new run: its folder's name and a random part, so two batches started in
    the same second (even in different results folders) never mark their jobs alike. Stored in
    run.json and reused by --resume to find its own leftovers."""
    import secrets

    return f"{os.path.basename(run_dir)}.{secrets.token_hex(6)}"


def run_token(run_dir: str) -> str:
    """The run token run.json recorded, else the folder's name (runs recorded before it had one)."""
    manifest = read_json(os.path.join(run_dir, "run.json"))
    token = manifest.get("run_token") if isinstance(manifest, dict) else None
    if isinstance(token, str) and 0 < len(token) <= 200 and all(c.isalnum() or c in "._-" for c in token):
        return token
    return os.path.basename(run_dir)


class Batch:
    def __init__(self, *, ctx, jobs: Sequence[Job], preflights: Mapping[str, Preflight], run_dir: str,
                 options: Options, say: Callable[[str], None], stop: StopRequest,
                 owner: Optional[tuple] = None, since: Optional[float] = None, energy: Optional[EnergyPlan] = None,
                 backend: Optional[Backend] = None):
        self.ctx, self.jobs, self.preflights, self.run_dir = ctx, list(jobs), preflights, run_dir
        self.opt, self.say, self.stop = options, say, stop
        self.owner, self.since = owner, since
        self.tree = SafeTree(run_dir, Owner(owner[0], owner[1]) if owner else None, create=False, hold=True, say=say)
        self.run_before = None  # see run(): what the run folder held before this run (never given away)
        self.energy = energy or EnergyPlan()
        if backend is None:
            from runner import backends

            backend = backends.get(options.backend)
        self.backend = backend
        self.before = None  # see take_snapshot()
        self.run_id = os.path.basename(run_dir)
        self.token = run_token(run_dir)  # marks every job's processes (TOKEN_VAR): <token>/<experiment>
        self.records: Dict[str, dict] = {}
        self._summary_at = float("-inf")
        self.outcomes: List[Outcome] = []
        self.journal: Optional[Journal] = None
        self.stream = None
        if options.stream:
            self.stream = (sys.stderr if options.json_out else sys.stdout).buffer

    # -- bookkeeping ---------------------------------------------------------------------------
    def _exp_dir(self, job: Job) -> str:
        return os.path.join(self.run_dir, job.id)

    def _write(self, job: Job, record: dict) -> None:
        write_json(os.path.join(self._exp_dir(job), "experiment.json"), record, self.tree)
        self.records[job.id] = record
        # summary.csv is derived from the records (rebuilt at the end and on --resume): after an
        # experiment it is rewritten unless the last rewrite was under a second ago
        if time.monotonic() - self._summary_at >= SUMMARY_EVERY:
            self.write_summary()

    def write_summary(self) -> None:
        order = [j.id for j in self.jobs if j.id in self.records]
        write_summary(os.path.join(self.run_dir, "summary.csv"), [self.records[i] for i in order], self.tree)
        self._summary_at = time.monotonic()

    def _give_back_run_dir(self) -> List[str]:
        """Running as root for a sudo user: hand back what the run created in its results folder."""
        if self.owner is None:
            return []
        from core.ownership import give_back

        uid, gid = self.owner[0], self.owner[1]
        return list(give_back([self.run_dir], uid, gid, before=self.run_before).changed)

    def give_back_all(self) -> List[str]:
        """Running as root for a sudo user: hand back what the run created in the results folder,
        in the caches its children used under the user's home, and in the repos under it."""
        if self.owner is None:
            return []
        from core.ownership import give_back

        uid, gid, _user, home = self.owner
        changed = self._give_back_run_dir()
        roots = self.home_roots()
        if roots:
            changed += give_back(roots, uid, gid, since=self.since, within=home, before=self.before).changed
        return changed

    def home_roots(self) -> List[str]:
        """Folders under the invoking user's home the run may write to as root: the caches its
        children use, the repos (checkpoints, logs), the doctor's memo folder (under `sudo -E`)."""
        if self.owner is None or not self.owner[3]:
            return []
        from core.memo import memo_dir

        prefix = self.owner[3].rstrip("/") + "/"
        roots = {memo_dir(self.ctx.options)}
        for pf in self.preflights.values():
            roots.update((pf.child.launch.hf_cache, pf.child.launch.torch_hub))
        for job in self.jobs:
            for side in (job.foreground, job.background):
                if side is not None and side.repo in self.ctx.registry.repos:
                    roots.add(self.ctx.registry.repos[side.repo].path)
        return sorted(r for r in roots if r.startswith(prefix))

    def take_snapshot(self) -> None:
        """Root-owned entries under the user's folders before the run: they stay root's."""
        if self.owner is not None:
            from core.ownership import snapshot

            self.before = snapshot(self.home_roots())

    # -- resume ---------------------------------------------------------------------------------
    def resume_state(self) -> Dict[str, dict]:
        """What the journal says; experiments the runner died under are recorded `interrupted`."""
        state = journal_state(Journal.read(os.path.join(self.run_dir, "journal.jsonl")))
        for job in self.jobs:
            st = state.get(job.id)
            if st is None:
                continue
            rec = read_json(os.path.join(self._exp_dir(job), "experiment.json"))
            if st["status"] in ("passed", "failed") and isinstance(rec, dict):
                self.records[job.id] = rec
                continue
            if st["status"] in ("passed", "failed"):
                st["status"] = None  # its record is gone: run it again
            if st["status"] is None and (st["open_attempt"] or st["attempts"]):
                attempts = list(st["attempts"])
                if st["open_attempt"]:
                    a = st["open_attempt"]
                    log = os.path.join(self._exp_dir(job), a.get("log") or LOG)
                    try:
                        started = _dt.datetime.fromisoformat(a["started"]).timestamp()
                        duration = max(0.0, os.path.getmtime(log) - started)
                    except (OSError, TypeError, ValueError, KeyError):
                        duration = 0.0
                    attempts.append({"attempt": a.get("attempt"), "log": a.get("log") or LOG, "started": a.get("started"),
                                     "duration_seconds": round(duration, 3), "exit_code": None, "signal": None,
                                     "timed_out": False, "retry_reason": None, "interrupted": True,
                                     "note": "the runner stopped during this attempt (kill -9, crash or power loss)"})
                st["attempts"] = attempts
                st["status"] = "interrupted"
                # the crashed runner's children may still be training: stop them before the rerun
                token = f"{self.token}/{job.id}"
                strays = self.backend.sweep([token, token + "/background"])
                st["stragglers"] = strays
                self._open_journal()
                self.journal.write("experiment-end", experiment_id=job.id, status="interrupted", by="resume",
                                   attempts=attempts, stragglers=strays)
                self._record_interrupted(job, attempts, "the runner stopped during this experiment",
                                         extra={"stragglers": strays} if strays else None)
            elif st["status"] == "interrupted" and isinstance(rec, dict):
                self.records[job.id] = rec
                st["attempts"] = list(rec.get("attempts") or st["attempts"])
                st["stragglers"] = list(rec.get("stragglers") or [])
        return state

    def _record_interrupted(self, job: Job, attempts: List[dict], message: str, extra: Optional[dict] = None) -> None:
        pf = self.preflights[job.id]
        log = os.path.join(self._exp_dir(job), LOG)
        lines = read_tail(log)
        self.tree.mkdirs(job.id)
        rec = experiment_record(job=job, status="interrupted", timestamp=user_timestamp(),
                                duration=sum(a.get("duration_seconds") or 0 for a in attempts), exit_code=None,
                                attempts=attempts, metrics={}, error_message=f"interrupted: {message}",
                                error_excerpt=[mask_text(x, pf.child.launch.env) for x in error_excerpt(lines)] if lines else [],
                                preflight=pf.record(), launch=pf.child.record(cwd=self.ctx.registry.repos[job.foreground.repo].path),
                                extra=extra)
        self._write(job, rec)

    def _open_journal(self) -> None:
        if self.journal is None:
            self.journal = Journal(os.path.join(self.run_dir, "journal.jsonl"), self.tree)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> List[Outcome]:
        if self.owner is not None:  # a new run folder is the run's; on --resume what is there stays as it is
            from core.ownership import snapshot

            self.run_before = snapshot([self.run_dir], below=resume)
        self._open_journal()
        state = self.resume_state() if resume else {}
        self.journal.write("run-resume" if resume else "run-start", pid=os.getpid(), run_id=self.run_id,
                           run_token=self.token)
        total = len(self.jobs)
        for i, job in enumerate(self.jobs, 1):
            st = state.get(job.id) or {}
            if st.get("status") in ("passed", "failed") and job.id in self.records:
                rec = self.records[job.id]
                self.outcomes.append(Outcome(job.id, rec.get("status", st["status"]), self.preflights[job.id].verdict,
                                             rec.get("exit_code"), len(rec.get("attempts") or ()), reason="done before resume"))
                self.say(f"[{i}/{total}] {job.id}: {st['status']} before, not run again")
                continue
            if self.stop.requested:
                break
            outcome = self.run_job(i, total, job, prior=list(st.get("attempts") or []),
                                   prior_stragglers=list(st.get("stragglers") or []))
            if outcome is None:
                break
            self.outcomes.append(outcome)
            self._give_back_run_dir()
            if outcome.status == "interrupted":
                break
        self.write_summary()
        interrupted = self.stop.requested
        self.journal.write("run-end", interrupted=interrupted,
                           counts={s: sum(o.status == s for o in self.outcomes) for s in STATUSES})
        self.journal.close()
        self.journal = None
        return self.outcomes

    def run_job(self, i: int, total: int, job: Job, prior: List[dict],
                prior_stragglers: Sequence[dict] = ()) -> Optional[Outcome]:
        """Gate, wait for the GPU, run the experiment's attempts through the backend, record it;
        None when a stop request came before it started (a --resume runs it)."""
        pf = self.preflights[job.id]
        self.tree.mkdirs(job.id)
        plan = self._plan(job)
        if held_back(pf.verdict, self.opt.require_preflight, self.opt.strict):
            return self._record_blocked(i, total, job, plan)
        if pf.verdict == UNVERIFIED:
            plan.warnings.append(UNVERIFIED_RAN)
        extra = self._gpu_before(job, plan.warnings) if self.backend.same_machine else {}
        if self.stop.requested:
            return None  # stopped while waiting for the GPU: not started, --resume runs it
        shown = " ".join(shlex.quote(a) for a in plan.spec.argv)
        note = {PASS: "", UNVERIFIED: " (preflight: unverified, none of its needs could be established; "
                                      "running it: no --strict)"}.get(
            pf.verdict, f" (preflight: blocked by {', '.join(pf.blocked_by)}; running anyway)")
        self.say(f"[{i}/{total}] {job.id}: {mask_text(shown, plan.spec.env)}{note}", rule=True)
        self.journal.write("experiment-start", experiment_id=job.id, argv=list(plan.spec.argv), cwd=plan.spec.cwd)
        t_start = time.monotonic()
        loop = AttemptLoop(self.backend, plan.spec, background=plan.background, options=self.opt, stop=self.stop,
                           journal=self.journal, say=self.say, experiment_id=job.id, stream=self.stream)
        done = loop.run(prior, prior_stragglers)
        return self._record_done(job, plan, done, extra, time.monotonic() - t_start)

    def _plan(self, job: Job) -> "JobPlan":
        """The experiment's command (energy wrap, launch prefix), environment and launch record."""
        pf, exp_dir = self.preflights[job.id], self._exp_dir(job)
        cmd, cwd = side_command(self.ctx.registry, job.foreground)
        token = f"{self.token}/{job.id}"
        measured = self.energy.measures(job.id)
        if measured:
            cmd = self.energy.wrap(cmd, exp_dir)
        launch_rec = pf.child.record(argv=cmd, cwd=cwd, extra_set={TOKEN_VAR: token})
        launch_rec["backend"] = self.backend.name
        env = pf.child.popen_env()
        env[TOKEN_VAR] = token
        argv = list(pf.child.prefix) + list(cmd)
        if self.opt.observe:
            argv, env = observe(argv, env, exp_dir, self.tree)
        spec = JobSpec(tuple(argv), cwd, env, os.path.join(exp_dir, LOG), token,
                       grace=self.opt.grace)
        background = None
        if job.background is not None:
            bg_cmd, bg_cwd = side_command(self.ctx.registry, job.background)
            bg_token = token + "/background"
            background = JobSpec(tuple(pf.child.prefix) + tuple(bg_cmd), bg_cwd, dict(env, **{TOKEN_VAR: bg_token}),
                                 os.path.join(exp_dir, BG_LOG), bg_token, append=True, grace=self.opt.grace)
            launch_rec["background_argv"] = list(background.argv)
            launch_rec["background_cwd"] = bg_cwd
        warnings = list(job.warnings)
        if self.energy.asked and job.id in self.energy.experiments and not measured:
            warnings.append(f"energy not measured: {self.energy.why_not}")
        return JobPlan(spec, background, launch_rec, warnings, measured, user_timestamp())

    def _record_blocked(self, i: int, total: int, job: Job, plan: "JobPlan") -> Outcome:
        pf = self.preflights[job.id]
        why = "blocked by " + ", ".join(pf.blocked_by)
        if pf.verdict == UNVERIFIED:
            why = "unverified (none of its needs could be established), held back by --strict" + (
                f": {', '.join(pf.blocked_by)}" if pf.blocked_by else "")
        self.say(f"[{i}/{total}] {job.id}: {why}", fixes=pf.fixes())
        rec = experiment_record(job=job, status="blocked", timestamp=plan.timestamp, duration=0.0, exit_code=None,
                                attempts=[], metrics={}, error_message="preflight: " + why if pf.verdict == UNVERIFIED
                                else "blocked by preflight: " + ", ".join(pf.blocked_by),
                                error_excerpt=[], preflight=pf.record(), launch=plan.launch, warnings=plan.warnings)
        self.journal.write("experiment-end", experiment_id=job.id, status="blocked", blocked_by=list(pf.blocked_by))
        self._write(job, rec)
        return Outcome(job.id, "blocked", pf.verdict, reason=", ".join(pf.blocked_by) or why)

    def _gpu_before(self, job: Job, warnings: List[str]) -> Dict[str, object]:
        """GPU processes not ours (recorded), and with --wait-for-gpu, wait for the memory the experiment declares."""
        env, extra = self.preflights[job.id].child.launch.env, {}
        snap = gpuwatch.snapshot(env=env)
        foreign = gpuwatch.foreign(snap, {os.getpid()})
        if snap is not None:
            extra["gpu_foreign_processes"] = foreign
            if foreign:
                self.say(f"    {len(foreign)} GPU process(es) not started by this batch: "
                         + ", ".join(f"pid {p['pid']} ({p.get('memory_mib')} MiB)" for p in foreign[:3]))
        need = gpuwatch.gpu_need_gb(job.experiment)
        if self.opt.wait_for_gpu and need:
            ok, waited, free = gpuwatch.wait_for_memory(need, self.opt.wait_for_gpu, env=env, poll=1.0,
                                                        stop=lambda: self.stop.requested, say=self.say)
            extra["gpu_wait_seconds"] = round(waited, 1)
            if not ok:
                warnings.append(f"GPU memory still short after waiting {waited:.0f} s: {free:.1f} GiB free, "
                                f"{need:g} GiB needed")
        return extra

    def _record_done(self, job: Job, plan: "JobPlan", done: Attempts, extra: Dict[str, object],
                     duration: float) -> Outcome:
        """experiment.json, the journal's experiment-end and the terminal line of an experiment that ran."""
        pf, repo, warnings = self.preflights[job.id], self.ctx.registry.repos[job.foreground.repo], plan.warnings
        status, failure, last, log_path = done.status, done.failure, done.last, plan.spec.log_path
        if done.stragglers:
            extra["stragglers"] = done.stragglers
            warnings.append(f"{len(done.stragglers)} process(es) of this experiment were still alive after it ended "
                            "and were killed")
        metrics = extract_metrics(log_path, repo.log_patterns)
        energy_metrics = read_energy(self._exp_dir(job)) if plan.measured else {}
        if plan.measured and not energy_metrics and status == "passed":
            warnings.append("energy not measured: perf wrote no power/energy-pkg/ reading")
        lines = read_tail(log_path) if status != "passed" else []
        excerpt = [mask_text(x, plan.spec.env) for x in error_excerpt(lines)] if lines else []
        exit_code = last.exit_code if last else None
        if status == "passed":
            message = "Training completed successfully"
            if repo.log_patterns and not metrics:
                warnings.append(NO_METRIC.format(", ".join(repo.log_patterns)))
            elif not repo.log_patterns:
                warnings.append("the registry has no log_patterns for this repo: no metric extracted")
        elif status == "interrupted":
            message = f"interrupted: {failure}"
        else:
            message = failure or f"exit code {exit_code}"
        observed = record_observation(self.ctx, job, self._exp_dir(job), self.run_id, status == "passed",
                                      self.owner, self.say, self.tree) if self.opt.observe else None
        if observed is not None:
            extra["observed"] = observed
        record = experiment_record(job=job, status=status, timestamp=plan.timestamp, duration=duration,
                                   exit_code=exit_code, attempts=done.records, metrics=metrics,
                                   error_message=message, error_excerpt=excerpt, preflight=pf.record(), launch=plan.launch,
                                   warnings=warnings, background=done.background, extra=extra, energy=energy_metrics)
        self._write(job, record)
        self.journal.write("experiment-end", experiment_id=job.id, status=status)
        outcome = Outcome(job.id, status, pf.verdict, exit_code, len(done.records), duration,
                          metrics, tuple(warnings), failure)
        self.say_outcome(outcome)
        return outcome

    def say_outcome(self, o: Outcome) -> None:
        mark = {"passed": "✓", "failed": "✗", "interrupted": "■", "blocked": "⊘"}[o.status]
        detail = ""
        if o.status == "passed" and o.metrics:
            detail = " (" + ", ".join(f"{k}={v:g}" for k, v in o.metrics.items()) + ")"
        elif o.reason:
            detail = f": {o.reason}"
        self.say(f"{mark} {o.id} {o.status} in {o.duration:.1f} s after {o.attempts} attempt(s){detail}")
        for w in o.warnings:
            self.say(f"  ! {w}")
