"""The `env` group: what the launched process inherits from the invoking shell, and the offline policy.

Every variable that decides where ML runs look for things is compared between the environment of
the shell that starts the batch (`ctx.launch.invoking_env`) and the one the launched process gets
(`ctx.launch.env`): kept, dropped, changed. Each difference is stated with its consequence for the
plan's needs (which cache moves where, how many needed models are missing there, which interpreter
`python3` becomes). Differences only warn: a need that becomes unavailable is already a `fail` of
the cache group, which blocks the experiment once.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from core.commands import doctor_command, run_command
from core.needs import HUB_KINDS, adapter
from core.launch import (REFUSED_NOTE, RELEVANT_VARS, hf_cache_dir, is_offline, parse_launch, torch_hub_dir,
                           which)
from core.model import FAIL, OK, WARN, Finding
from core.secrets import is_secret_name, mask

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy")
CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# Cache variables in the order the libraries consult them (HOME last: `~`), as the need adapters declare them.
PRECEDENCE = {"hf": adapter("hf").cache_vars, "torch": adapter("torchvision").cache_vars}
AREA_LABEL = {"hf": ("the Hugging Face cache", "model"), "torch": ("the torch hub", "checkpoint")}
SUDOERS_FILE = "/etc/sudoers.d/mutation-preflight"
ROOT_WRITE_NOTE = "root-owned files are left in the user's cache: see env.root-writes-user-cache"


@dataclass(frozen=True)
class VarChange:
    """One variable between the invoking shell and the launched process: kept, dropped, changed or added."""

    name: str
    kind: str
    before: Optional[str]
    after: Optional[str]

    def shown(self, value: Optional[str]) -> str:
        return "(unset)" if value is None else mask(self.name, value)


@dataclass(frozen=True)
class CacheMove:
    """A cache the launched process looks in elsewhere than the invoking shell would, and what that costs."""

    area: str
    before: str
    after: str
    cause: VarChange
    needed: int
    missing: Tuple[str, ...]  # what of the needs is not present where the launched process looks
    unknown: int
    held_before: int  # how many of the missing ones are in the cache it used to look in
    experiments: Tuple[str, ...]

    def sentence(self) -> str:
        label, noun = AREA_LABEL[self.area]
        text = f"{label} moves from {self.before} to {self.after}"
        if not self.needed:
            return text + ", which no experiment of the plan needs"
        plural = "s" if self.needed > 1 else ""
        if self.missing:
            text += f", where {len(self.missing)} of {self.needed} needed {noun}{plural} {'is' if len(self.missing) == 1 else 'are'} missing"
            if self.held_before == len(self.missing) == 1:
                text += f" (it is in {self.before})"
            elif self.held_before:
                text += f" ({self.held_before} of them {'is' if self.held_before == 1 else 'are'} in {self.before})"
        elif self.unknown:
            text += f", where {self.unknown} of {self.needed} needed {noun}{plural} cannot be inspected (no permission)"
        else:
            text += f", where {'all ' if self.needed > 1 else ''}{self.needed} needed {noun}{plural} {'are' if self.needed > 1 else 'is'} present"
        return text


# ---- comparing the two environments -------------------------------------------------------------------------

def relevant_names(*envs: Mapping[str, str]) -> List[str]:
    """RELEVANT_VARS plus every HF_*, HUGGINGFACE_* and TRANSFORMERS_* variable set in either environment."""
    names = list(RELEVANT_VARS)
    for env in envs:
        names += sorted(k for k in env if k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and k not in names)
    return list(dict.fromkeys(names))


def compare(before: Mapping[str, str], after: Mapping[str, str], names: Iterable[str]) -> List[VarChange]:
    out = []
    for n in names:
        a, b = before.get(n), after.get(n)
        if a is None and b is None:
            continue
        kind = "kept" if a == b else "dropped" if b is None else "added" if a is None else "changed"
        out.append(VarChange(n, kind, a, b))
    return out


def _area_of(state) -> Optional[str]:
    r = state.resolved
    if r is not None:
        return "hf" if r.source == "hf" else "torch"
    return {"timm": "hf", "hf": "hf", "torchvision": "torch"}.get(state.need.kind)


def cache_moves(ctx, changes: Sequence[VarChange]) -> List[CacheMove]:
    """The caches that move between the invoking shell and the launched process, with their cost."""
    launch = ctx.launch
    by_name = {c.name: c for c in changes}
    inv_home = launch.invoking_env.get("HOME") or launch.invoking_home
    states = ctx.need_states()
    out = []
    for area, before, after in (("hf", hf_cache_dir(launch.invoking_env, inv_home), launch.hf_cache),
                                ("torch", torch_hub_dir(launch.invoking_env, inv_home), launch.torch_hub)):
        if before == after:
            continue
        cause = next((by_name[n] for n in PRECEDENCE[area] if n in by_name and by_name[n].kind != "kept"),
                     VarChange("HOME", "changed", inv_home, launch.home))
        mine = [s for s in states.values() if _area_of(s) == area]
        missing = [s for s in mine if s.present is False]
        unknown = [s for s in mine if s.present is None]
        held = [s for s in missing if any(os.path.commonpath([w, before]) == before
                                          for _, w in s.found_elsewhere if os.path.isabs(w))]
        ids = tuple(dict.fromkeys(e for s in missing + unknown for e in s.experiments))
        out.append(CacheMove(area, before, after, cause, len(mine), tuple(s.need.key for s in missing), len(unknown),
                             len(held), ids))
    return out


def _hub_experiments(ctx, kinds=HUB_KINDS) -> Tuple[str, ...]:
    return tuple(e.id for e in ctx.experiments if any(n.kind in kinds for n in e.needs))


def _downloading_experiments(ctx) -> Tuple[str, ...]:
    """Experiments with a hub or torch hub need that is not present where the launched process looks."""
    ids = [e for s in ctx.need_states().values() if _area_of(s) and s.present is not True for e in s.experiments]
    return tuple(dict.fromkeys(ids))


def consequence(ctx, c: VarChange) -> Tuple[str, Tuple[str, ...], bool]:
    """What losing or changing one variable does: (words, experiments affected, warn?)."""
    n, was = c.name, c.shown(c.before)
    now = "unset" if c.after is None else c.shown(c.after)
    all_ids = tuple(e.id for e in ctx.experiments)
    if n in OFFLINE_VARS:
        if c.before and is_offline({n: c.before}) and not is_offline(ctx.launch.env):
            ids = _hub_experiments(ctx)
            return ("the launched process asks the Hub before using its cache (10 s per file when the Hub is "
                    "unreachable, minutes when it does not answer)", ids, bool(ids))
        return f"{n} is {now}", (), False
    if n == "HF_ENDPOINT":
        ids = _downloading_experiments(ctx)
        return f"the Hub becomes {c.after or 'https://huggingface.co'} instead of {was}", ids, bool(ids)
    if n == "HF_TOKEN":
        ids = _downloading_experiments(ctx)
        return "gated or private models can no longer be downloaded", ids, bool(ids)
    if n in PROXY_VARS:
        ids = _downloading_experiments(ctx)
        target = "directly" if c.after is None else f"through {now}"
        return f"downloads go {target} instead of through {was}", ids, bool(ids)
    if n in CA_VARS:
        ids = _downloading_experiments(ctx)
        return (f"TLS certificates are checked against the library's own bundle (certifi) instead of {was}: a CA "
                "trusted only there (an intercepting proxy's) fails with CERTIFICATE_VERIFY_FAILED", ids, bool(ids))
    if n == "CUDA_VISIBLE_DEVICES":
        return (f"the experiments see {'every GPU' if c.after is None else 'GPUs ' + now} instead of {was}",
                all_ids, True)
    if n == "LD_LIBRARY_PATH":
        return (f"libraries found through {was} (CUDA, libclang) are no longer found; the dynamic loader strips "
                "LD_* from sudo itself, so neither -E nor --preserve-env keeps it", all_ids, True)
    if n in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        return f"the environment {was} is no longer active (see which python3 the launch gets)", (), False
    if n == "HF_HUB_ETAG_TIMEOUT":
        return f"the Hub metadata timeout is back to 10 s (was {was})", (), False
    return (f"{n} is no longer set" if c.after is None else f"{n} becomes {now}"), (), False


# ---- fixes ----------------------------------------------------------------------------------------------------

def sudoers_fix(names: Sequence[str]) -> str:
    """Install `Defaults env_keep += "..."` in /etc/sudoers.d, checked with visudo before and after."""
    line = f'Defaults env_keep += "{" ".join(names)}"'
    tmp = "mutation-preflight.sudoers"
    return (f"printf '%s\\n' {shlex.quote(line)} > {tmp} && sudo visudo -cf {tmp} && "
            f"sudo install -m 0440 -o root -g root {tmp} {SUDOERS_FILE} && sudo visudo -cf {SUDOERS_FILE}")


def launch_spec(ctx):
    """The LaunchSpec of a sudo launch (from --launch, else the context's label); None under sudo itself."""
    if ctx.launch.source == "self":
        return None
    for text in (getattr(ctx.options, "launch", ""), ctx.launch.how):
        try:
            spec = parse_launch(text)
        except ValueError:
            continue
        if spec.mode != "current":
            return spec
    return None


def keep_fixes(ctx, names: Sequence[str], exports: Mapping[str, str] = (), root_writes: bool = False) -> List[str]:
    """The ways to keep `names` across sudo: --preserve-env, a sudoers env_keep line, -E, the runner."""
    launch = ctx.launch
    spec = launch_spec(ctx)
    exports = dict(exports)
    names = list(dict.fromkeys(list(spec.preserve if spec else ()) + list(exports) + list(names)))
    fixes = []
    if exports:
        fixes.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()))
    how = "sudo --preserve-env=" + ",".join(names)
    fixes.append(f"{run_command(ctx, ('sudo', '--preserve-env=' + ','.join(names)))}  # check first: {doctor_command(ctx, launch=how)}")
    fixes.append(sudoers_fix(names) + ("  # with the exports above in your shell profile" if exports else ""))
    if spec is None or spec.mode != "sudo-E":
        note = ROOT_WRITE_NOTE if (root_writes or launch.home != launch.invoking_home) else ""
        fixes.append(run_command(ctx, ("sudo", "-E")) + (f"  # keeps HOME too; {note}" if note else ""))
    if spec is None:
        runner = run_command(ctx, ("sudo",))
    else:
        runner = run_command(ctx, ()) + " --launch " + shlex.quote(spec.label)
    fixes.append(runner + "  # the runner sets HF_HUB_CACHE/TORCH_HOME/HF_HUB_OFFLINE for each experiment explicitly")
    return fixes


def _preserve_for(c: VarChange, move: Optional[CacheMove]) -> Tuple[List[str], Dict[str, str]]:
    """Which names to preserve (and which to export first) to undo one change."""
    if move is None:
        return ([c.name] if c.before is not None and c.name not in ("PATH", "LD_LIBRARY_PATH") else []), {}
    if c.name != "HOME" and c.before is not None:
        return [c.name], {}
    if move.area == "hf":
        return [], {"HF_HUB_CACHE": move.before}
    return [], {"TORCH_HOME": os.path.dirname(move.before)}


# ---- the checks -----------------------------------------------------------------------------------------------

def check_propagation(ctx):
    """Kept, dropped and changed variables between the invoking shell and the launched process, with consequences."""
    launch = ctx.launch
    out: List[Finding] = []
    out += _sudo_findings(ctx)
    if launch.source == "self" and launch.how == "current":
        kept = [n for n in relevant_names(launch.env) if n in launch.env]
        return out + [Finding(id="env.kept", group="env", status=OK,
                              title="the experiments inherit this shell's environment",
                              detail=", ".join(kept), data={"kept": kept})]
    if not launch.invoking_env:
        return out + [Finding(
            id="env.invoking-unknown", group="env", status=WARN,
            title="cannot tell what sudo dropped: the invoking shell's environment is not readable",
            detail=f"the launched process gets HOME={launch.home}, PATH={launch.env.get('PATH', '')}",
            fix=(doctor_command(ctx, launch="sudo") + "  # run as yourself, without sudo, to compare",))]
    changes = compare(launch.invoking_env, launch.env, relevant_names(launch.invoking_env, launch.env))
    moves = cache_moves(ctx, changes)
    move_by_cause: Dict[str, List[CacheMove]] = {}
    for m in moves:
        move_by_cause.setdefault(m.cause.name, []).append(m)
    rw = _root_writes(ctx)
    root_writes = rw is not None

    home = next((c for c in changes if c.name == "HOME" and c.kind != "kept"), None)
    if home is not None:
        out.append(_home_finding(ctx, home, move_by_cause.get("HOME", []), root_writes))
    for kind in ("dropped", "changed"):
        items = [c for c in changes if c.kind in ((kind, "added") if kind == "changed" else (kind,))
                 and c.name not in ("HOME", "PATH")]
        if items:
            out.append(_change_finding(ctx, kind, items, move_by_cause, root_writes))
    out += _python_findings(ctx, changes)
    kept = [c for c in changes if c.kind == "kept"]
    if kept:
        out.append(Finding(id="env.kept", group="env", status=OK, title=f"kept: {', '.join(c.name for c in kept)}",
                           detail="; ".join(f"{c.name}={c.shown(c.before)}" for c in kept),
                           data={"kept": [c.name for c in kept]}))
    if rw is not None:
        out.append(rw)
    if getattr(ctx, "inspected_as", ""):
        out.append(Finding(id="env.sudo.inspected-as", group="env", status=OK,
                           title=f"the caches were inspected as {ctx.inspected_as}, as the launched process will see them"))
    for note in getattr(ctx, "inspect_notes", ()):
        out.append(Finding(id="env.sudo.not-inspected-as", group="env", status=OK, title=note))
    return out


def _home_finding(ctx, home: VarChange, moves: List[CacheMove], root_writes: bool) -> Finding:
    said = [m for m in moves if m.needed]
    detail = f"HOME becomes {home.after or '(unset)'}, " + (
        "so " + "; and ".join(m.sentence() for m in said) if said
        else "and no cache an experiment needs moves" if moves else "and the caches stay where they are")
    affected = tuple(dict.fromkeys(e for m in said for e in m.experiments))
    exports: Dict[str, str] = {}
    for m in said:
        exports.update(_preserve_for(home, m)[1])
    fixes = keep_fixes(ctx, ["HF_HUB_OFFLINE"], exports, root_writes) if affected else []
    return Finding(id="env.home-moved", group="env", status=WARN if affected else OK,
                   title=f"HOME becomes {home.after or '(unset)'} (was {home.before or '(unset)'})",
                   detail=detail, fix=tuple(fixes), experiments=affected,
                   data={"before": home.before, "after": home.after, "moves": [_move_data(m) for m in moves]})


def _move_data(m: CacheMove) -> dict:
    return {"area": m.area, "from": m.before, "to": m.after, "cause": m.cause.name, "needed": m.needed,
            "missing": list(m.missing), "unknown": m.unknown, "experiments": list(m.experiments)}


def _change_finding(ctx, kind: str, items: List[VarChange], move_by_cause, root_writes: bool) -> Finding:
    parts, affected, warn, names, exports, moves = [], [], False, [], {}, []
    for c in items:
        ms = [m for m in move_by_cause.get(c.name, []) if m.needed]
        if ms:
            text = "; ".join(m.sentence() for m in ms)
            ids = tuple(e for m in ms for e in m.experiments)
            hit = bool(ids)
            moves += ms
        else:
            text, ids, hit = consequence(ctx, c)
        value = c.shown(c.before) if kind == "dropped" else f"{c.shown(c.before)} -> {c.shown(c.after)}"
        if is_secret_name(c.name):
            value = "***"
        parts.append(f"{c.name}={value}: {text}")
        if hit:
            warn = True
            affected += ids
            p, e = _preserve_for(c, ms[0] if ms else None)
            names += p
            exports.update(e)
    verb = {"dropped": "drops", "changed": "changes"}[kind]
    if ctx.launch.source == "self":
        verb = {"dropped": "dropped", "changed": "changed"}[kind]
    fixes = keep_fixes(ctx, names, exports, root_writes) if warn and (names or exports) else []
    if any(c.name == "LD_LIBRARY_PATH" and c.kind == "dropped" for c in items):
        fixes.append('sudo env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" ' + run_command(ctx, (), absolute=True)
                     + "  # env sets it after sudo, so the loader keeps it")
    return Finding(id=f"env.{kind}", group="env", status=WARN if warn else OK,
                   title=f"{'sudo' if ctx.launch.source == 'self' else ctx.launch.how} {verb} "
                         f"{', '.join(c.name for c in items)}",
                   detail="; ".join(parts), fix=tuple(dict.fromkeys(fixes)),
                   experiments=tuple(dict.fromkeys(affected)),
                   data={"variables": {c.name: {"kind": c.kind, "before": None if c.before is None else c.shown(c.before),
                                                "after": None if c.after is None else c.shown(c.after)} for c in items},
                         "moves": [_move_data(m) for m in moves]})


def _python_findings(ctx, changes: Sequence[VarChange]) -> List[Finding]:
    launch = ctx.launch
    out = []
    for cmd in ("python3", "python"):
        before, after = which(cmd, launch.invoking_env), which(cmd, launch.env)
        if before == after or before is None:
            continue
        by_name = [e.id for e in ctx.experiments if not any(n.kind == "python" for n in e.needs)]
        path = next((c for c in changes if c.name == "PATH"), None)
        why = "PATH becomes secure_path" if path is not None and path.kind != "kept" else "PATH differs"
        title = (f"{cmd} resolves to {after} instead of {before}" if after
                 else f"{cmd} is not found on the launched process's PATH (was {before})")
        detail = (f"{why} ({launch.env.get('PATH', '')}); experiments that call {cmd} by name get that interpreter"
                  + (f" (no `python` need declared for: {', '.join(by_name[:6])})" if by_name else ""))
        detail += (f"; or declare {{\"python\": \"{before}\"}} in the repo's \"requires\" of {ctx.registry.path}:"
                   " mutation-run then puts it first on PATH")
        fixes = ('sudo env "PATH=$PATH" ' + run_command(ctx, (), absolute=True) + "  # env restores your PATH after sudo",
                 run_command(ctx, ("sudo", "--preserve-env=PATH"))
                 + f"  # check first: {doctor_command(ctx, launch='sudo --preserve-env=PATH')}")
        out.append(Finding(id="env.python-changed", group="env", status=WARN if by_name else OK, title=title, detail=detail,
                           fix=fixes, experiments=tuple(by_name), data={"command": cmd, "before": before, "after": after}))
        break
    return out


def _root_writes(ctx) -> Optional[Finding]:
    """Root running with the invoking user's cache: whatever it downloads there stays root-owned."""
    launch = ctx.launch
    if launch.uid != 0 or launch.invoking_uid in (0, -1):
        return None
    hub = [s for s in ctx.need_states().values() if _area_of(s)]
    hf = [s for s in hub if _area_of(s) == "hf"]
    writes = {"hf": bool(hf) and (not is_offline(launch.env) or any(s.present is not True for s in hf)),
              "torch": any(s.present is not True for s in hub if _area_of(s) == "torch")}
    paths = [path for area, path in (("hf", launch.hf_cache), ("torch", launch.torch_hub))
             if writes[area] and _belongs_to(path, launch.invoking_uid, launch.invoking_home)]
    if not paths:
        return None
    user, spec = launch.invoking_user, launch_spec(ctx)
    ids = _downloading_experiments(ctx) or tuple(e.id for e in ctx.experiments)
    return Finding(
        id="env.root-writes-user-cache", group="env", status=WARN,
        title=f"root will write into {user}'s cache: {', '.join(paths)}",
        detail=(f"the launched process runs as {launch.user} and looks in {' and '.join(paths)}: anything it downloads "
                f"there (weights, locks, .no_exist markers) is left root-owned, and {user}'s own runs then fail "
                "with PermissionError"),
        fix=(doctor_command(ctx, "prefetch", launch=spec.label if spec else "current")
             + f"  # as {user}, before the batch: nothing is left to download",
             f"sudo chown -R {shlex.quote(user)}: " + " ".join(shlex.quote(p) for p in paths) + "  # after the batch"),
        experiments=ids, data={"paths": paths})


def _belongs_to(path: str, uid: int, home: str) -> bool:
    if home and home != "/" and os.path.commonpath([os.path.abspath(path), home]) == home:
        return True
    p = path
    while p and p != "/":
        try:
            return os.stat(p).st_uid == uid
        except FileNotFoundError:
            p = os.path.dirname(p)
        except OSError:
            return False
    return False


def _sudo_findings(ctx) -> List[Finding]:
    """What the real sudo said: it refuses the launch, or it disagrees with the simulation."""
    from core import sudo

    launch, out = ctx.launch, []
    refused = next((n[len(REFUSED_NOTE):] for n in launch.notes if n.startswith(REFUSED_NOTE)), None)
    if refused:
        spec = launch_spec(ctx)
        names = list(spec.preserve if spec else ()) or ["HF_HUB_CACHE", "HF_HUB_OFFLINE"]
        out.append(Finding(
            id="env.sudo.refused", group="env", status=FAIL, title=f"sudo refuses `{launch.how}`: {refused}",
            detail=f"{launch.invoking_user} may not pass variables through sudo (no SETENV tag): every experiment "
                   "launched this way fails before it starts",
            fix=(sudoers_fix(names) + "  # env_keep needs no SETENV",
                 f"{launch.invoking_user} ALL=(ALL) NOPASSWD:SETENV: ALL  # or add SETENV to the rule with: sudo visudo"),
            experiments=tuple(e.id for e in ctx.experiments)))
    if launch.source == "simulated":
        why = "; ".join(launch.notes)
        out.append(Finding(id="env.sudo.simulated", group="env", status=OK,
                           title=f"`{launch.how}` simulated from sudo's defaults (the real sudo did not answer)",
                           detail=why))
    diffs = sudo.simulation_differences(launch)
    if diffs:
        relevant = set(relevant_names(launch.env, launch.invoking_env))
        important = [d for d in diffs if d[0] in relevant]
        text = "; ".join(f"{k}: simulated {mask(k, a) if a is not None else '(unset)'}, "
                         f"real {mask(k, b) if b is not None else '(unset)'}" for k, a, b in diffs)
        out.append(Finding(
            id="env.sudo.simulation-differs", group="env", status=WARN if important else OK,
            title=f"the real sudo differs from sudo's defaults for {', '.join(k for k, _, _ in diffs)}",
            detail=text + " (the real one is used; this sudoers configuration is not the default)",
            data={"differences": [{"name": k, "simulated": None if a is None else mask(k, a),
                                   "real": None if b is None else mask(k, b)} for k, a, b in diffs]}))
    return out


def check_offline_policy(ctx):
    """HF_HUB_OFFLINE=1: safe where every hub need is cached; a block where it is set and a need is not."""
    launch = ctx.launch
    states = ctx.need_states()
    offline = is_offline(launch.env)
    safe, missing, missing_what = [], [], {}
    for e in ctx.experiments:
        hub = [states.get(n.key) for n in e.needs if n.kind in HUB_KINDS]
        if not hub:
            continue
        if all(s is not None and s.present is True for s in hub):
            safe.append(e.id)
        elif offline:
            gone = [s for s in hub if s is not None and s.present is False]
            if gone:
                missing.append(e.id)
                for s in gone:
                    missing_what.setdefault(s.need.key, s)
    out = []
    var = next((n for n in OFFLINE_VARS if is_offline({n: launch.env.get(n, "")})), "HF_HUB_OFFLINE")
    if safe:
        title = (f"{var}={launch.env.get(var)} is set and every Hub model of {len(safe)} experiment(s) is cached"
                 if offline else f"HF_HUB_OFFLINE=1 is safe for {len(safe)} experiment(s): every Hub model they need is cached")
        out.append(Finding(
            id="env.offline.safe", group="env", status=OK, title=title,
            detail=(f"in {launch.hf_cache}; offline, each load goes straight to the cache instead of waiting on the Hub "
                    "(10 s per file when it is unreachable, minutes when it does not answer); the runner sets it"),
            experiments=tuple(safe), data={"hf_cache": launch.hf_cache, "offline": offline}))
    if missing:
        what = ", ".join(sorted(missing_what))
        out.append(Finding(
            id="env.offline.missing", group="env", status=FAIL,
            title=f"{var} is set but {len(missing_what)} Hub model(s) are not in {launch.hf_cache}",
            detail=(f"{what}: offline, the load fails at once with LocalEntryNotFoundError (nothing is downloaded)"),
            fix=(doctor_command(ctx, "prefetch", as_launch_user=True)
                 + "  # download them into the launch context's cache, then keep " + var,),
            experiments=tuple(missing), data={"needs": sorted(missing_what), "hf_cache": launch.hf_cache}))
    return out
