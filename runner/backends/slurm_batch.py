"""The submitter of a Slurm batch: one job array for the experiments, followed to their end.

It owns the run folder's shared files (journal.jsonl, summary.csv); each job writes only its
experiment folder (runner/nodejob.py). The journal gets the submission before sbatch runs and the
job ids after, so a `--resume` after the submitter was killed re-attaches to the running jobs
(found by name if it died in between) and submits only what never ran. A job that ended without
its record (killed by a signal, out of memory, a lost node) is recorded here from Slurm's
accounting; a record whose job was stopped by Slurm's time limit says so. Ctrl-C cancels the
batch's jobs (scancel; a second Ctrl-C sends SIGKILL) and waits, bounded, for their records.
"""
from __future__ import annotations

import errno
import os
import shlex
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from core.errors import UsageError
from runner.backends.slurm import (SlurmOptions, accounting, cancel, executor, kill_wait, queue,
                                   submitted_by_name)
from runner.backends.slurm import add_slurm_args, check_submission, dry_run_extra, slurm_options  # noqa: F401 - for runner/cli.py

POLL = 1.0  # seconds between two looks at the queue (one squeue for the whole batch)
QUEUED = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED")
ENDED_STATES = {"TIMEOUT": "killed by Slurm at the job's time limit{limit}",
                "OUT_OF_MEMORY": "killed by Slurm: out of memory (raise --mem)",
                "NODE_FAIL": "the node {node} failed under the job",
                "PREEMPTED": "preempted by Slurm",
                "BOOT_FAIL": "the node {node} failed to boot for the job",
                "DEADLINE": "killed by Slurm at the job's deadline"}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE"}
ORDER = ("pending", "running", "passed", "failed", "blocked", "interrupted")


class Progress:
    """Per-state counts: one line updated in place on a terminal, a plain line per change when piped."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = ""
        self.shown = False

    def show(self, counts: Mapping[str, int]) -> None:
        line = "slurm: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in ORDER if counts.get(k) or k in ORDER[:3])
        if line == self.last:
            return
        self.last = line
        try:
            self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
            self.stream.flush()
            self.shown = self.tty
        except (OSError, ValueError):
            pass

    def clear(self) -> None:
        """Before another message: end the in-place line."""
        if self.shown:
            try:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.shown = False
            self.last = ""


def exit_signal(code: str) -> Tuple[Optional[int], Optional[int]]:
    """sacct's ExitCode "code:signal" as (exit code, signal number)."""
    a, _, b = (code or "").partition(":")
    try:
        return int(a), (int(b) or None) if b else None
    except ValueError:
        return None, None


class SlurmBatch:
    """Submits the batch's experiments as one job array, follows them to their end, records what
    the jobs could not, and keeps the journal and summary.csv. `run()` returns the outcomes."""

    def __init__(self, *, ctx, jobs, preflights, run_dir: str, options, slurm: SlurmOptions, say, stop,
                 no_energy: bool = False, progress: Optional[Progress] = None):
        self.ctx, self.jobs, self.preflights, self.run_dir = ctx, list(jobs), preflights, run_dir
        self.opt, self.slurm, self.stop, self.no_energy = options, slurm, stop, no_energy
        self.progress = progress or Progress()
        self._say = say
        self.run_id = os.path.basename(run_dir)
        self.job_name = f"mutation-run.{self.run_id}"
        self.by_id = {j.id: j for j in self.jobs}
        self.records: Dict[str, dict] = {}
        self.open: Dict[str, str] = {}  # Slurm job id -> experiment id, not ended yet
        self.states: Dict[str, str] = {}  # experiment id -> pending | running
        self.gone: Dict[str, float] = {}  # job id -> when it left the queue without a record seen
        self.cancelled = False
        self.journal = None
        from core.safefs import SafeTree

        # the submitter acts as the user who runs it: nothing to give back, but no link is followed
        self.tree = SafeTree(run_dir, None, create=False, say=say)
        from runner.backends.slurm import SlurmBackend

        self.backend = SlurmBackend()

    def take_snapshot(self) -> None:
        """The jobs run as the submitting user: nothing to hand back (the local batch's interface)."""

    def give_back_all(self) -> list:
        return []

    def say(self, msg: str, **kw) -> None:
        self.progress.clear()
        self._say(msg, **kw)

    def _exp_path(self, eid: str, name: str = "experiment.json") -> str:
        return os.path.join(self.run_dir, eid, name)

    # -- the run ------------------------------------------------------------------------------------
    def run(self, resume: bool = False):
        from runner.results import Journal

        self.journal = Journal(os.path.join(self.run_dir, "journal.jsonl"), self.tree)
        try:
            self.journal.write("run-resume" if resume else "run-start", pid=os.getpid(), run_id=self.run_id,
                               backend="slurm")
            todo = self._resume_state() if resume else list(self.jobs)
            todo = self._login_filter(todo)
            if todo and not self.stop.requested:
                self._submit(todo)
            self._watch()
            self.write_summary()
            outcomes = self.outcomes()
            self.journal.write("run-end", interrupted=self.stop.requested,
                               counts={s: sum(o.status == s for o in outcomes) for s in ORDER[2:]})
        finally:
            self.journal.close()
        return outcomes

    def write_summary(self) -> None:
        from runner.results import write_summary

        order = [j.id for j in self.jobs if j.id in self.records]
        write_summary(os.path.join(self.run_dir, "summary.csv"), [self.records[i] for i in order], self.tree)

    def outcomes(self):
        from runner.batch import Outcome

        out = []
        for j in self.jobs:
            r = self.records.get(j.id)
            if r is None:
                continue
            user = r.get("foreground") if isinstance(r.get("foreground"), dict) else r
            out.append(Outcome(j.id, r.get("status", "failed"), (r.get("preflight") or {}).get("verdict", ""),
                               r.get("exit_code"), len(r.get("attempts") or ()), user.get("duration_seconds") or 0.0,
                               user.get("performance_metrics") or {}, tuple(r.get("warnings") or ()),
                               "" if r.get("status") == "passed" else user.get("error_message", "")))
        return out

    # -- resume: re-attach to what was submitted, submit only what never ran -----------------------------
    def _resume_state(self) -> list:
        from runner.results import Journal, read_json

        ended: Dict[str, str] = {}
        jobs: Dict[str, str] = {}
        unconfirmed: List[dict] = []
        for ev in Journal.read(os.path.join(self.run_dir, "journal.jsonl")):
            kind, eid = ev.get("event"), ev.get("experiment_id")
            if kind == "experiment-end" and eid:
                ended[eid] = ev.get("status")
                jobs.pop(eid, None)
            elif kind == "slurm-submitting":
                unconfirmed.append(ev)
            elif kind == "slurm-submitted":
                unconfirmed = [u for u in unconfirmed if u.get("folder") != ev.get("folder")]
                for e, jid in (ev.get("jobs") or {}).items():
                    jobs[e] = jid
                    ended.pop(e, None)
        for ev in unconfirmed:  # the submitter died between sbatch and the journal: find them by name
            found = sorted(submitted_by_name(self.job_name, ev.get("since") or "now-1days"), key=_task_index)
            ids = list(ev.get("experiments") or [])
            if len(found) == len(ids):
                jobs.update({e: jid for e, jid in zip(ids, found) if e not in ended})
        todo = []
        for j in self.jobs:
            rec = read_json(self._exp_path(j.id))
            if ended.get(j.id) in ("passed", "failed") and isinstance(rec, dict):
                self.records[j.id] = rec
                self.say(f"{j.id}: {ended[j.id]} before, not run again")
            elif j.id in jobs:
                self.open[jobs[j.id]] = j.id
                self.say(f"{j.id}: re-attached to Slurm job {jobs[j.id]}")
            else:
                todo.append(j)
        return todo

    # -- before submission ---------------------------------------------------------------------------------
    def _login_filter(self, todo: list) -> list:
        """The login node's verdict is a first filter only: what the settings forbid is not submitted;
        everything about caches, environment and the machine is decided on the node."""
        if not self.opt.require_preflight:
            return todo
        out = []
        for j in todo:
            pf = self.preflights[j.id]
            settled = [f.id for f in pf.findings if f.id in pf.blocked_by and f.group == "settings"]
            if settled:
                self._record_here(j, "blocked", "blocked by preflight: " + ", ".join(settled), slurm={})
                self.say(f"{j.id}: blocked by {', '.join(settled)} (not submitted)", fixes=pf.fixes())
            else:
                out.append(j)
        return out

    def _record_here(self, job, status: str, message: str, slurm: dict, excerpt: Sequence[str] = (),
                     duration: float = 0.0, exit_code: Optional[int] = None) -> dict:
        """A record written by the submitter: for an experiment no job ran, or whose job died without one."""
        from runner.batch import user_timestamp
        from runner.command import side_command
        from runner.results import experiment_record, write_json

        pf = self.preflights[job.id]
        cmd, cwd = side_command(self.ctx.registry, job.foreground)
        rec = experiment_record(job=job, status=status, timestamp=user_timestamp(), duration=duration,
                                exit_code=exit_code, attempts=[], metrics={}, error_message=message,
                                error_excerpt=list(excerpt), preflight=pf.record(),
                                launch=pf.child.record(argv=cmd, cwd=cwd), warnings=list(job.warnings),
                                extra={"slurm": slurm})
        self.tree.mkdirs(job.id)
        write_json(self._exp_path(job.id), rec, self.tree)
        self.records[job.id] = rec
        self.journal.write("experiment-end", experiment_id=job.id, status=status, by="submitter",
                           job_id=slurm.get("job_id"), slurm_state=slurm.get("state"))
        return rec

    def _submit(self, todo: list) -> None:
        from runner.nodejob import NodeTask, run_experiment

        base = os.path.join(self.run_dir, "slurm")
        self._private_folder("slurm")
        n = 1 + sum(1 for d in os.listdir(base) if d.isdigit())
        folder = os.path.join(base, str(n))
        wait = kill_wait()
        tasks = []
        for j in todo:
            pf = self.preflights[j.id]
            # the launch context's environment: the node applies the runner's policy (caches, offline,
            # interpreter) again in its own view, as the local backend does here
            tasks.append(NodeTask(run_dir=self.run_dir, experiment_id=j.id, env=dict(self.ctx.launch.env),
                                  env_set=dict(pf.child.env_set), no_energy=self.no_energy, kill_wait=wait,
                                  login={"verdict": pf.verdict, "blocked_by": list(pf.blocked_by)}))
        self.journal.write("slurm-submitting", folder=folder, experiments=[t.experiment_id for t in tasks],
                           since=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60)))
        try:
            ex = executor(self.slurm, folder, self.job_name)
            submitted = ex.map_array(run_experiment, tasks)
        except Exception as e:  # noqa: BLE001 - sbatch refused: one clear line, nothing was started
            from core.secrets import mask_text

            why = mask_text(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            self.journal.write("slurm-submit-failed", folder=folder, error=why)
            raise SubmitError(f"sbatch refused the batch: {why}") from None
        ids = {t.experiment_id: j.job_id for t, j in zip(tasks, submitted)}
        self.journal.write("slurm-submitted", folder=folder, jobs=ids)
        for eid, jid in ids.items():
            self.open[jid] = eid
        first = next(iter(ids.values()), "")
        self.say(f"submitted {len(ids)} experiment(s) as Slurm job {first.split('_')[0]} "
                 f"({self.job_name}; logs in {folder})")

    # -- following the jobs ------------------------------------------------------------------------------------
    def _watch(self) -> None:
        deadline = None
        failures_since = None
        while self.open:
            now = time.monotonic()
            if self.stop.requested and not self.cancelled:
                self.cancelled = True
                self.say(f"stopping: cancelling {len(self.open)} Slurm job(s) (scancel)")
                cancel(list(self.open))
                deadline = now + kill_wait() + 30
            elif self.stop.count >= 2 and self.cancelled and deadline and deadline - now > 5:
                cancel(list(self.open), "KILL")
                deadline = now + 5
            q = queue(self.job_name)
            if q is None:
                failures_since = failures_since or now
                if now - failures_since > 120:
                    self.say("squeue has not answered for 2 minutes: giving up on following the jobs; "
                             f"continue with: mutation-run --resume {shlex.quote(self.run_dir)}")
                    return
                time.sleep(POLL)
                continue
            failures_since = None
            self._step(q)
            if deadline is not None and now > deadline:
                for jid in list(self.open):
                    self._finish(jid, {}, forced=True)
                return
            if self.open:
                time.sleep(POLL)
        self.progress.clear()

    def _step(self, q: Mapping[str, Tuple[str, str]]) -> None:
        gone = [jid for jid in self.open if jid not in q]
        for jid, eid in self.open.items():
            if jid in q:
                self.states[eid] = "pending" if q[jid][0] in QUEUED else "running"
        if gone:
            acct = accounting(gone)
            for jid in gone:
                self._finish(jid, acct.get(jid) or {})
        counts = {k: 0 for k in ORDER}
        for eid in self.open.values():
            counts[self.states.get(eid, "pending")] += 1
        for r in self.records.values():
            counts[r.get("status", "failed")] = counts.get(r.get("status", "failed"), 0) + 1
        self.progress.show(counts)

    def _finish(self, jid: str, acct: Mapping[str, str], forced: bool = False) -> None:
        """A job left the queue: take its record, or write one from Slurm's accounting."""
        from runner.results import read_json

        eid = self.open[jid]
        state = acct.get("state", "")
        rec = read_json(self._exp_path(eid))
        mine = isinstance(rec, dict) and (rec.get("slurm") or {}).get("job_id") == jid
        if not forced:
            # sacct may be a moment behind squeue, and the record behind the job (a network filesystem)
            waited = time.monotonic() - self.gone.setdefault(jid, time.monotonic())
            if state not in FINAL_STATES and waited < (5 if mine else 15):
                return
            if not mine and state == "COMPLETED" and waited < 15:
                return
        del self.open[jid]
        self.states.pop(eid, None)
        job = self.by_id[eid]
        node = acct.get("node") or ((rec or {}).get("slurm") or {}).get("node", "") if mine else acct.get("node", "")
        info = {"job_id": jid, "state": state, "node": node, "exit_code": acct.get("exit_code", ""),
                "step_signal": acct.get("step_signal"), "elapsed": acct.get("elapsed", ""), "log": self._log_path(jid)}
        if mine:
            rec = self._amend(rec, info)
        else:
            rec = self._lost(job, info)
        self.records[eid] = self._merge_lock(job, rec, node)
        if mine:
            self.journal.write("experiment-end", experiment_id=eid, status=rec["status"], job_id=jid, node=node,
                               slurm_state=state)
        self._tell(eid, rec, node)
        self.write_summary()

    def _merge_lock(self, job, rec: dict, node: str) -> dict:
        """The needs lock is the submitter's to write: what a passed job observed on its node (its
        needs.json) is merged here, once, so jobs on many nodes never write the shared lock; the
        record then names the lock, as the local backend's does."""
        from core import needslock
        from runner.execute import now_iso
        from runner.results import read_json, write_json

        observed = rec.get("observed") if isinstance(rec.get("observed"), dict) else {}
        needs = read_json(self._exp_path(job.id, "needs.json"))
        if rec.get("status") != "passed" or observed.get("lock") or not isinstance(needs, dict) \
                or not needs.get("observed"):
            return rec
        path = needslock.path_for(self.ctx.options, self.ctx.registry.path)
        try:
            needslock.update(path, job.foreground.repo, job.foreground.model, needs,
                             needslock.Seen(run=f"{self.run_id}/{job.id}", at=now_iso(), machine=node))
        except (OSError, needslock.LockError) as e:
            error = f"{path}: {getattr(e, 'strerror', None) or e}"
            self.say(f"    needs lock not updated: {error}")
            rec = dict(rec, observed=dict(observed, lock_error=error))
        else:
            self.journal.write("needs-lock-merged", experiment_id=job.id, lock=path)
            rec = dict(rec, observed=dict(observed, lock=path))
        write_json(self._exp_path(job.id), rec, self.tree)
        return rec

    def _private_folder(self, name: str) -> None:
        """run_dir/name, made through the tree (no link followed) and readable by its owner only."""
        if not self.tree.mkdirs(name):
            reason = self.tree.refused[-1].reason if self.tree.refused else "cannot create it"
            raise OSError(errno.EPERM, f"{os.path.join(self.run_dir, name)}: {reason}")
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.tree.fd)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    def _log_path(self, jid: str) -> str:
        root, _, task = jid.partition("_")
        for folder in sorted(os.listdir(os.path.join(self.run_dir, "slurm")), reverse=True):
            path = os.path.join(self.run_dir, "slurm", folder, f"{jid}_0_log.out")
            if os.path.exists(path):
                return path
        return ""

    def _amend(self, rec: dict, info: Mapping[str, str]) -> dict:
        """The job's own record, with what only Slurm knows: a time limit or a kill ended it."""
        from runner.results import write_json

        slurm = dict(rec.get("slurm") or {}, **{k: v for k, v in info.items() if k != "node" or v})
        rec = dict(rec, slurm=slurm)
        why = self._slurm_reason(info)
        user = rec["foreground"] if isinstance(rec.get("foreground"), dict) else rec
        if rec.get("status") in ("interrupted", "failed") and why and not self.cancelled:
            user["error_message"] = f"{why} ({user.get('error_message', '')})"
            user["training_success"] = False
            rec["status"] = "failed"
        elif rec.get("status") == "failed" and self.cancelled and info["state"] == "CANCELLED":
            # Slurm's SIGTERM reached the experiment's processes before the node job could stop them
            user["error_message"] = f"interrupted: cancelled by the runner (Ctrl-C) ({user.get('error_message', '')})"
            rec["status"] = "interrupted"
        write_json(self._exp_path(rec["experiment_id"]), rec, self.tree)  # the job has ended: the folder is ours again
        return rec

    def _slurm_reason(self, info: Mapping[str, str]) -> str:
        state = info.get("state", "")
        limit = f" (--time {self.slurm.time})" if self.slurm.time else ""
        if state in ENDED_STATES:
            return ENDED_STATES[state].format(limit=limit, node=info.get("node") or "?")
        sig = info.get("step_signal") or exit_signal(info.get("exit_code", ""))[1]
        killed = f"killed by signal {_signal_name(sig)}" if sig else ""
        if state == "CANCELLED" and not self.cancelled:
            return (killed + ": " if killed else "") + "cancelled outside the runner (scancel)"
        return f"the job was {killed}" if killed else ""

    def _lost(self, job, info: Mapping[str, str]) -> dict:
        """No record from the job: it died before writing one, or never started."""
        from core.secrets import mask_text
        from runner.logtail import error_excerpt, read_tail

        why = self._slurm_reason(info)
        if self.cancelled:
            status, why = "interrupted", "cancelled by the runner (Ctrl-C): scancel"
        else:
            status = "failed"
            why = why or (f"the Slurm job ended {info.get('state') or 'in an unknown state'} without writing a record"
                          + (f" (exit code {info['exit_code']})" if info.get("exit_code") else ""))
        env = self.preflights[job.id].child.popen_env()
        lines = read_tail(info["log"]) if info.get("log") else []
        excerpt = [mask_text(x, env) for x in error_excerpt(lines)] if lines else []
        code, _sig = exit_signal(info.get("exit_code", ""))
        return self._record_here(job, status, f"{why} on node {info.get('node') or '?'} (Slurm job {info['job_id']})",
                                 slurm=dict(info), excerpt=excerpt, exit_code=code if code else None,
                                 duration=elapsed_seconds(info.get("elapsed", "")))

    def _tell(self, eid: str, rec: Mapping[str, object], node: str) -> None:
        user = rec["foreground"] if isinstance(rec.get("foreground"), dict) else rec
        mark = {"passed": "✓", "failed": "✗", "interrupted": "■", "blocked": "⊘"}.get(rec.get("status"), "?")
        detail = "" if rec.get("status") == "passed" else f": {user.get('error_message', '')}"
        self.say(f"{mark} {eid} {rec.get('status')} on {node or '?'} in {user.get('duration_seconds') or 0:.1f} s{detail}")


class SubmitError(UsageError):
    """sbatch refused the batch: one line on the terminal, exit 2 (nothing was started)."""


def elapsed_seconds(text: str) -> float:
    """sacct's Elapsed ([D-]HH:MM:SS) in seconds; 0 when unreadable."""
    days, _, hms = (text or "").rpartition("-")
    try:
        parts = [int(x) for x in hms.split(":")]
        return float(int(days or 0) * 86400 + sum(v * 60 ** i for i, v in enumerate(reversed(parts))))
    except ValueError:
        return 0.0


def _signal_name(num: int) -> str:
    import signal

    try:
        return f"{num} ({signal.Signals(num).name})"
    except ValueError:
        return str(num)


def _task_index(jid: str) -> int:
    _, _, task = jid.partition("_")
    return int(task) if task.isdigit() else 0
