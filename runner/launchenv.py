"""Each child's environment, built explicitly, and the preflight evaluated in exactly that environment.

Policy, per experiment:
- start from the launch context's environment (under `sudo mutation-run`: root's, HOME=/root);
- a hub need missing from the launch context's cache but present in another one (typically the
  invoking user's `~/.cache/huggingface/hub`): point `HF_HUB_CACHE` (or `TORCH_HOME`, the parent of
  the torch hub folder) at the cache that holds it;
- every hub need of the experiment cached where the child will look: `HF_HUB_OFFLINE=1` and
  `HF_HUB_DISABLE_TELEMETRY=1`, so a load goes straight to the cache instead of waiting on the Hub;
- an interpreter named by the registry (`{"python": ...}`): its folder first on PATH.
Then the doctor is run again in the adjusted launch context, so the verdict is about what the
child really gets.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from core.context import DoctorContext, NeedState
from core.launch import parse_launch
from core.model import OK, Experiment, Finding, LaunchContext, Report
from core.needs import DOWNLOADED_KINDS
from core.secrets import mask, mask_text
from runner.execute import TOKEN_VAR

HUB_KINDS = DOWNLOADED_KINDS  # every kind a library downloads into a cache
OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class ChildLaunch:
    """How one experiment's processes are started: environment changes against the launch context,
    the resulting launch context, and the argv prefix (`sudo -n ...` for a `--launch sudo` run)."""

    launch: LaunchContext
    env_set: Mapping[str, str] = field(default_factory=dict)
    env_dropped: Tuple[str, ...] = ()
    prefix: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()

    @property
    def env(self) -> Dict[str, str]:
        return dict(self.launch.env)

    def popen_env(self) -> Dict[str, str]:
        """The environment handed to Popen: the child's own, or for a sudo prefix ours plus the
        variables sudo is told to preserve (sudo computes the rest exactly as simulated)."""
        if self.prefix:
            env = dict(os.environ)
            env.update(self.env_set)
            return env
        return self.env

    def record(self, argv: Sequence[str] = (), cwd: str = "", extra_set: Optional[Mapping[str, str]] = None) -> dict:
        """The experiment.json `launch` object (values masked)."""
        ctx = self.launch
        env_set = dict(self.env_set, **(extra_set or {}))
        return {"how": ctx.how, "user": ctx.user, "uid": ctx.uid, "home": ctx.home,
                "hf_cache": ctx.hf_cache, "torch_hub": ctx.torch_hub, "offline": ctx.offline,
                "invoking_user": ctx.invoking_user, "invoking_home": ctx.invoking_home,
                "env_set": {k: mask(k, v) for k, v in sorted(env_set.items())},
                "env_dropped": list(self.env_dropped), "argv": [mask_text(a) for a in [*self.prefix, *argv]], "cwd": cwd,
                "notes": list(self.notes)}


@dataclass(frozen=True)
class Preflight:
    """The doctor's word on one experiment, in the environment its child will get."""

    experiment: Experiment
    verdict: str
    blocked_by: Tuple[str, ...]
    findings: Tuple[Finding, ...]
    needs: Tuple[dict, ...]
    child: ChildLaunch

    def fixes(self) -> List[str]:
        """The fixes of the findings that block it, once each, masked."""
        env = self.child.launch.env
        return list(dict.fromkeys(mask_text(x, env) for f in self.findings if f.id in self.blocked_by for x in f.fix))

    def record(self) -> dict:
        """The experiment.json `preflight` object."""
        env = self.child.launch.env
        return {"verdict": self.verdict, "blocked_by": list(self.blocked_by),
                "findings": [{"id": f.id, "status": f.status, "title": mask_text(f.title, env),
                              "fix": [mask_text(x, env) for x in f.fix]} for f in self.findings],
                "hf_cache": self.child.launch.hf_cache, "torch_hub": self.child.launch.torch_hub,
                "needs": list(self.needs)}


def _cache_changes(ctx: DoctorContext, e: Experiment, states: Mapping[str, NeedState]) -> Dict[str, str]:
    """HF_HUB_CACHE / TORCH_HOME pointing at caches that hold what the launch context's lack."""
    out: Dict[str, str] = {}
    for n in e.needs:
        s = states.get(n.key)
        if s is None or n.kind not in HUB_KINDS or s.status == "present" or not s.found_elsewhere:
            continue
        r = s.resolved
        where = s.found_elsewhere[0][1]
        if r is not None and r.source == "hf":
            out.setdefault("HF_HUB_CACHE", where)
        elif r is not None:
            out.setdefault("TORCH_HOME", os.path.dirname(where))
    return {k: v for k, v in out.items() if ctx.launch.env.get(k) != v}


def _python_changes(ctx: DoctorContext, e: Experiment) -> Dict[str, str]:
    pythons = [n for n in e.needs if n.kind == "python"]
    if not pythons:
        return {}
    n = pythons[0]
    # `~` as the launched process sees it (its HOME), like the doctor's interpreter check
    folder = os.path.dirname(n.path_for(ctx.launch.home))
    path = ctx.launch.env.get("PATH", "")
    if path.split(os.pathsep)[:1] == [folder]:
        return {}
    return {"PATH": os.pathsep.join([folder] + [p for p in path.split(os.pathsep) if p and p != folder])}


def adjusted_launch(base: LaunchContext, env_set: Mapping[str, str], dropped: Sequence[str]) -> LaunchContext:
    if not env_set and not dropped:
        return base
    env = {k: v for k, v in base.env.items() if k not in dropped}
    env.update(env_set)
    return dataclasses.replace(base, env=env, how=f"{base.how} + runner environment", source="runner",
                               home=env.get("HOME", base.home))


def _prefix(ctx: DoctorContext, env_set: Mapping[str, str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """`sudo -n ...` for a `--launch sudo...` run from a non-root runner (the child goes through sudo)."""
    spec = parse_launch(ctx.options.launch)
    if spec.mode == "current" or ctx.launch.source == "self":
        return (), ()
    names = [k for k in env_set if k != "PATH"]
    notes = []
    if "PATH" in env_set:
        notes.append("sudo's secure_path replaces PATH: the registry's interpreter must be called by its full path")
    if spec.mode == "sudo-E":
        return ("sudo", "-n", "-E"), tuple(notes)
    names = list(dict.fromkeys(list(spec.preserve) + names))
    return (("sudo", "-n", "--preserve-env=" + ",".join(names)) if names else ("sudo", "-n")), tuple(notes)


def _sub_context(ctx: DoctorContext, launch: LaunchContext, experiments: Sequence[Experiment]) -> DoctorContext:
    plan = dataclasses.replace(ctx.plan, experiments=tuple(experiments))
    return DoctorContext(options=ctx.options, registry=ctx.registry, plan=plan, launch=launch,
                         resolver=ctx.resolver, hashes=ctx.hashes)


def _needs_record(e: Experiment, states: Mapping[str, NeedState], base: Mapping[str, NeedState]) -> Tuple[dict, ...]:
    out = []
    for n in e.needs:
        s = states.get(n.key)
        if s is None:
            continue
        b = base.get(n.key, s)
        elsewhere = [w for _, w in (s.found_elsewhere or b.found_elsewhere)]
        out.append({"key": n.key, "kind": n.kind, "status": s.status, "path": s.path, "found_elsewhere": elsewhere})
    return tuple(out)


def preflight(ctx: DoctorContext, experiments: Sequence[Experiment],
              progress: Optional[Callable[[str], None]] = None) -> Tuple[Report, Dict[str, Preflight]]:
    """The doctor on the whole plan, then again in each distinct adjusted launch context.

    Returns the base report and, per experiment id, its Preflight (verdict, findings naming it, the
    state of its needs where its child looks, and the ChildLaunch to start it with).
    """
    from doctor.engine import run_doctor

    say = progress or (lambda _msg: None)
    say("preflight: checking the plan in the launch context")
    base_report = run_doctor(ctx)
    base_states = ctx.need_states()

    # 1. caches: point the child at caches that hold what the launch context's lack
    cache_set = {e.id: _cache_changes(ctx, e, base_states) for e in experiments}
    states_for: Dict[str, Mapping[str, NeedState]] = {}
    groups: Dict[Tuple, List[Experiment]] = {}
    for e in experiments:
        groups.setdefault(tuple(sorted(cache_set[e.id].items())), []).append(e)
    for sig, members in groups.items():
        if not sig:
            for e in members:
                states_for[e.id] = base_states
            continue
        sub = _sub_context(ctx, adjusted_launch(ctx.launch, dict(sig), ()), members)
        st = sub.need_states()
        for e in members:
            states_for[e.id] = st

    # 2. offline when every hub need is cached where the child looks; 3. the interpreter
    final: Dict[str, Tuple[Dict[str, str], Tuple[str, ...]]] = {}
    for e in experiments:
        env_set = dict(cache_set[e.id])
        dropped: List[str] = []
        if "HF_HUB_CACHE" in env_set and "HUGGINGFACE_HUB_CACHE" in ctx.launch.env:
            dropped.append("HUGGINGFACE_HUB_CACHE")
        if TOKEN_VAR in ctx.launch.env:
            dropped.append(TOKEN_VAR)
        hub = [n for n in e.needs if n.kind in HUB_KINDS]
        st = states_for[e.id]
        if hub and all(st.get(n.key) is not None and st[n.key].status == "present" for n in hub):
            env_set.update({k: v for k, v in OFFLINE_VARS.items() if ctx.launch.env.get(k) != v})
        env_set.update(_python_changes(ctx, e))
        final[e.id] = (env_set, tuple(dropped))

    # 4. the doctor again in each distinct adjusted context
    by_env: Dict[Tuple, List[Experiment]] = {}
    for e in experiments:
        env_set, dropped = final[e.id]
        by_env.setdefault((tuple(sorted(env_set.items())), dropped), []).append(e)
    out: Dict[str, Preflight] = {}
    for (sig, dropped), members in by_env.items():
        env_set = dict(sig)
        launch = adjusted_launch(ctx.launch, env_set, dropped)
        if launch is ctx.launch:
            report, states = base_report, base_states
        else:
            names = ", ".join(sorted(env_set)) or "-"
            say(f"preflight: checking {len(members)} experiment(s) again with {names} set")
            sub = _sub_context(ctx, launch, members)
            report = run_doctor(sub)
            states = sub.need_states()
        prefix, notes = _prefix(ctx, env_set)
        child = ChildLaunch(launch=launch, env_set=env_set, env_dropped=tuple(dropped), prefix=prefix, notes=notes)
        verdicts = {v.experiment.id: v for v in report.verdicts}
        for e in members:
            v = verdicts[e.id]
            named = tuple(f for f in report.findings if e.id in f.experiments and f.status != OK)
            out[e.id] = Preflight(experiment=e, verdict=v.verdict, blocked_by=v.blocked_by, findings=named,
                                  needs=_needs_record(e, states, base_states), child=child)
    return base_report, out


# -- the observer: what each experiment's processes really used ---------------------------------------
OBSERVE_FOLDER = "observe"  # raw per-process lines, inside the experiment folder, until collected
NEEDS_FILE = "needs.json"


def observe(argv: Sequence[str], env: Mapping[str, str], exp_dir: str, tree=None) -> Tuple[List[str], Dict[str, str]]:
    """argv and environment of an experiment's child with the observer injected: its
    sitecustomize first on PYTHONPATH (it chains to the interpreter's own) and the folder it
    writes to (made through `tree`, the run folder's core.safefs.SafeTree, when given). A
    `sudo -n` prefix is told to preserve both variables."""
    from observer import OBSERVE_DIR_VAR, SITE_DIR

    folder = os.path.join(exp_dir, OBSERVE_FOLDER)
    if tree is not None:
        tree.mkdirs(os.path.join(os.path.basename(exp_dir), OBSERVE_FOLDER))
    else:
        os.makedirs(folder, exist_ok=True)
    out = dict(env)
    old = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    out["PYTHONPATH"] = os.pathsep.join([SITE_DIR] + old)
    out[OBSERVE_DIR_VAR] = folder
    return _preserve(list(argv), ("PYTHONPATH", OBSERVE_DIR_VAR)), out


def _preserve(argv: List[str], names: Sequence[str]) -> List[str]:
    """`sudo -n ...` keeping `names` too (sudo -E keeps everything already)."""
    if argv[:1] != ["sudo"]:
        return argv
    opts = [a for a in argv[1:3] if a.startswith("-")]
    if "-E" in opts:
        return argv
    for i, a in enumerate(argv[1:3], 1):
        if a.startswith("--preserve-env="):
            have = a.split("=", 1)[1].split(",")
            argv[i] = "--preserve-env=" + ",".join(list(dict.fromkeys(have + list(names))))
            return argv
    return argv[:2] + ["--preserve-env=" + ",".join(names)] + argv[2:] if argv[1:2] == ["-n"] else argv


def record_observation(ctx: DoctorContext, job, exp_dir: str, run_id: str, passed: bool,
                       owner: Optional[tuple] = None, say: Callable[[str], None] = lambda _m: None,
                       tree=None) -> Optional[dict]:
    """After an experiment: collect its processes' observations into `needs.json` beside
    experiment.json (through `tree` when given) and, when it passed, merge them into the needs
    lock (given to `owner` (uid, gid, ...) when created). Returns the record's `observed` summary
    (None when the experiment was not observed)."""
    import shutil

    from core import needslock
    from core.memo import write_atomic
    from observer import collect

    folder = os.path.join(exp_dir, OBSERVE_FOLDER)
    if not os.path.isdir(folder):
        return None
    hasher = ctx.hashes.sha256 if ctx.hashes is not None else collect.sha256_file
    needs = collect.collect(folder, hasher)
    data = needslock.dumps(needs).encode("utf-8")
    if tree is not None:
        tree.replace(os.path.join(os.path.basename(exp_dir), NEEDS_FILE), data)
    else:
        write_atomic(os.path.join(exp_dir, NEEDS_FILE), data)
    shutil.rmtree(folder, ignore_errors=True)
    summary = collect.summary(needs)
    if passed and needs.get("observed"):
        path = needslock.path_for(ctx.options, ctx.registry.path)
        seen = needslock.Seen(run=f"{run_id}/{job.id}", at=_now())
        try:
            needslock.update(path, job.foreground.repo, job.foreground.model, needs, seen,
                             owner=(owner[0], owner[1]) if owner else None)
            summary["lock"] = path
        except (OSError, needslock.LockError) as e:
            summary["lock_error"] = f"{path}: {getattr(e, 'strerror', None) or e}"
            say(f"    needs lock not updated: {summary['lock_error']}")
    if ctx.hashes is not None:
        ctx.hashes.save()
    return summary


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
