"""The Slurm backend: one Slurm job (an array task) per experiment, submitted with submitit, the
doctor run on the compute node before the experiment (runner/nodejob.py). This module: the options
and the sbatch script, the Slurm commands the submitter uses, and mutation-run's side (its options,
the checks before a submission, the dry run); the submitter itself is runner/backends/slurm_batch.py.

The submitting runner owns the run folder's shared files: run.json, journal.jsonl (the Slurm job
ids go in before and after submission, so a `--resume` after the submitter was killed re-attaches
to its jobs instead of submitting them again) and summary.csv. Each job writes only its experiment
folder. A job that ends without writing its record (killed by a signal, out of memory, the node
lost) is recorded here from Slurm's accounting. Ctrl-C cancels the batch's jobs (scancel) and
waits, bounded, for them to write their records.

Each batch gets a fresh submitit folder (run_dir/slurm/<n>): job ids restart when a cluster's state
is wiped, and an old folder would hand back old results. The folder holds the pickled task with the
child's environment (secrets included), so it is private to the user (0700).
"""
from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from runner.backends.base import Backend, StartError

SETUP_BASE_VAR = "MUTATION_RUN_SETUP_BASE"  # the job's environment before the setup lines (base64 of env -0)
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class SlurmOptions:
    """What `mutation-run --backend slurm` asks Slurm for, per experiment."""

    partition: Optional[str] = None
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None  # Slurm's --mem, e.g. 16G
    time: Optional[str] = None  # Slurm's --time: MINUTES, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    array_parallelism: Optional[int] = None
    sbatch: Tuple[str, ...] = ()  # extra #SBATCH lines ("--qos=high")
    setup: Tuple[str, ...] = ()  # shell lines run before the job's command ("module load cuda/12.1")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "SlurmOptions":
        names = set(cls.__dataclass_fields__)
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (d or {}).items() if k in names}
        return cls(**d)


def time_minutes(text: str) -> int:
    """Slurm's --time in whole minutes (rounded up); ValueError for what Slurm would not accept."""
    s = str(text).strip()
    m = _TIME.match(s)
    if not m:
        raise ValueError(f"--time {text!r}: expected MINUTES, M:S, H:M:S or D-H[:M[:S]] (Slurm's format)")
    days, a, b, c = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = int(days) * 86400 + a * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = a * 60 + int(b)
    else:
        seconds = a * 60
    if seconds <= 0:
        raise ValueError(f"--time {text!r}: must be more than 0")
    return max(1, math.ceil(seconds / 60))


def sbatch_option(line: str) -> Tuple[str, object]:
    """`--qos=high`, `#SBATCH --qos high` or `--exclusive` as (name, value) for submitit."""
    words = shlex.split(line.strip())
    if words and words[0] == "#SBATCH":
        words = words[1:]
    if not words or not words[0].startswith("--") or len(words) > 2:
        raise ValueError(f"--sbatch {line!r}: expected one long option, e.g. --qos=high or --constraint a100")
    name, eq, value = words[0][2:].partition("=")
    if len(words) == 2:
        if eq:
            raise ValueError(f"--sbatch {line!r}: expected one value")
        value, eq = words[1], "="
    return name.replace("-", "_"), (value if eq else True)


def parameters(opts: SlurmOptions, job_name: str) -> dict:
    """submitit's SlurmExecutor parameters for these options (always --export=NONE: the child's
    environment is passed explicitly, not inherited from wherever sbatch ran)."""
    extra: Dict[str, object] = {"export": "NONE"}
    delay = 90
    for line in opts.sbatch:
        k, v = sbatch_option(line)
        extra[k] = v
    p: Dict[str, object] = {"job_name": job_name, "additional_parameters": extra, "stderr_to_stdout": True,
                            "srun_args": ["--export=ALL"], "time": None}
    if opts.time:
        minutes = time_minutes(opts.time)
        # submitit asks Slurm for a warning signal this long before the limit (handled in nodejob)
        delay = int(min(90, max(10, minutes * 15)))
        p.update(time=minutes, signal_delay_s=delay)
    # Slurm sends --signal to every process of the job step, the experiment's too; submitit's USR2
    # would kill a training script that does not handle it. SIGURG is ignored unless handled: the
    # node job notes it as the warning that the time limit is near.
    extra["signal"] = f"URG@{delay}"
    for name in ("partition", "gpus_per_node", "cpus_per_task", "mem"):
        value = getattr(opts, name)
        if value is not None:
            p[name] = value
    if opts.array_parallelism:
        p["array_parallelism"] = int(opts.array_parallelism)
    if opts.setup:
        p["setup"] = [f'export {SETUP_BASE_VAR}="$(env -0 | base64 -w0)"'] + list(opts.setup)
    return p


def script(opts: SlurmOptions, folder: str, count: int, job_name: str = "mutation-run") -> str:
    """The sbatch script submitit writes for `count` experiments (what --dry-run shows)."""
    from submitit.slurm.slurm import _make_sbatch_string

    p = parameters(opts, job_name)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, map_count=count if count > 1 else None, **p)


def executor(opts: SlurmOptions, folder: str, job_name: str):
    import submitit

    os.makedirs(folder, mode=0o700, exist_ok=True)
    ex = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
    ex.update_parameters(**parameters(opts, job_name))
    return ex


def kill_wait(default: float = 30.0) -> float:
    """Slurm's KillWait: seconds between the SIGTERM of a time limit or scancel and the SIGKILL."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return default
    m = re.search(r"^KillWait\s*=\s*(\d+)", out, re.M)
    return float(m.group(1)) if m else default


def queue(job_name: str) -> Optional[Dict[str, Tuple[str, str]]]:
    """{job id: (state, node)} of the batch's jobs still in the queue (array tasks one by one);
    None when squeue does not answer."""
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-n", job_name, "-o", "%i|%T|%N"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    out = {}
    for line in p.stdout.splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, node = rest.partition("|")
        if jid:
            out[jid] = (state, node)
    return out


def accounting(job_ids: Sequence[str]) -> Dict[str, dict]:
    """{job id: {"state", "exit_code", "node", "elapsed", "step_signal"}} from sacct for the jobs
    (and array tasks) of `job_ids`; `step_signal`: the signal that ended the job's srun step (the
    node job), if one did. Empty when accounting does not answer."""
    roots = sorted({j.split("_")[0] for j in job_ids})
    if not roots:
        return {}
    try:
        p = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(roots), "-o", "JobID,State,ExitCode,NodeList,Elapsed"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: Dict[str, dict] = {}
    steps = []
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        parts = line.strip().split("|")
        if len(parts) < 5:
            continue
        jid, _, step = parts[0].partition(".")
        if step:
            steps.append((jid, step, parts[2]))
            continue
        out[jid] = {"state": parts[1].split()[0] if parts[1] else "", "exit_code": parts[2], "node": parts[3],
                    "elapsed": parts[4], "step_signal": None}
    for jid, step, code in steps:
        sig = code.partition(":")[2]
        if step.isdigit() and jid in out and sig.isdigit() and int(sig):
            out[jid]["step_signal"] = int(sig)
    return out


def submitted_by_name(job_name: str, since: str) -> List[str]:
    """Ids of the jobs (array tasks) named `job_name` submitted since `since` (for a submitter that
    died between sbatch and the journal)."""
    try:
        p = subprocess.run(["sacct", "-n", "-X", "-P", "--name", job_name, "-S", since, "-o", "JobID"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if p.returncode != 0:
        return []
    out = []
    for word in p.stdout.split():
        root, _, task = word.strip().partition("_")
        if task.startswith("["):  # pending array tasks, grouped: 83_[1-3,5%2]
            for part in task.strip("[]").split("%")[0].split(","):
                a, _, b = part.partition("-")
                if a.isdigit() and (not b or b.isdigit()):
                    out += [f"{root}_{i}" for i in range(int(a), int(b or a) + 1)]
        elif word.strip():
            out.append(word.strip())
    return out


def cancel(job_ids: Sequence[str], signal_name: Optional[str] = None) -> None:
    if not job_ids:
        return
    argv = ["scancel"] + ([f"--signal={signal_name}", "--full"] if signal_name else []) + sorted(set(job_ids))
    try:
        subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


class SlurmBackend(Backend):
    """Registered as `--backend slurm`. Whole experiments run on the nodes (SlurmBatch below), each
    through the local backend there, so single processes are never started from here."""

    name = "slurm"
    same_machine = False

    def start(self, spec, stream=None):
        raise StartError("the slurm backend submits whole experiments (runner.backends.slurm.SlurmBatch), "
                         "not single processes", 126)


# -- mutation-run's side: options, checks before submission, the dry run -----------------------------------
def add_slurm_args(p) -> None:
    """`mutation-run` options of the slurm backend (ignored by the others)."""
    g = p.add_argument_group("Slurm (--backend slurm)")
    g.add_argument("--partition", metavar="NAME", help="Slurm partition (default: the cluster's default)")
    g.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs per experiment's job")
    g.add_argument("--cpus-per-task", type=int, metavar="N", help="CPUs per experiment's job")
    g.add_argument("--mem", metavar="SIZE", help="memory per experiment's job, Slurm's format (16G)")
    g.add_argument("--time", metavar="LIMIT", help="time limit per experiment's job, Slurm's format (MINUTES, H:M:S, D-H)")
    g.add_argument("--array-parallelism", type=int, metavar="N", help="at most N experiments' jobs at once")
    g.add_argument("--sbatch", action="append", default=None, metavar="OPTION",
                   help="an extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    g.add_argument("--setup", action="append", default=None, metavar="LINE",
                   help="a shell line run in each job before the experiment, e.g. --setup 'module load cuda/12.1' (repeatable)")


def slurm_options(args, manifest: Optional[Mapping[str, object]]) -> SlurmOptions:
    """From the command line, else what run.json saved (a --resume); UsageError for what Slurm would refuse."""
    from doctor.cli import UsageError
    saved = SlurmOptions.from_dict((manifest or {}).get("slurm") or {})
    given = {k: getattr(args, k, None) for k in ("partition", "gpus_per_node", "cpus_per_task", "mem", "time",
                                                  "array_parallelism", "sbatch", "setup")}
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None}
    opts = SlurmOptions(**{**saved.to_dict(), **given}) if given else saved
    opts = SlurmOptions.from_dict(opts.to_dict())
    try:
        if opts.time:
            time_minutes(opts.time)
        for line in opts.sbatch:
            sbatch_option(line)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for name in ("gpus_per_node", "cpus_per_task", "array_parallelism"):
        v = getattr(opts, name)
        if v is not None and v < (0 if name == "gpus_per_node" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be {'0' if name == 'gpus_per_node' else '1'} or more")
    return opts


def check_submission(ctx, opts: SlurmOptions, preflights, results_dir: str) -> None:
    """Before a run folder exists: jobs run as the submitting user (no sudo prefix), and the
    cluster answers with the partition; UsageError naming the fix otherwise."""
    from checks.cluster import cluster_findings
    from doctor.cli import UsageError

    if any(pf.child.prefix for pf in preflights.values()):
        raise UsageError("--backend slurm runs each job as the submitting user: --launch sudo does not apply "
                         "(give the job's environment with --setup, or run mutation-run as that user)")
    for f in cluster_findings(ctx, partition=opts.partition, results_dir=results_dir, required=True):
        if f.status == "fail":
            raise UsageError(f"--backend slurm: {f.title}" + (f"; fix: {f.fix[0]}" if f.fix else ""))


def dry_run_extra(opts: SlurmOptions, run_dir_hint: str, count: int) -> dict:
    """What `--dry-run --backend slurm` adds: the sbatch script that would be submitted."""
    folder = os.path.join(run_dir_hint, "slurm", "1")
    return {"slurm": opts.to_dict(), "sbatch_script": script(opts, folder, count, "mutation-run.run_<timestamp>")}
