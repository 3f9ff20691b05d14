"""The `system` group: the machine the batch will run on.

GPUs and the processes holding their memory (an orphan of an earlier batch holding 5.5 GB killed
half of the user's failed runs with CUDA out of memory), each repo's interpreter and whether its
torch supports this GPU, the perf RAPL energy counters, the CPU governor, disk space, files left
root-owned by earlier sudo runs, and datasets on filesystems that are not mounted.

Every check looks at the machine as the launched experiments will find it (the launch context's
PATH, user and caches) and reports to the invoking user with commands to copy.
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from core import gpu as gpulib
from core.commands import quote
from core.memo import JsonMemo, memo_dir
from core.launch import which
from core.model import FAIL, OK, WARN, Finding
from core.secrets import mask_text

GROUP = "system"
GIB = 1024 ** 3
MIB = 1024 ** 2

GPU_TIMEOUT = 10.0          # nvidia-smi
PROBE_TIMEOUT = 90.0        # one interpreter importing torch, timm, torchvision
TOOL_TIMEOUT = 5.0          # perf --version, perf list, perf stat
OWNERSHIP_LIMIT = 20_000    # entries looked at per folder
RESULTS_PER_EXPERIMENT = 50 * MIB   # logs, energy CSVs, experiment.json
DISK_MARGIN = 1 * GIB       # on top of what the plan needs: fail below
DISK_COMFORT = 5 * GIB      # warn below need + this
DEFAULT_WEIGHTS = 1 * GIB   # a missing weight file of unknown size
INODES_FAIL, INODES_WARN = 10_000, 50_000
FSTAB = "/etc/fstab"
SMI_FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/local/nvidia/bin", "/usr/lib/wsl/lib")
CPU_SYSFS = "/sys/devices/system/cpu"
PARANOID = "/proc/sys/kernel/perf_event_paranoid"
RAPL_EVENTS = ("power/energy-pkg/", "power/energy-ram/")
# Approximate sizes of the weight files the bundled registry's models download, in bytes
# (torchvision's weights meta `_file_size`; timm's from the Hub), to weigh disk space offline.
KNOWN_WEIGHTS = {
    "densenet121-a639ec97.pth": 32_342_954,
    "resnet50-0676ba61.pth": 102_530_333,
    "resnet50-11ad3fa6.pth": 102_540_417,
    "resnet18-f37072fd.pth": 46_830_571,
    "timm/hrnet_w18.ms_aug_in1k": 85_300_000,
    "timm/resnet18.a1_in1k": 46_800_000,
}
# PyTorch wheel indexes, by the CUDA version they are built for.
TORCH_INDEXES = ((13, 0), (12, 9), (12, 8), (12, 6), (12, 4), (12, 1), (11, 8), (11, 7), (11, 6), (11, 3), (11, 1),
                 (10, 2))
_SECRET_ARG = re.compile(r"(--?[\w-]*(?:token|key|secret|passw(?:or)?d)[\w-]*)(=|\s+)(\S+)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Shared helpers

_memo_lock = threading.Lock()


def _memo(ctx, name: str, compute):
    """`compute()` once per doctor run, shared by the checks that need it (they run concurrently)."""
    with _memo_lock:
        slot = ctx.__dict__.setdefault("_system_memo", {}).setdefault(name, {"lock": threading.Lock()})
    with slot["lock"]:
        if "value" not in slot:
            slot["value"] = compute()
        return slot["value"]


def _q(*words) -> str:
    """`quote` for words that may be paths."""
    return quote(*map(str, words))


def _finding(fid: str, status: str, title: str, detail: str = "", fix: Sequence[str] = (),
             experiments: Iterable[str] = (), **data) -> Finding:
    return Finding(id=fid, group=GROUP, status=status, title=title, detail=detail, fix=tuple(fix),
                   experiments=tuple(dict.fromkeys(experiments)), data=data)


def _all_ids(ctx) -> Tuple[str, ...]:
    return tuple(e.id for e in ctx.plan.experiments)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _distro() -> str:
    """`debian`, `ubuntu`, ... from /etc/os-release (ID, else the first of ID_LIKE)."""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            info = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return ""
    ids = [info.get("ID", "").strip('"')] + info.get("ID_LIKE", "").strip('"').split()
    return next((i for i in ids if i in ("ubuntu", "debian", "fedora", "rhel", "arch")), ids[0])


def _install(package_by_distro: Mapping[str, str]) -> str:
    d = _distro()
    if d in ("fedora", "rhel"):
        return f"sudo dnf install -y {package_by_distro.get(d, package_by_distro['debian'])}"
    if d == "arch":
        return f"sudo pacman -S --noconfirm {package_by_distro.get(d, package_by_distro['debian'])}"
    return f"sudo apt-get install -y {package_by_distro.get(d, package_by_distro['debian'])}"


def _run(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, timeout: float = TOOL_TIMEOUT,
         **kw) -> Tuple[Optional[int], str, str]:
    """(returncode, stdout, stderr); returncode None on timeout or when it cannot start."""
    try:
        p = subprocess.run(list(argv), env=None if env is None else dict(env), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        return None, "", f"no answer within {timeout:g} s"
    except OSError as e:
        return None, "", f"cannot run {argv[0]}: {e.strerror}"
    return p.returncode, p.stdout, p.stderr


def _launch_env(ctx) -> Dict[str, str]:
    env = dict(ctx.launch.env)
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    env.setdefault("HOME", ctx.launch.home)
    return env


def _launch_user_groups(ctx) -> Tuple[int, ...]:
    try:
        return tuple(os.getgrouplist(ctx.launch.user, ctx.launch.gid))
    except (KeyError, OSError):
        return (ctx.launch.gid,)


def _writable_by(st: os.stat_result, uid: int, gids: Sequence[int]) -> bool:
    """Unix permission bits only: may `uid` (in groups `gids`) write an entry with this status?"""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def _mask_cmdline(text: str, env: Mapping[str, str]) -> str:
    return mask_text(_SECRET_ARG.sub(lambda m: m.group(1) + m.group(2) + "***", text), env)


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# GPU

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


# ---------------------------------------------------------------------------------------------
# Interpreters

_PROBE = r"""
import importlib, json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}}
for name in sys.argv[1].split(","):
    try:
        m = importlib.import_module(name)
        info = {"version": str(getattr(m, "__version__", "?"))}
        if name == "torch":
            flags = getattr(m._C, "_cuda_getArchFlags", lambda: None)()
            info["cuda"] = m.version.cuda
            info["arch"] = flags.split() if flags else list(m.cuda.get_arch_list())
            if sys.argv[2] == "1":
                info["cuda_available"] = bool(m.cuda.is_available())
        out["modules"][name] = info
    except BaseException as e:
        out["modules"][name] = {"error": (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]}
print("MUTATION-PROBE " + json.dumps(out))
"""


def _interpreter_plan(ctx) -> Dict[str, dict]:
    """Interpreter path -> {experiments, modules, repo_dir} from the plan's `python` needs."""
    plan: Dict[str, dict] = {}
    for e in ctx.plan.experiments:
        for side in e.sides:
            for n in side.needs:
                if n.kind != "python":
                    continue
                path = n.path_for(ctx.launch.home)
                item = plan.setdefault(path, {"experiments": [], "modules": {"torch"}, "repo_dir": n.repo_dir,
                                              "repos": []})
                item["experiments"].append(e.id)
                item["repos"].append(n.repo)
                kinds = {m.kind for m in side.needs}
                item["modules"].update({"torchvision", "timm"} if "timm" in kinds else  # timm imports torchvision
                                       {"torchvision"} if "torchvision" in kinds else set())
    return plan


def arch_supported(arch_list: Sequence[str], capability: str) -> bool:
    """Does a torch built for `arch_list` (e.g. ["sm_75", "sm_86", "compute_90"]) run on a device
    of compute capability "8.9"? A cubin runs on the same major with an equal or higher minor;
    PTX (compute_XY) is compiled at load time for any device at least XY; sm_90a-style entries
    only run on exactly that device."""
    major, minor = (int(x) for x in capability.split(".")[:2])
    for a in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", a)
        if not m:
            continue
        num = int(m.group(2))
        amaj, amin = num // 10, num % 10
        if m.group(3):
            if (amaj, amin) == (major, minor):
                return True
        elif m.group(1) == "sm" and amaj == major and amin <= minor:
            return True
        elif m.group(1) == "compute" and (amaj, amin) <= (major, minor):
            return True
    return False


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:2])


def _torch_install(python: str, modules: Iterable[str], driver_cuda: str) -> str:
    pkgs = ["torch"] + [m for m in ("torchvision", "timm") if m in modules]
    words = [python, "-m", "pip", "install", "--upgrade", *pkgs]
    have = _version_tuple(driver_cuda)
    if have:
        idx = next((v for v in TORCH_INDEXES if v <= have), None)
        if idx:
            words += ["--extra-index-url", f"https://download.pytorch.org/whl/cu{idx[0]}{idx[1]}"]
    return _q(*words)


_PROBE_ENV = ("PATH", "HOME", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
              "CONDA_PREFIX", "CUDA_VISIBLE_DEVICES")


def _probe_key(path: str, item: dict, env: Mapping[str, str], gpu: str) -> str:
    """What a probe's answer depends on: the interpreter, its environment's package folders (their
    mtimes change when packages are installed or removed), the variables it reads, the GPU driver."""
    import hashlib

    prefix = os.path.dirname(os.path.dirname(path))
    places = [path, os.path.realpath(path), os.path.join(prefix, "pyvenv.cfg"),
              os.path.join(prefix, "conda-meta", "history")]
    for pattern in ("lib/python*/*-packages", "local/lib/python*/*-packages", "lib/python3/dist-packages"):
        places += sorted(glob.glob(os.path.join(prefix, pattern)))
    if env.get("HOME"):
        places += sorted(glob.glob(os.path.join(env["HOME"], ".local", "lib", "python*", "site-packages")))
    stamps = []
    for p in places:
        try:
            st = os.stat(p)
            stamps.append([p, st.st_mtime_ns, st.st_size, st.st_ino])
        except OSError:
            stamps.append([p, None])
    key = {"python": path, "modules": sorted(item["modules"]), "gpu": gpu, "cwd": item["repo_dir"],
           "env": {k: env.get(k) for k in _PROBE_ENV}, "stamps": stamps}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _probe_memo(ctx) -> JsonMemo:
    """Probe answers kept on disk (`interpreters.json` beside the doctor's other memos), so a second
    doctor run does not import torch again unless the interpreter's packages changed."""
    return JsonMemo(os.path.join(memo_dir(ctx.options), "interpreters.json"), limit=64)


def _probe(path: str, item: dict, env: Mapping[str, str], gpu: bool) -> dict:
    mods = [m for m in ("torch", "torchvision", "timm") if m in item["modules"]]
    cwd = item["repo_dir"] if os.path.isdir(item["repo_dir"]) else None
    rc, out, err = _run([path, "-c", _PROBE, ",".join(mods), "1" if gpu else "0"], env=env, timeout=PROBE_TIMEOUT,
                        cwd=cwd)
    for line in reversed(out.splitlines()):
        if line.startswith("MUTATION-PROBE "):
            try:
                return {"ok": True, **json.loads(line[len("MUTATION-PROBE "):])}
            except ValueError:
                break
    tail = (err.strip() or out.strip()).splitlines()
    return {"ok": False, "timeout": rc is None and "no answer" in err, "rc": rc, "error": tail[-1] if tail else ""}


def check_interpreters(ctx):
    """Each repo interpreter exists, runs, imports torch (and timm/torchvision where needed), and its
    torch runs on this GPU (architecture and driver)."""
    plan = _interpreter_plan(ctx)
    if not plan:
        return None
    from concurrent.futures import ThreadPoolExecutor

    env = _launch_env(ctx)
    snap = _snapshot(ctx)[0]
    visible = _visible(snap, env) if snap else ()
    gpu_ids = set(gpu_needs(ctx))
    todo = {}
    out: List[Finding] = []
    for path, item in plan.items():
        ids = tuple(dict.fromkeys(item["experiments"]))
        repos = ", ".join(dict.fromkeys(item["repos"]))
        if not os.path.exists(path) or not os.access(path, os.X_OK):
            if "cache" in ctx.options.groups:
                continue  # the cache group reports it (cache.python.missing / broken)
            exists = os.path.exists(path)
            parts = path.split("/")
            if not exists and "envs" in parts and len(parts) > parts.index("envs") + 1:
                fix = [_q("conda", "create", "-y", "-n", parts[parts.index("envs") + 1], "python=3.10"),
                       f"{_q(path, '-m', 'pip', 'install', *sorted(item['modules']))}"]
            elif exists:
                fix = [_q("chmod", "+x", path)]
            else:
                fix = [_q("ls", "-l", os.path.dirname(path)) + f"  # then correct the interpreter of {repos}"]
            out.append(_finding("system.interpreter.missing", FAIL,
                                f"interpreter {path} {'is not executable' if exists else 'does not exist'}",
                                f"used by {repos}", fix=fix, experiments=ids, python=path))
            continue
        todo[path] = (item, ids, repos)
    if todo:
        memo = _probe_memo(ctx)
        gpu = f"{snap.driver}:{','.join(g.compute_capability or '?' for g in visible)}" if visible else ""
        keys = {p: _probe_key(p, todo[p][0], env, gpu) for p in todo}
        results = {p: memo.get(k) for p, k in keys.items()}
        missing = [p for p, r in results.items() if r is None]
        if missing:
            with ThreadPoolExecutor(max_workers=len(missing)) as pool:
                for p, r in zip(missing, pool.map(lambda p: _probe(p, todo[p][0], env, bool(visible)), missing)):
                    results[p] = r
                    if r["ok"]:  # a timeout or a crash is asked again next time
                        memo.put(keys[p], r)
            memo.save()
        for path, (item, ids, repos) in todo.items():
            out.extend(_interpreter_findings(ctx, path, item, ids, repos, results[path], snap, visible, gpu_ids))
    return out


def _interpreter_findings(ctx, path, item, ids, repos, r, snap, visible, gpu_ids) -> List[Finding]:
    driver_cuda = snap.cuda if snap else ""
    install = _torch_install(path, item["modules"], driver_cuda)
    if not r["ok"]:
        if r.get("timeout"):
            return [_finding("system.interpreter.timeout", WARN,
                             f"{path} did not finish importing {', '.join(sorted(item['modules']))} "
                             f"within {PROBE_TIMEOUT:.0f} s", f"used by {repos}",
                             fix=(_q(path, "-c", "import torch") + "  # time it: a cold disk or a hung NFS?",),
                             experiments=ids, python=path)]
        return [_finding("system.interpreter.broken", FAIL, f"{path} does not run",
                         mask_text(r.get("error") or f"exit status {r.get('rc')}", ctx.launch.env),
                         fix=(_q(path, "--version") + "  # see the error; recreate the environment if it is broken",),
                         experiments=ids, python=path)]
    mods = r["modules"]
    data = {"python": path, "version": r.get("python"), "modules": mods}
    torch = mods.get("torch", {})
    if "error" in torch:
        return [_finding("system.interpreter.no-torch", FAIL, f"{path} cannot import torch", torch["error"],
                         fix=(install,), experiments=ids, **data)]
    out = []
    for name in ("torchvision", "timm"):
        if "error" in mods.get(name, {}):
            out.append(_finding("system.interpreter.no-module", FAIL, f"{path} cannot import {name}",
                                mods[name]["error"], fix=(_q(path, "-m", "pip", "install", name),),
                                experiments=ids, **data))
    cuda, arch = torch.get("cuda"), torch.get("arch") or []
    gpu_exps = tuple(i for i in ids if i in gpu_ids)
    if visible and not cuda:
        out.append(_finding("system.interpreter.cpu-torch", FAIL if gpu_exps else WARN,
                            f"{path} has a CPU-only torch {torch['version']}: training runs on the CPU",
                            f"used by {repos}", fix=(install,), experiments=gpu_exps or ids, **data))
    elif visible and cuda:
        need, have = _version_tuple(cuda), _version_tuple(driver_cuda)
        if need and have and need[0] > have[0]:
            out.append(_finding("system.interpreter.driver", FAIL,
                                f"torch {torch['version']} of {path} is built for CUDA {cuda}; the driver "
                                f"{snap.driver} supports CUDA {driver_cuda}",
                                "torch.cuda.is_available() is False with this driver", fix=(install,),
                                experiments=ids, **data))
        for g in visible:
            if g.compute_capability and arch and not arch_supported(arch, g.compute_capability):
                out.append(_finding(
                    "system.interpreter.arch", FAIL,
                    f"torch {torch['version']} of {path} has no kernels for GPU {g.index} {g.name} "
                    f"(sm_{g.compute_capability.replace('.', '')})",
                    f"built for {' '.join(arch)}: CUDA error: no kernel image is available for execution on the device",
                    fix=(install + f"  # a build whose arch list covers sm_{g.compute_capability.replace('.', '')}",),
                    experiments=ids, **data))
    if out:
        return out
    extras = ", ".join(f"{n} {mods[n]['version']}" for n in ("torchvision", "timm") if n in mods)
    build = f"CUDA {cuda}, {' '.join(arch)}" if cuda else "CPU only"
    detail = f"used by {repos}" + ("" if visible else "; no GPU here, so the architecture is not checked")
    return [_finding("system.interpreter.ok", OK,
                     f"{path}: Python {r.get('python')}, torch {torch['version']} ({build})"
                     + (f", {extras}" if extras else ""), detail, experiments=ids, **data)]


# ---------------------------------------------------------------------------------------------
# Energy counters

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
        (vrc, vout, verr), (lrc, lout, lerr), (outcome, how, message) = (
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
        fix = []
        if ctx.launch.uid != 0 and (paranoid is None or paranoid > 0):
            fix += ["sudo sysctl kernel.perf_event_paranoid=0",
                    "echo 'kernel.perf_event_paranoid = 0' | sudo tee /etc/sysctl.d/99-perf-rapl.conf"
                    "  # keep it after a reboot"]
        fix.append(_q(*(["sudo"] if ctx.launch.uid == 0 and os.getuid() != 0 else []), perf, "stat", "-e",
                      RAPL_EVENTS[0], "true") + "  # see the error yourself")
        out.append(_finding("system.energy.rapl-unreadable", bad, f"{who} may not read {RAPL_EVENTS[0]}",
                            f"{message} (perf stat, {how}); perf_event_paranoid={paranoid}; {context}", fix=fix,
                            experiments=ids if asked else (), **data))
    if outcome in ("readable", "untested") and listed[RAPL_EVENTS[0]] and not listed[RAPL_EVENTS[1]]:
        out.append(_finding("system.energy.ram-missing", soft,
                            f"{RAPL_EVENTS[1]} is not available: RAM energy will be empty",
                            f"common on AMD and client Intel CPUs; {context}",
                            fix=(_q(perf, "list", "pmu") + "  # the power/ events this CPU offers",), **data))
    return out


# ---------------------------------------------------------------------------------------------
# CPU governor

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


# ---------------------------------------------------------------------------------------------
# Disk

def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


def _mount_point(path: str) -> str:
    """The mount point of the filesystem holding the existing `path`."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        path = parent
    return path


def _missing_weights(ctx) -> Dict[str, List[Tuple[int, Tuple[str, ...], str]]]:
    """Cache folder ("hub"/"torchhub") -> [(bytes, experiment ids, what)] for weights not in the cache."""
    out: Dict[str, list] = {"hub": [], "torchhub": []}
    for s in ctx.need_states().values():
        r = s.resolved
        if s.need.kind not in ("timm", "hf", "torchvision") or r is None or s.status == "present":
            continue
        if r.source == "torchhub":
            size, what = KNOWN_WEIGHTS.get(r.filename), r.filename
            out["torchhub"].append((size or DEFAULT_WEIGHTS, s.experiments, what + ("" if size else " (size unknown)")))
        else:
            size = KNOWN_WEIGHTS.get(r.repo_id)
            out["hub"].append((size or DEFAULT_WEIGHTS, s.experiments, r.repo_id + ("" if size else " (size unknown)")))
    return out


def check_disk(ctx):
    """Free space and inodes where results and caches are written, against what the plan needs."""
    ids = _all_ids(ctx)
    results = os.path.join(ctx.options.project_root, "results")
    missing = _missing_weights(ctx) if any(n.kind in ("timm", "hf", "torchvision")
                                           for n, _ in ctx.needs().values()) else {"hub": [], "torchhub": []}
    places = [("results", results, len(ids) * RESULTS_PER_EXPERIMENT, ids, [f"{len(ids)} experiment folder(s)"]),
              ("Hugging Face cache", ctx.launch.hf_cache, sum(b for b, _, _ in missing["hub"]),
               tuple(i for _, e, _ in missing["hub"] for i in e), [w for _, _, w in missing["hub"]]),
              ("torch hub cache", ctx.launch.torch_hub, sum(b for b, _, _ in missing["torchhub"]),
               tuple(i for _, e, _ in missing["torchhub"] for i in e), [w for _, _, w in missing["torchhub"]])]
    by_dev: Dict[int, dict] = {}
    for label, path, need, exps, what in places:
        anchor = _existing(path)
        try:
            dev = os.stat(anchor).st_dev
        except OSError:
            continue
        fs = by_dev.setdefault(dev, {"anchor": _mount_point(anchor), "labels": [], "paths": [], "need": DISK_MARGIN,
                                     "experiments": [], "what": []})
        fs["labels"].append(label)
        fs["paths"].append(path)
        fs["need"] += need
        fs["experiments"].extend(exps)
        fs["what"].extend(what)
    root = ctx.launch.uid == 0
    out = []
    for fs in by_dev.values():
        v = os.statvfs(fs["anchor"])
        free = (v.f_bfree if root else v.f_bavail) * v.f_frsize
        inodes = (v.f_ffree if root else v.f_favail) if v.f_files else None
        where = ", ".join(fs["labels"])
        data = {"paths": fs["paths"], "free_bytes": free, "need_bytes": fs["need"], "free_inodes": inodes,
                "needs": fs["what"]}
        look = [_q("df", "-h", fs["anchor"]),
                f"du -xsh {shlex.quote(fs['anchor'])}/* 2>/dev/null | sort -h | tail -n 15  # the largest folders"]
        if free < fs["need"]:
            out.append(_finding("system.disk.low", FAIL,
                                f"{_gib(free)} free for {where}; about {_gib(fs['need'])} needed",
                                f"{fs['anchor']}: " + "; ".join(fs["what"]) + f" + {_gib(DISK_MARGIN)} margin",
                                fix=look, experiments=ids, **data))
        elif free < fs["need"] + DISK_COMFORT:
            out.append(_finding("system.disk.low", WARN, f"only {_gib(free)} free for {where}",
                                f"{fs['anchor']}: about {_gib(fs['need'])} needed; checkpoints the training scripts "
                                f"save come on top", fix=look, **data))
        problem = free < fs["need"] + DISK_COMFORT
        if inodes is not None and inodes < INODES_WARN:
            problem = True
            out.append(_finding("system.disk.inodes", FAIL if inodes < INODES_FAIL else WARN,
                                f"only {inodes} free inodes for {where}", fs["anchor"],
                                fix=(_q("df", "-i", fs["anchor"]),
                                     f"find {shlex.quote(fs['anchor'])} -xdev -type f | cut -d/ -f2-4 | sort | "
                                     "uniq -c | "
                                     "sort -n | tail  # folders with most files"),
                                experiments=ids if inodes < INODES_FAIL else (), **data))
        if not problem:
            out.append(_finding("system.disk.ok", OK, f"{_gib(free)} free for {where}",
                                f"{fs['anchor']}: about {_gib(fs['need'])} needed", **data))
    return out


# ---------------------------------------------------------------------------------------------
# Ownership

def _walk_root_owned(root: str, uid: int, gids: Sequence[int], limit: int) -> Tuple[int, List[str], int, bool]:
    """(root-owned entries `uid` may not write, examples, entries seen, stopped early)."""
    try:
        st = os.lstat(root)
    except OSError:
        return 0, [], 0, False
    stuck = st.st_uid == 0 and (stat.S_ISLNK(st.st_mode) or not _writable_by(st, uid, gids))
    count, examples, seen, stack = int(stuck), [root] if stuck else [], 1, [root]
    if not stat.S_ISDIR(st.st_mode):
        return count, examples, seen, False
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for entry in it:
                seen += 1
                if seen > limit:
                    return count, examples, seen - 1, True
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if est.st_uid == 0 and (stat.S_ISLNK(est.st_mode) or not _writable_by(est, uid, gids)):
                    count += 1
                    if len(examples) < 5:
                        examples.append(entry.path)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
    return count, examples, seen, False


def _ownership_roots(ctx) -> List[Tuple[str, str]]:
    """(label, folder) the invoking user should own: results, the plan's repos, and their caches."""
    from core.launch import hf_cache_dir, torch_hub_dir

    roots = [("results", os.path.join(ctx.options.project_root, "results"))]
    repos = list(dict.fromkeys(s.repo for e in ctx.plan.experiments for s in e.sides)) or list(ctx.registry.repos)
    roots += [(f"repo {r}", ctx.registry.repos[r].path) for r in repos if r in ctx.registry.repos]
    home = ctx.launch.invoking_home
    caches = [ctx.launch.hf_cache, ctx.launch.torch_hub]
    if home:
        inv_env = ctx.launch.invoking_env or {}
        caches += [hf_cache_dir(inv_env, home), torch_hub_dir(inv_env, home)]
    for c in dict.fromkeys(os.path.abspath(c) for c in caches):
        if home and (c + "/").startswith(os.path.abspath(home).rstrip("/") + "/"):
            roots.append(("cache", c))
    roots = [(label, os.path.abspath(p)) for label, p in roots if os.path.lexists(p)]
    kept: List[str] = []
    for _, path in sorted(roots, key=lambda r: len(r[1])):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    out = []
    for label, path in roots:  # the registry's order; a folder inside another is walked with it
        if path in kept:
            kept.remove(path)
            out.append((label, path))
    return out


def check_ownership(ctx):
    """Entries in results, repos and the user's caches left root-owned by sudo runs: the invoking
    user cannot change or delete them."""
    uid = ctx.launch.invoking_uid
    if uid is None or uid <= 0:
        return None
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    import grp

    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    gids = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    out, looked, partial = [], [], []
    for label, root in _ownership_roots(ctx):
        count, examples, seen, stopped = _walk_root_owned(root, uid, gids, OWNERSHIP_LIMIT)
        looked.append(root)
        if stopped:
            partial.append(root)
        if not count:
            continue
        if label == "results":
            ids = _all_ids(ctx)
        elif label.startswith("repo "):
            repo = label[5:]
            ids = tuple(e.id for e in ctx.plan.experiments if any(s.repo == repo for s in e.sides))
        else:
            ids = ()
        # The launch user itself is blocked only when it is the invoking user (no sudo) and not root.
        status = FAIL if ctx.launch.uid == uid and label != "cache" else WARN
        more = f"; stopped after {OWNERSHIP_LIMIT} entries, there may be more" if stopped else ""
        out.append(_finding("system.ownership.root-owned", status,
                            f"{count}{'+' if stopped else ''} entr{'y' if count == 1 else 'ies'} in {root} "
                            f"({label}) are root-owned: {pw.pw_name} cannot change or delete them",
                            "e.g. " + ", ".join(examples) + more,
                            fix=(_q("sudo", "chown", "-R", f"{pw.pw_name}:{group}", root),),
                            experiments=ids if status == FAIL else (), root=root, count=count,
                            examples=examples, seen=seen, truncated=stopped, user=pw.pw_name))
    if not out and looked:
        more = f"; stopped after {OWNERSHIP_LIMIT} entries in {', '.join(partial)}" if partial else ""
        return _finding("system.ownership.ok", OK, f"no root-owned entries for {pw.pw_name} in {len(looked)} folder(s)",
                        ", ".join(looked) + more, roots=looked, truncated=partial)
    return out


# ---------------------------------------------------------------------------------------------
# Dataset mounts

def fstab_mounts(path: str = None) -> List[Tuple[str, str, str, str]]:
    """(device, mount point, type, options) of each filesystem line of fstab."""
    path = path or FSTAB
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[1].startswith("/") and words[2] not in ("swap", "none"):
                    out.append((words[0], words[1].replace("\\040", " "), words[2], words[3] if len(words) > 3 else ""))
    except OSError:
        pass
    return out


def _containing(path: str, mount_points: Iterable[str]) -> Optional[str]:
    best = None
    for m in mount_points:
        m = m.rstrip("/") or "/"
        if m != "/" and (path == m or path.startswith(m + "/")) and (best is None or len(m) > len(best)):
            best = m
    return best


def stat_paths(paths: Iterable[str], timeout: float) -> Dict[str, Tuple[str, Optional[OSError]]]:
    """os.stat of each path, concurrently, each in a daemon thread, all within `timeout` seconds:
    path -> ("ok"|"missing"|"error"|"timeout", the OSError or None). A hung network mount blocks
    its thread for good; a daemon thread does not keep the doctor from exiting."""
    import time

    box: Dict[str, Tuple[str, Optional[OSError]]] = {}

    def run(path):
        try:
            os.stat(path)
            box[path] = ("ok", None)
        except FileNotFoundError as e:
            box[path] = ("missing", e)
        except OSError as e:
            box[path] = ("error", e)

    paths = list(dict.fromkeys(paths))
    threads = [threading.Thread(target=run, args=(p,), name=f"stat {p}", daemon=True) for p in paths]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {p: box.get(p, ("timeout", None)) for p in paths}


def check_dataset_mounts(ctx):
    """Datasets under an fstab mount point that is not mounted, or on a mount that no longer answers."""
    datasets = [(n, ids) for n, ids in ctx.needs().values() if n.kind == "path" and n.spec.get("kind") == "dataset"]
    if not datasets:
        return None
    import psutil

    fstab = fstab_mounts()
    mounted = {p.mountpoint.rstrip("/") or "/": p for p in psutil.disk_partitions(all=True)}
    timeout = max(1.0, float(getattr(ctx.options, "timeout", 3.0)))
    out, checks = [], []
    for need, ids in datasets:
        path = need.path_for(ctx.launch.home)
        fm = _containing(path, [m for _, m, _, _ in fstab])
        if fm and fm not in mounted:
            dev, _, fstype, opts = next(e for e in fstab if (e[1].rstrip("/") or "/") == fm)
            out.append(_finding("system.mount.missing", FAIL, f"dataset {path} is on {fm}, which is not mounted",
                                f"{FSTAB}: {dev} {fm} {fstype} {opts}".rstrip(), fix=(_q("sudo", "mount", fm),),
                                experiments=ids, path=path, mount_point=fm, device=dev))
            continue
        checks.append((need, ids, path))
    results = stat_paths([p for _, _, p in checks], timeout)
    ok = []
    for need, ids, path in checks:
        outcome, err = results.get(path, ("timeout", None))
        stale = outcome == "timeout" or (outcome == "error" and err.errno in (errno.ENOTCONN, errno.ESTALE, errno.EIO,
                                                                              errno.EHOSTDOWN))
        if not stale:
            if outcome == "ok":
                ok.append(path)
            continue  # missing or unreadable: the cache group says so
        mp = _containing(path, mounted) or "/"
        part = mounted.get(mp)
        why = (f"no answer within {timeout:g} s" if outcome == "timeout" else f"{os.strerror(err.errno)}")
        out.append(_finding("system.mount.stale", FAIL, f"dataset {path} is on a mount that does not answer ({mp})",
                            f"stat: {why}; {part.device} {part.fstype}" if part else f"stat: {why}",
                            fix=(_q("sudo", "umount", "-l", mp) + " && " + _q("sudo", "mount", mp),),
                            experiments=ids, path=path, mount_point=mp))
    if ok and not out:
        out.append(_finding("system.mount.ok", OK, f"{len(ok)} dataset path(s) on mounted, answering filesystems",
                            ", ".join(ok[:5]), paths=ok))
    return out
