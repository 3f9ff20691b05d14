"""CPU energy of an experiment, measured the way mutation.py does: `perf stat` wrapping the command.

Where the plan asks for energy measurement (`checks.system.energy_request`: a `"governor"` or
`"measure_energy"` in the settings, or `"measure_energy"` in the registry) and the doctor found the
RAPL counters readable, each attempt runs as

    perf stat -a -e power/energy-pkg/[,power/energy-ram/] -o <experiment>/energy/cpu_energy_raw.txt -- argv...

and the experiment's `energy_metrics` get `cpu_energy_pkg_joules`, `cpu_energy_ram_joules`,
`cpu_energy_total_joules` (the keys of the user's records; `energy/cpu_energy.txt` is written in
their format). perf is the process group leader; it returns the command's exit status.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

PKG, RAM = "power/energy-pkg/", "power/energy-ram/"
RAW = os.path.join("energy", "cpu_energy_raw.txt")
_LINE = re.compile(r"^\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s+Joules\s+(power/energy-[a-z]+/)", re.MULTILINE)


@dataclass(frozen=True)
class EnergyPlan:
    """Which experiments are measured, with which perf and events; or why nothing is measured."""

    perf: str = ""
    events: Tuple[str, ...] = ()
    experiments: Tuple[str, ...] = ()
    asked: bool = False
    why_not: str = ""

    def measures(self, experiment_id: str) -> bool:
        return bool(self.perf) and experiment_id in self.experiments

    def wrap(self, argv: Sequence[str], exp_dir: str) -> List[str]:
        os.makedirs(os.path.join(exp_dir, "energy"), exist_ok=True)
        return [self.perf, "stat", "-a", "-e", ",".join(self.events), "-o", os.path.join(exp_dir, RAW), "--", *argv]


def _works(argv_prefix: Sequence[str], perf: str, events: Sequence[str], env: Mapping[str, str]) -> Tuple[bool, str]:
    """Does `perf stat -a -e EVENTS -- true` run, started exactly as the experiments will be?"""
    import subprocess

    try:
        p = subprocess.run([*argv_prefix, perf, "stat", "-a", "-e", ",".join(events), "--", "true"], env=dict(env),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{perf} stat: {e}"
    if p.returncode == 0 and "Joules" in p.stderr + p.stdout:
        return True, ""
    text = [ln.strip() for ln in (p.stderr or p.stdout or f"exit status {p.returncode}").splitlines() if ln.strip()]
    return False, f"{perf} stat -e {','.join(events)}: {text[0] if text else ''}"


def plan(ctx, report, env: Mapping[str, str], argv_prefix: Sequence[str] = ()) -> EnergyPlan:
    """Measure where the plan asks for it and perf really reads the RAPL counters (tried once here,
    started the way the experiments are: pkg and ram, else pkg alone)."""
    try:
        from checks.system import energy_request
    except ImportError:
        return EnergyPlan(why_not="the energy check is not available")
    try:
        asked, ids, why = energy_request(ctx)
    except Exception as e:  # noqa: BLE001 - a broken request check must not stop the batch
        return EnergyPlan(why_not=f"cannot tell whether energy is asked for: {e}")
    if not asked:
        return EnergyPlan(why_not=why)
    from core.launch import which

    perf = which("perf", env)
    if not perf:
        return EnergyPlan(asked=True, experiments=tuple(ids), why_not="perf is not on the launch PATH")
    perf = os.path.abspath(perf)
    reason = ""
    for events in ((PKG, RAM), (PKG,)):
        ok, reason = _works(argv_prefix, perf, events, env)
        if ok:
            return EnergyPlan(perf=perf, events=events, experiments=tuple(ids), asked=True)
    return EnergyPlan(asked=True, experiments=tuple(ids), why_not=reason or "perf cannot read the RAPL counters")


def read_metrics(exp_dir: str) -> Dict[str, float]:
    """energy_metrics from perf's output (empty when it wrote nothing usable); also writes
    `energy/cpu_energy.txt` in mutation.py's format."""
    try:
        with open(os.path.join(exp_dir, RAW), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    values = {ev: float(num.replace(",", "")) for num, ev in _LINE.findall(text)}
    if PKG not in values:
        return {}
    out = {"cpu_energy_pkg_joules": round(values[PKG], 2)}
    if RAM in values:
        out["cpu_energy_ram_joules"] = round(values[RAM], 2)
    out["cpu_energy_total_joules"] = round(values[PKG] + values.get(RAM, 0.0), 2)
    summary = ("CPU Energy Consumption Summary\n==============================\n"
               f"Package Energy (Joules): {out['cpu_energy_pkg_joules']:.2f}\n"
               + (f"RAM Energy (Joules): {out['cpu_energy_ram_joules']:.2f}\n" if RAM in values else "")
               + f"Total CPU Energy (Joules): {out['cpu_energy_total_joules']:.2f}\n\n"
               "Note: Measured using perf stat with direct command wrapping\n")
    try:
        from core.memo import write_atomic

        write_atomic(os.path.join(exp_dir, "energy", "cpu_energy.txt"), summary.encode(), durable=False)
    except OSError:
        pass
    return out
