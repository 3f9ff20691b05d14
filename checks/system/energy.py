"""The perf RAPL energy counters the batch measures with `perf stat -e power/energy-pkg/`.
"""
from __future__ import annotations

import json
import os
import platform
import pwd
import re
from typing import List, Optional, Tuple

from checks.system.common import (_all_ids, _distro, _finding, _install, _launch_env, _launch_user_groups, _q, _run, _version_tuple)
from core.envpath import which
from core.model import FAIL, OK, WARN, Finding


PARANOID = "/proc/sys/kernel/perf_event_paranoid"
RAPL_EVENTS = ("power/energy-pkg/", "power/energy-ram/")


def energy_request(ctx) -> Tuple[bool, Tuple[str, ...], str]:
    """Does the plan measure energy? (asked, experiment ids, why).

    A settings key `"measure_energy": true|false` decides for the whole file; otherwise a repo's
    `"measure_energy"` in the registry decides for its experiments, and a settings file with a
    `"governor"` (the user's mutation.py, which always measures energy through perf) asks for
    every experiment whose repo does not say false.
    """
    top = ctx.plan.raw_top or {}
    if "measure_energy" in top:
        asked = bool(top["measure_energy"])
        why = f"\"measure_energy\": {json.dumps(top['measure_energy'])} in {ctx.plan.file}"
        return asked, _all_ids(ctx) if asked else (), why
    flags = {n: r.measure_energy for n, r in ctx.registry.repos.items() if r.measure_energy is not None}
    governor = "governor" in top
    ids = [e.id for e in ctx.plan.experiments
           if any(flags.get(s.repo, governor) for s in e.sides)]
    if not ids:
        if governor:
            return False, (), f"\"measure_energy\": false in {ctx.registry.path} for every repo of the plan"
        return False, (), "nothing in the settings or the registry asks for energy measurement"
    if any(flags.get(s.repo) for e in ctx.plan.experiments for s in e.sides):
        why = f"\"measure_energy\" in {ctx.registry.path}" + (" and \"governor\" in the settings" if governor else "")
    else:
        why = f"\"governor\" in {ctx.plan.file}: mutation.py measures energy through perf"
    return True, tuple(ids), why


def _perf_package() -> str:
    if _distro() == "ubuntu":
        return f"sudo apt-get install -y linux-tools-common linux-tools-{platform.release()}"
    return _install({"debian": "linux-perf", "fedora": "perf", "rhel": "perf", "arch": "perf"})


def _perf_stat(ctx, perf: str) -> Tuple[str, str, str]:
    """Really run `perf stat -e power/energy-pkg/ true` as the launch user.

    Returns (outcome, how, message): outcome readable | no-pmu | denied | failed | untested.
    """
    argv = [perf, "stat", "-e", RAPL_EVENTS[0], "true"]
    env = _launch_env(ctx)
    me = os.getuid()
    if ctx.launch.uid == me:
        how, kw, run_argv = f"as {ctx.launch.user}", {}, argv
    elif me == 0:
        how, kw, run_argv = f"as {ctx.launch.user}", {"user": ctx.launch.uid, "group": ctx.launch.gid,
                                                      "extra_groups": list(_launch_user_groups(ctx))}, argv
    elif ctx.launch.uid == 0:
        how, kw, run_argv = "as root through sudo -n", {}, ["sudo", "-n", *argv]
    else:
        return "untested", "", f"cannot run it as {ctx.launch.user} from {pwd.getpwuid(me).pw_name}"
    rc, out, err = _run(run_argv, env=env, **kw)
    text = err + out
    if run_argv[0] == "sudo" and rc != 0 and (rc is None or re.search(r"^sudo:", text, re.MULTILINE)):
        return "untested", how, (text.strip().splitlines() or ["sudo did not run it"])[0]
    if rc == 0 and re.search(r"Joules\s+" + re.escape(RAPL_EVENTS[0]), text):
        value = re.search(r"([\d.,]+)\s+Joules", text)
        return "readable", how, f"{value.group(1) if value else '?'} Joules for `true`"
    lines = [ln.strip(" \\_") for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Usage:", "-e,"))]
    telling = [ln for ln in lines if re.search(r"Cannot find PMU|not supported|not counted|No permission|Access to "
                                               r"performance|Error", ln)]
    message = (telling or lines or [f"exit status {rc}"])[0]
    if re.search(r"Cannot find PMU|event syntax error|<not supported>|unknown event", text, re.IGNORECASE):
        return "no-pmu", how, message
    if re.search(r"Access to performance monitoring|permission|perf_event_paranoid|<not counted>|EACCES",
                 text, re.IGNORECASE):
        return "denied", how, message
    return "failed", how, message


def _paranoid() -> Optional[int]:
    try:
        with open(PARANOID, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _unreadable_fixes(ctx, perf: str, paranoid: Optional[int]) -> List[str]:
    """How the launch user gets to read the RAPL counters: lower perf_event_paranoid, then try."""
    fix = []
    if ctx.launch.uid != 0 and (paranoid is None or paranoid > 0):
        fix += ["sudo sysctl kernel.perf_event_paranoid=0",
                "echo 'kernel.perf_event_paranoid = 0' | sudo tee /etc/sysctl.d/99-perf-rapl.conf"
                "  # keep it after a reboot"]
    fix.append(_q(*(["sudo"] if ctx.launch.uid == 0 and os.getuid() != 0 else []), perf, "stat", "-e",
                  RAPL_EVENTS[0], "true") + "  # see the error yourself")
    return fix


def check_energy(ctx):
    """perf present and matching the kernel, RAPL events listed and readable by the launch user, bc
    present. A failure only where the plan measures energy; information otherwise."""
    asked, ids, why = energy_request(ctx)
    bad = FAIL if asked else OK
    soft = WARN if asked else OK
    env = _launch_env(ctx)
    out: List[Finding] = []
    context = f"energy is measured: {why}" if asked else f"information only ({why})"
    if which("bc", env) is None:
        out.append(_finding("system.energy.bc-missing", bad,
                            "bc is not installed (train scripts compute energy with it)",
                            context, fix=(_install({"debian": "bc"}),), experiments=ids if asked else ()))
    perf = which("perf", env)
    if perf is None:
        out.append(_finding("system.energy.perf-missing", bad, "perf is not on the launch PATH", context,
                            fix=(_perf_package(),), experiments=ids if asked else ()))
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        f_version = pool.submit(_run, [perf, "--version"], env)
        f_list = pool.submit(_run, [perf, "list", "pmu"], env)
        f_stat = pool.submit(_perf_stat, ctx, perf)
        (vrc, vout, verr), (_, lout, _), (outcome, how, message) = (
            f_version.result(), f_list.result(), f_stat.result())
    kernel = platform.release()
    paranoid = _paranoid()
    data = {"perf": perf, "kernel": kernel, "perf_event_paranoid": paranoid, "asked": asked, "stat": outcome,
            "stat_message": message}
    if vrc != 0:
        text = (verr.strip() or vout.strip() or "no output").splitlines()[0]
        out.append(_finding("system.energy.perf-kernel", bad, f"perf does not run for kernel {kernel}",
                            f"{perf} --version: {text}; {context}", fix=(_perf_package(),),
                            experiments=ids if asked else (), **data))
        return out
    m = re.search(r"(\d+)\.(\d+)", vout)
    perf_version = f"{m.group(1)}.{m.group(2)}" if m else vout.strip()
    data["perf_version"] = perf_version
    if m and _version_tuple(kernel)[:2] != (int(m.group(1)), int(m.group(2))):
        out.append(_finding("system.energy.perf-mismatch", OK,
                            f"perf {perf_version} and kernel {kernel} differ in version",
                            "perf usually works across kernel versions; what counts is the real read below",
                            fix=(_perf_package() + "  # the perf matching the running kernel",), **data))
    listed = {e: e in lout or os.path.exists(f"/sys/bus/event_source/devices/power/events/{e.split('/')[1]}")
              for e in RAPL_EVENTS}
    data["listed"] = listed
    who = ctx.launch.user
    if outcome == "readable":
        out.append(_finding("system.energy.ok", OK, f"perf {perf_version} reads {RAPL_EVENTS[0]} {how}",
                            f"{message}; {context}", **data))
    elif outcome == "no-pmu" or (outcome == "untested" and not listed[RAPL_EVENTS[0]]):
        out.append(_finding(
            "system.energy.rapl-missing", bad, f"this machine exposes no RAPL energy counters ({RAPL_EVENTS[0]})",
            f"{message} (perf stat -e {RAPL_EVENTS[0]} true, {how}); {context}",
            fix=("ls /sys/bus/event_source/devices/  # no 'power' entry: a VM or a kernel without perf RAPL",
                 "sudo modprobe rapl || sudo modprobe intel_rapl_perf  # on bare metal with an Intel/AMD CPU"),
            experiments=ids if asked else (), **data))
    elif outcome == "untested":
        status = OK if paranoid is not None and (ctx.launch.uid == 0 or paranoid <= 0) else soft
        out.append(_finding("system.energy.rapl-untested", status,
                            f"{RAPL_EVENTS[0]} is listed; reading it as {who} was not tried ({message})",
                            f"perf_event_paranoid={paranoid}; {context}",
                            fix=(_q("sudo", perf, "stat", "-e", RAPL_EVENTS[0], "true") + "  # try it yourself",),
                            **data))
    else:
        out.append(_finding("system.energy.rapl-unreadable", bad, f"{who} may not read {RAPL_EVENTS[0]}",
                            f"{message} (perf stat, {how}); perf_event_paranoid={paranoid}; {context}",
                            fix=_unreadable_fixes(ctx, perf, paranoid), experiments=ids if asked else (), **data))
    if outcome in ("readable", "untested") and listed[RAPL_EVENTS[0]] and not listed[RAPL_EVENTS[1]]:
        out.append(_finding("system.energy.ram-missing", soft,
                            f"{RAPL_EVENTS[1]} is not available: RAM energy will be empty",
                            f"common on AMD and client Intel CPUs; {context}",
                            fix=(_q(perf, "list", "pmu") + "  # the power/ events this CPU offers",), **data))
    return out
