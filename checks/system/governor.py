"""The CPU governor a settings file asks for: available, and settable by the launch user.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
from typing import Optional

from checks.system.common import _all_ids, _finding, _launch_env, _launch_user_groups, _writable_by
from core.envpath import which
from core.model import OK, WARN


CPU_SYSFS = "/sys/devices/system/cpu"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def check_governor(ctx):
    """The settings' governor is offered by every CPU's cpufreq and the launch user may set it."""
    want = ctx.plan.governor
    if not want:
        return None
    ids = _all_ids(ctx)
    cpus = sorted((p for p in glob.glob(os.path.join(CPU_SYSFS, "cpu[0-9]*")) if os.path.basename(p)[3:].isdigit()),
                  key=lambda p: int(os.path.basename(p)[3:]))
    freq = [os.path.join(c, "cpufreq") for c in cpus if os.path.isdir(os.path.join(c, "cpufreq"))]
    src = ctx.plan.file or "the settings file"
    if not freq:
        driver = _read(os.path.join(CPU_SYSFS, "cpufreq", "scaling_driver")) or "none"
        return _finding("system.governor.unavailable", WARN,
                        f"\"governor\": \"{want}\" cannot be set: this machine has no cpufreq",
                        f"no {CPU_SYSFS}/cpu*/cpufreq on {len(cpus)} CPU(s) (a VM, or no frequency driver; "
                        f"scaling driver: {driver}): the CPU runs at whatever the host decides, so energy figures "
                        f"are not comparable with runs at \"{want}\"",
                        fix=(f"ls {CPU_SYSFS}/cpu0/cpufreq  # absent: nothing to set on this machine",
                             "sudo modprobe acpi_cpufreq  # bare metal only: load a frequency driver"),
                        experiments=ids, governor=want, cpus=len(cpus))
    available = None
    for d in freq:
        names = set((_read(os.path.join(d, "scaling_available_governors")) or "").split())
        available = names if available is None else available & names
    current = sorted({_read(os.path.join(d, "scaling_governor")) or "?" for d in freq})
    data = {"governor": want, "available": sorted(available or ()), "current": current, "cpus": len(freq)}
    setter = (f"sudo cpupower frequency-set -g {shlex.quote(want)}" if which("cpupower", _launch_env(ctx))
              or shutil.which("cpupower") else
              f"echo {shlex.quote(want)} | sudo tee {CPU_SYSFS}/cpu*/cpufreq/scaling_governor")
    if want not in (available or ()):
        return _finding("system.governor.not-available", WARN,
                        f"governor \"{want}\" is not offered by cpufreq "
                        f"(available: {', '.join(sorted(available or ())) or 'none'})",
                        f"{src} asks for it", fix=(f"sudo modprobe cpufreq_{want}  # if it is a module", setter),
                        experiments=ids, **data)
    gids = _launch_user_groups(ctx)
    blocked = []
    for d in freq:
        p = os.path.join(d, "scaling_governor")
        try:
            st = os.stat(p)
            readonly = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            blocked.append(p)
            continue
        if readonly or not _writable_by(st, ctx.launch.uid, gids):
            blocked.append(p)
    if blocked:
        return _finding("system.governor.not-settable", WARN,
                        f"{ctx.launch.user} may not set the governor \"{want}\" ({len(blocked)} of {len(freq)} CPUs)",
                        f"e.g. {blocked[0]} (now: {', '.join(current)})", fix=(setter + "  # before the batch",),
                        experiments=ids, **data)
    now = "already set on every CPU" if current == [want] else f"now {', '.join(current)}; {ctx.launch.user} may set it"
    return _finding("system.governor.ok", OK, f"governor \"{want}\" is available on {len(freq)} CPU(s)", now, **data)
