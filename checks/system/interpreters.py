"""Each repo's interpreter, probed as the launched process would start it: does it import torch,
timm, torchvision, and does its torch support this GPU?
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, Iterable, List, Mapping, Sequence

from checks.system.common import _finding, _launch_env, _q, _run, _version_tuple
from checks.system.gpu import _snapshot, _visible, gpu_needs
from core.memo import JsonMemo, memo_dir
from core.model import FAIL, OK, WARN, Finding
from core.secrets import mask_text


PROBE_TIMEOUT = 90.0        # one interpreter importing torch, timm, torchvision
# PyTorch wheel indexes, by the CUDA version they are built for.
TORCH_INDEXES = ((13, 0), (12, 9), (12, 8), (12, 6), (12, 4), (12, 1), (11, 8), (11, 7), (11, 6), (11, 3), (11, 1),
                 (10, 2))


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
