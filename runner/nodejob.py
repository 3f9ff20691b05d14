"""What runs inside each Slurm job: the doctor on the compute node, then the experiment.

The submitter (runner/backends/slurm.py) hands each job a `NodeTask`: the run folder, the
experiment's id, and the environment its child is to get, computed on the login node. Inside the
job, on the node that will train:

1. Slurm's signals are ours: SIGTERM (time limit, scancel) stops the experiment like Ctrl-C stops a
   local run (Slurm signals the experiment's processes too), and the warning Slurm sends before the
   time limit (SIGURG, asked for instead of submitit's USR2, which would kill a training script
   that does not handle it) is only noted; submitit's own handlers would requeue or end the job
   from under the running experiment.
2. The environment is the submitter's, explicitly, plus what Slurm gives this job on this node
   (SLURM_*, the GPUs it allotted); nothing else of what sbatch happened to export reaches the child.
3. The doctor's checks run here, in that environment (caches, environment, network, the node's
   GPU and stray processes), and the verdict goes into the experiment's record. A node where a need
   is missing marks the experiment `blocked`, naming the node.
4. The experiment runs exactly as the local backend runs it (runner.batch.Batch with the local
   backend: same argv, observer, energy wrapping, timeouts, retries, process-group cleanup),
   writing only its own experiment folder: its journal goes there too; summary.csv and the needs
   lock (merged from the folder's needs.json) are the submitter's.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

NODE_JOURNAL = "node-journal.jsonl"
# what Slurm sets for this job on this node and the child must see (its GPUs, its job)
NODE_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES", "TMPDIR")
NODE_PREFIXES = ("SLURM_", "SLURMD_")


@dataclass(frozen=True)
class NodeTask:
    """One experiment for one Slurm job.

    `env`: the environment of the launch context on the login node, which the experiment's child
    starts from (the node applies the runner's policy to it again, in its own view); `env_set`:
    what the runner set on top of it on the login node (for the record); `login`: the login node's preflight verdict; `kill_wait`: Slurm's KillWait
    (seconds between its SIGTERM and SIGKILL), which caps the experiment's grace period here."""

    run_dir: str
    experiment_id: str
    env: Mapping[str, str]
    env_set: Mapping[str, str] = field(default_factory=dict)
    login: Mapping[str, object] = field(default_factory=dict)
    no_energy: bool = False
    kill_wait: float = 30.0


def setup_changes(node_env: Mapping[str, str]) -> Dict[str, str]:
    """What the job's setup lines (`module load ...`, exports) set: the job's environment against the
    one saved before them in SETUP_BASE_VAR (see runner/backends/slurm.py)."""
    import base64
    import binascii

    from runner.backends.slurm import SETUP_BASE_VAR

    saved = node_env.get(SETUP_BASE_VAR)
    if not saved:
        return {}
    try:
        raw = base64.b64decode(saved).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return {}
    before = dict(x.split("=", 1) for x in raw.split("\0") if "=" in x)
    return {k: v for k, v in node_env.items() if before.get(k) != v and k != SETUP_BASE_VAR
            and not k.startswith(NODE_PREFIXES + ("SUBMITIT_",))}


def node_environment(task: NodeTask, node_env: Mapping[str, str]) -> Tuple[Dict[str, str], Tuple[str, ...], Tuple[str, ...]]:
    """The child's environment: the submitter's, plus what the job's setup lines set, plus this
    job's Slurm and GPU variables; and the names taken from the setup lines and from the node."""
    setup = setup_changes(node_env)
    taken = {k: v for k, v in node_env.items() if k.startswith(NODE_PREFIXES) or k in NODE_VARS}
    taken.pop("SLURM_EXPORT_ENV", None)  # sbatch's --export=NONE, not something the child should pass on
    env = dict(task.env)
    env.update(setup)
    env.update(taken)
    return env, tuple(sorted(setup)), tuple(sorted(taken))


def _say(msg: str, fixes=(), rule: bool = False) -> None:  # noqa: ARG001 - the batch's console signature
    print(msg, flush=True)
    for f in fixes:
        print(f"    fix: {f}", flush=True)


def _context(manifest: Mapping[str, object]):
    from doctor.cli import make_context

    ns = argparse.Namespace(settings=manifest.get("settings_file"), models_config=manifest.get("models_config"),
                            project_root=manifest.get("project_root") or ".", launch="current",
                            only=manifest.get("only"), timeout=float(manifest.get("probe_timeout") or 3.0))
    return make_context(ns)


def _options(manifest: Mapping[str, object], task: NodeTask):
    import dataclasses

    from runner.batch import Options

    names = {f.name for f in dataclasses.fields(Options)}
    saved = {k: v for k, v in (manifest.get("options") or {}).items() if k in names}
    saved.update(stream=False, json_out=False, backend="local", wait_for_gpu=saved.get("wait_for_gpu") or 0.0)
    opt = Options(**saved)
    # Slurm kills the job KillWait seconds after its SIGTERM: stop the experiment well before that
    opt.grace = max(1.0, min(float(opt.grace), task.kill_wait - 3.0))
    if opt.max_retries is None or opt.max_retries < 0:
        opt.max_retries = 2
    return opt


def _node_batch_class():
    import runner.batch as batch_module
    from runner.batch import Batch
    from runner.results import Journal

    observe_and_merge = getattr(batch_module, "record_observation", None)
    if observe_and_merge is not None:
        def observe_only(ctx, job, exp_dir, run_id, passed, *args, **kw):
            """needs.json is written here; the submitter merges it into the shared needs lock."""
            return observe_and_merge(ctx, job, exp_dir, run_id, False, *args, **kw)

        batch_module.record_observation = observe_only  # this process runs this one experiment only

    class NodeBatch(Batch):
        """The local batch, for one experiment, writing only that experiment's folder."""

        slurm: Dict[str, object] = {}

        def _open_journal(self) -> None:
            if self.journal is None:
                self.tree.mkdirs(self.jobs[0].id)
                self.journal = Journal(os.path.join(self.run_dir, self.jobs[0].id, NODE_JOURNAL), self.tree)

        def write_summary(self) -> None:  # summary.csv belongs to the submitter
            self._summary_at = time.monotonic()

        def _write(self, job, record: dict) -> None:
            record = dict(record, slurm=dict(self.slurm))
            if isinstance(record.get("launch"), dict):
                record["launch"] = dict(record["launch"], backend="slurm")
            if record.get("status") == "blocked":
                record["error_message"] = f"{record.get('error_message', '')} (on node {self.slurm.get('node')})"
            super()._write(job, record)

    return NodeBatch


class _Notes:
    """Signals Slurm sends before the end, noted for the record."""

    def __init__(self):
        self.items = []

    def warned(self, signum, frame):  # noqa: ARG002
        self.items.append({"signal": signal.Signals(signum).name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "meaning": "Slurm's warning that the job's time limit is near"})


def run_experiment(task: NodeTask) -> dict:
    """The job's function (called by submitit on the node): preflight here, then run; returns the
    experiment's status, node and exit code (its record is in the experiment folder)."""
    from runner import backends
    from runner.energy import EnergyPlan
    from runner.energy import plan as energy_plan
    from runner.execute import StopRequest
    from runner.expand import jobs_from_manifest
    from runner.launchenv import preflight
    from runner.results import read_json

    stop = StopRequest().install()  # replaces submitit's SIGTERM "bypass": Slurm's TERM stops the experiment
    notes = _Notes()
    signal.signal(signal.SIGURG, notes.warned)  # --signal=URG@... (runner/backends/slurm.py)
    node = socket.gethostname().split(".")[0]
    env, from_setup, from_node = node_environment(task, os.environ)
    slurm_info = {"job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")),
                  "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"), "node": node,
                  "env_from_submitter": sorted(task.env), "env_set_by_submitter": sorted(task.env_set),
                  "env_from_setup": list(from_setup), "env_from_node": list(from_node), "login_preflight": dict(task.login), "signals": notes.items}
    if slurm_info["array_task"] is not None:
        slurm_info["job_id"] = f"{slurm_info['job_id']}_{slurm_info['array_task']}"
    os.environ.clear()
    os.environ.update(env)  # the launch context below is built from exactly what the child gets

    manifest = read_json(os.path.join(task.run_dir, "run.json")) or {}
    ctx = _context(manifest)
    jobs = [j for j in jobs_from_manifest(ctx.plan.experiments, manifest.get("experiments") or [])
            if j.id == task.experiment_id]
    if not jobs:
        raise RuntimeError(f"{task.experiment_id} is not in {task.run_dir}/run.json: the settings file changed?")
    job = jobs[0]
    _say(f"node {node}: preflight of {job.id}")
    base_report, preflights = preflight(ctx, [job.experiment], progress=_say)
    pf = preflights[job.id]
    options = _options(manifest, task)
    if task.no_energy:
        energy = EnergyPlan(why_not="--no-energy")
    else:
        energy = energy_plan(ctx, base_report, pf.child.popen_env(), pf.child.prefix)
    batch = _node_batch_class()(ctx=ctx, jobs=[job], preflights=preflights, run_dir=task.run_dir, options=options,
                                say=_say, stop=stop, energy=energy, backend=backends.get("local"))
    batch.slurm = slurm_info
    batch._open_journal()
    try:
        batch.journal.write("node-start", experiment_id=job.id, node=node, job_id=slurm_info["job_id"])
        outcome = batch.run_job(1, 1, job, prior=[])
        if outcome is None:  # stopped before it started
            batch._record_interrupted(job, [], f"the Slurm job was stopped on {node} before the experiment started")
            status, code = "interrupted", None
        else:
            status, code = outcome.status, outcome.exit_code
        batch.journal.write("node-end", experiment_id=job.id, status=status)
    finally:
        batch.journal.close()
        stop.restore()
    return {"experiment_id": job.id, "status": status, "node": node, "exit_code": code,
            "verdict": pf.verdict, "blocked_by": list(pf.blocked_by)}


def main(argv: Optional[list] = None) -> int:  # pragma: no cover - a manual entry for debugging a node
    """`python -m runner.nodejob RUN_DIR EXPERIMENT_ID`: run one experiment of a run folder here, with
    this shell's environment, as a Slurm job would."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m runner.nodejob RUN_DIR EXPERIMENT_ID", file=sys.stderr)
        return 2
    out = run_experiment(NodeTask(run_dir=os.path.abspath(args[0]), experiment_id=args[1], env=dict(os.environ)))
    return 0 if out["status"] == "passed" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
