"""GPUs and the processes holding their memory: an orphan of an earlier batch holding 5.5 GB killed
half of the user's failed runs with CUDA out of memory.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from checks.system.common import _all_ids, _distro, _finding, _install, _launch_env, _mask_cmdline, _memo, _q, _short
from core import gpu as gpulib
from core.model import FAIL, OK, WARN, Finding


GPU_TIMEOUT = 10.0          # nvidia-smi
SMI_FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/local/nvidia/bin", "/usr/lib/wsl/lib")


def _project_paths(ctx) -> List[str]:
    paths = [os.path.join(ctx.options.project_root, "results")]
    paths += [spec.path for spec in ctx.registry.repos.values()]
    return [os.path.abspath(p) for p in paths]


def _visible(snap: gpulib.GpuSnapshot, env: Mapping[str, str]) -> Tuple[gpulib.Gpu, ...]:
    """The GPUs CUDA_VISIBLE_DEVICES (of the launch environment) leaves visible."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return snap.gpus
    out = []
    for word in value.split(","):
        word = word.strip()
        if not word.isdigit():
            break  # CUDA stops at the first invalid entry ("-1", "", a UUID we do not map)
        g = snap.gpu(int(word))
        if g is None:
            break
        out.append(g)
    return tuple(out)


def _snapshot(ctx):
    """(snapshot or None, error text or "", nvidia-smi found off the launch PATH or "").

    CUDA needs no nvidia-smi, so when the launch PATH (sudo's secure_path) lacks it, it is looked
    for on our PATH and in the driver's usual folders. Computed once per doctor run.
    """
    def compute():
        env = _launch_env(ctx)
        elsewhere = ""
        if gpulib.find_nvidia_smi(env) is None:
            dirs = os.environ.get("PATH", "").split(os.pathsep) + list(SMI_FALLBACK_DIRS)
            elsewhere = gpulib.find_nvidia_smi({"PATH": os.pathsep.join(dirs)}) or ""
            if elsewhere:
                env = dict(env, PATH=os.path.dirname(elsewhere) + os.pathsep + env.get("PATH", ""))
        try:
            return gpulib.query_gpus(env=env, timeout=GPU_TIMEOUT, project_paths=_project_paths(ctx)), "", elsewhere
        except gpulib.GpuQueryError as e:
            return None, str(e), elsewhere
    return _memo(ctx, "gpu", compute)


def _side_gpu(side) -> Optional[float]:
    """GiB of GPU memory a side needs: its gpu_memory_gb, 0.0 for a bare `{"gpu": true}`, None for none."""
    mem = [float(n.spec["gpu_memory_gb"]) for n in side.needs if n.kind == "gpu_memory_gb"]
    if mem:
        return max(mem)
    if any(n.kind == "gpu" and n.spec.get("gpu") for n in side.needs):
        return 0.0
    return None


def gpu_needs(ctx) -> Dict[str, float]:
    """Experiment id -> GiB of GPU memory it needs (both sides of a parallel experiment add up;
    0.0: a GPU of any size). Experiments without a GPU need are absent."""
    out = {}
    for e in ctx.plan.experiments:
        sides = [_side_gpu(s) for s in e.sides]
        if any(v is not None for v in sides):
            out[e.id] = sum(v or 0.0 for v in sides)
    return out


def _kill_lines(ctx, procs: Iterable[gpulib.GpuProcess]) -> List[str]:
    lines = []
    for p in procs:
        sudo = "" if p.user and p.user == ctx.launch.invoking_user else "sudo "
        shown = _short(_mask_cmdline(p.cmdline, ctx.launch.env), 300)
        who = f"{p.user}, " if p.user else ""
        lines.append(f"{sudo}kill {p.pid}  # {who}{p.memory_mib} MiB on GPU {p.gpu_index}: {shown}")
    return lines


def _proc_words(ctx, p: gpulib.GpuProcess) -> str:
    who = f" ({p.user})" if p.user else ""
    shown = _short(_mask_cmdline(p.cmdline, ctx.launch.env))
    return f"pid {p.pid}{who}, {p.memory_mib} MiB on GPU {p.gpu_index}: {shown}"


def check_gpu(ctx):
    """GPUs answer, stray processes of earlier batches, and enough free memory for each experiment."""
    needs = gpu_needs(ctx)
    gpu_ids = tuple(needs)
    env = _launch_env(ctx)
    snap, error, elsewhere = _snapshot(ctx)
    if error:
        smi = elsewhere or gpulib.find_nvidia_smi(env) or "nvidia-smi"
        return _finding("system.gpu.smi-failed", FAIL if gpu_ids else WARN, "nvidia-smi is there but does not answer",
                        error, fix=(_q(smi) + "  # run it: a driver/library version mismatch or an unloaded module "
                                    "needs a driver reinstall or a reboot",
                                    "sudo dmesg | grep -i -E 'nvrm|nvidia' | tail -n 20"),
                        experiments=gpu_ids)
    visible = _visible(snap, env) if snap else ()
    if not visible:
        return _no_gpu(snap, env, gpu_ids)
    out = [_present(snap, visible)]
    if elsewhere:
        out.append(_finding("system.gpu.smi-not-on-path", WARN,
                            f"nvidia-smi is not on the launch PATH (it is {elsewhere})",
                            "CUDA works without it, but scripts that record GPU power, temperature and utilisation "
                            "with nvidia-smi will leave those columns empty",
                            fix=(_q("sudo", "ln", "-s", elsewhere, "/usr/local/bin/nvidia-smi"),), smi=elsewhere))
    foreign = gpulib.foreign_processes(snap, {os.getpid()})
    out.extend(_process_findings(ctx, foreign, gpu_ids))
    out.extend(_memory_findings(ctx, needs, visible, foreign))
    return out


def _no_gpu(snap, env: Mapping[str, str], gpu_ids: Tuple[str, ...]) -> Finding:
    if snap is None:
        why = f"no nvidia-smi on the launch PATH ({env.get('PATH', '')}) nor in {', '.join(SMI_FALLBACK_DIRS)}"
    elif snap.gpus:
        why = f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} in the launch environment hides every GPU"
    else:
        why = "nvidia-smi lists no GPU"
    if not gpu_ids:
        return _finding("system.gpu.none", OK, "no GPU; no experiment declares a GPU need", why)
    fix = ["lspci | grep -i -E 'nvidia|3d controller'  # is there an NVIDIA GPU at all?",
           ("sudo ubuntu-drivers install" if _distro() == "ubuntu" else _install({"debian": "nvidia-driver"}))
           + "  # then reboot"]
    if snap is not None and snap.gpus:
        fix = ["unset CUDA_VISIBLE_DEVICES  # or list a GPU index: " + ",".join(str(g.index) for g in snap.gpus)]
    return _finding("system.gpu.none", FAIL, f"no GPU for {len(gpu_ids)} experiment(s) that need one", why,
                    fix=fix, experiments=gpu_ids)


def _present(snap: gpulib.GpuSnapshot, visible) -> Finding:
    summary = "; ".join(f"GPU {g.index} {g.name} ({g.memory_free_mib} of {g.memory_total_mib} MiB free"
                        + (f", compute capability {g.compute_capability}" if g.compute_capability else "") + ")"
                        for g in visible)
    return _finding("system.gpu.present", OK, f"{len(visible)} GPU(s), driver {snap.driver}"
                    + (f", CUDA {snap.cuda}" if snap.cuda else ""), summary,
                    gpus=[dataclasses.asdict(g) for g in visible], driver=snap.driver, cuda=snap.cuda)


def _process_findings(ctx, foreign, gpu_ids: Tuple[str, ...]) -> List[Finding]:
    """An orphan of this project's earlier batches fails (it holds back the experiments that use the
    GPU: all of them when none declares it); another orphan warns; a live process is information."""
    out = []
    for p in foreign:
        data = {"pid": p.pid, "user": p.user, "ppid": p.ppid, "gpu": p.gpu_index, "memory_mib": p.memory_mib,
                "cmdline": _mask_cmdline(p.cmdline, ctx.launch.env), "orphan": p.orphan, "reason": p.reason}
        look = _q("ps", "-o", "pid,ppid,user,etime,args", "-p", str(p.pid)) + "  # look at it first"
        if p.orphan and gpulib.in_project(p):
            held = "" if gpu_ids else " (no experiment declares its GPU needs, so all wait)"
            out.append(_finding("system.gpu.stray-process", FAIL,
                                f"a process left by an earlier batch holds {p.memory_mib} MiB of GPU {p.gpu_index}",
                                f"{_proc_words(ctx, p)}; {p.reason}{held}", fix=[look] + _kill_lines(ctx, [p]),
                                experiments=gpu_ids or _all_ids(ctx), **data))
        elif p.orphan:
            out.append(_finding("system.gpu.stray-process", WARN,
                                f"an orphaned process holds {p.memory_mib} MiB of GPU {p.gpu_index}",
                                f"{_proc_words(ctx, p)}; {p.reason}", fix=[look] + _kill_lines(ctx, [p]), **data))
        else:
            out.append(_finding("system.gpu.process", OK, f"GPU {p.gpu_index} is in use by pid {p.pid}",
                                _proc_words(ctx, p), **data))
    return out


def _memory_findings(ctx, needs: Mapping[str, float], visible, foreign) -> List[Finding]:
    best = max(visible, key=lambda g: g.memory_free_mib)
    largest = max(visible, key=lambda g: g.memory_total_mib)
    short: Dict[float, List[str]] = {}
    for eid, gib in needs.items():
        if gib > 0 and gib * 1024 > best.memory_free_mib:
            short.setdefault(gib, []).append(eid)
    out = []
    for gib, ids in sorted(short.items()):
        holders = sorted((p for p in foreign if p.gpu_index == best.index and p.memory_mib > 0),
                         key=lambda p: -p.memory_mib)
        if gib * 1024 > largest.memory_total_mib:
            detail = (f"the largest GPU ({largest.name}, GPU {largest.index}) has {largest.memory_total_mib} MiB "
                      f"in total")
            fix = [f"lower the batch size of these experiments, then \"gpu_memory_gb\" in {ctx.registry.path}"]
        else:
            named = "; ".join(_proc_words(ctx, p) for p in holders) or "no process listed by nvidia-smi"
            detail = f"held by: {named}"
            fix = ([_q("ps", "-o", "pid,ppid,user,etime,args", "-p", ",".join(str(p.pid) for p in holders))
                    + "  # look at them first"] if holders else []) + _kill_lines(ctx, holders)
            if not holders:
                fix.append(_q("nvidia-smi") + "  # memory held outside the process list (another container?)")
        out.append(_finding("system.gpu.memory", FAIL,
                            f"{len(ids)} experiment(s) need {gib:g} GiB of GPU memory; the most free on one GPU is "
                            f"{best.memory_free_mib / 1024:.1f} GiB (GPU {best.index})", detail, fix=fix,
                            experiments=ids, need_gib=gib, free_mib=best.memory_free_mib, gpu=best.index,
                            holders=[p.pid for p in holders]))
    return out
