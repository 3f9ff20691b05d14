"""Benchmark: the doctor's network group against a black-holed loopback Hub, next to the time a real
timm hrnet_w18 load takes to fail against the same black hole. Prints one JSON object.

- The doctor: `check_network` on a 22-experiment plan (the user's 11 sequential + 11 parallel
  quick-validation batch), nothing cached, the Hub (HF_ENDPOINT) and the torch hub download host
  both pointed at one loopback socket that accepts connections and never answers.
- The real load: `timm.create_model('hrnet_w18', pretrained=True)` in a subprocess with an empty
  cache, HF_ENDPOINT at the same black hole and HF_HUB_ETAG_TIMEOUT reduced to 1 s. Its retry phase
  uses a hard-coded 60 s timeout whatever HF_HUB_ETAG_TIMEOUT says, so a run to failure takes
  ~13 min: by default it is stopped after `--real-cap` seconds and reported as a lower bound
  (`censored: true`); `--full` waits for the failure.
- The default-timeout figure is computed from huggingface_hub's constants, read from the installed
  library's source (not imported): DEFAULT_ETAG_TIMEOUT, _ETAG_RETRY_TIMEOUT and the
  http_backoff defaults (max_retries, base_wait_time, max_wait_time).

Usage: .venv/bin/python bench/bench_network.py [--timeout 3] [--real-cap 90 | --full] [--settings FILE]
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import netprobe  # noqa: E402
from checks.network import check_network  # noqa: E402
from core.model import FAIL  # noqa: E402

CORPUS_SETTINGS = ROOT.parent / "shared" / "corpus" / "user-project" / "settings" / "archived" / "11_models_quick_validation_1epoch.json"
REDUCED_ETAG_TIMEOUT = 1
RUNNER_MAX_RETRIES = 2  # the batch's max_retries: mutation.py runs a failed experiment twice more

# ---------------------------------------------------------------------------------------------
# huggingface_hub's constants, from its source


def _module_ast(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise SystemExit(f"bench_network: {module} is not installed")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def _assigned(tree: ast.Module, name: str):
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and t.id == name and node.value is not None:
                return ast.literal_eval(node.value)
    raise KeyError(name)


def _defaults(tree: ast.Module, func: str) -> Dict[str, object]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            a = node.args
            out = {}
            pos = a.posonlyargs + a.args
            for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
                out[arg.arg] = d
            for arg, d in zip(a.kwonlyargs, a.kw_defaults):
                if d is not None:
                    out[arg.arg] = d
            return {k: ast.literal_eval(v) for k, v in out.items() if isinstance(v, ast.Constant)}
    raise KeyError(func)


def hub_constants() -> Dict[str, object]:
    """The timing constants of the installed huggingface_hub, read from its source files."""
    from importlib import metadata

    backoff = _defaults(_module_ast("huggingface_hub.utils._http"), "http_backoff")
    c = {
        "version": metadata.version("huggingface_hub"),
        "DEFAULT_ETAG_TIMEOUT": _assigned(_module_ast("huggingface_hub.constants"), "DEFAULT_ETAG_TIMEOUT"),
        "_ETAG_RETRY_TIMEOUT": _assigned(_module_ast("huggingface_hub.file_download"), "_ETAG_RETRY_TIMEOUT"),
        "max_retries": backoff["max_retries"],
        "base_wait_time": backoff["base_wait_time"],
        "max_wait_time": backoff["max_wait_time"],
    }
    waits, w = [], c["base_wait_time"]
    for _ in range(c["max_retries"]):
        waits.append(w)
        w = min(c["max_wait_time"], w * 2)
    c["backoff_sleeps"] = waits
    return c


def black_hole_time_to_failure(c: Dict[str, object], etag_timeout: float, files: int = 2) -> Dict[str, float]:
    """Seconds an uncached Hub file takes to fail against a black hole: the first HEAD waits the
    etag timeout, then the retry phase makes max_retries + 1 attempts of _ETAG_RETRY_TIMEOUT with
    the backoff sleeps between them. timm tries `files` files (model.safetensors, pytorch_model.bin)."""
    per_file = etag_timeout + (c["max_retries"] + 1) * c["_ETAG_RETRY_TIMEOUT"] + sum(c["backoff_sleeps"])
    return {"per_file_s": per_file, "per_load_s": per_file * files,
            "per_experiment_with_runner_retries_s": per_file * files * (1 + RUNNER_MAX_RETRIES)}


# ---------------------------------------------------------------------------------------------
# The plan and a context for check_network


def real_context(settings: Path, hub_url: str, timeout: float, home: str):
    """The doctor's real context for `settings` with the bundled registry, as a process whose HOME
    is empty (nothing cached) and whose HF_ENDPOINT is `hub_url` would get it."""
    from doctor.cli import build_parser, make_context

    for k in [k for k in os.environ if k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
              or k in ("TORCH_HOME", "XDG_CACHE_HOME") or k.lower().endswith("_proxy")]:
        del os.environ[k]
    os.environ.update(HF_ENDPOINT=hub_url, HOME=home, MUTATION_DOCTOR_ASK_SUDO="0")
    args = build_parser().parse_args(["-ec", str(settings), "--models-config", str(ROOT / "settings" / "models_config.json"),
                                      "--project-root", home, "--only", "network", "--probe-timeout", str(timeout)])
    ctx = make_context(args)
    ctx.need_states()  # the cache group's work, shared with the network group; not timed here
    return ctx


def probe_for_plan(ctx) -> Dict[str, object]:
    """Run the network group for a plan context and time it.

    `ctx` is anything with the DoctorContext attributes check_network uses (`launch`, `options`,
    `need_states()`): a real `core.context.DoctorContext` built from a settings file fits.
    Returns seconds, the findings (id, status, experiments) and the blocked experiment ids.
    """
    t0 = time.monotonic()
    findings = check_network(ctx)
    seconds = time.monotonic() - t0
    blocked = sorted({e for f in findings if f.status == FAIL for e in f.experiments})
    return {"seconds": round(seconds, 3),
            "findings": [{"id": f.id, "status": f.status, "title": f.title, "experiments": list(f.experiments)}
                         for f in findings],
            "blocked": blocked}


# ---------------------------------------------------------------------------------------------
# The black hole and the real load


class BlackHole:
    """127.0.0.1 socket that accepts every connection and never sends a byte (stops with the bench)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: List[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.held.append(c)
            except socket.timeout:
                continue
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=2)
        for s in self.held + [self.sock]:
            s.close()


REAL_LOAD = "import timm; timm.create_model('hrnet_w18', pretrained=True); print('LOADED')"


def real_load(url: str, cap: Optional[float]) -> Dict[str, object]:
    """Time a real timm hrnet_w18 load against `url` with an empty cache; stop it after `cap` s."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "HF_ENDPOINT": url,
               "HF_HUB_CACHE": os.path.join(tmp, "hub"), "TORCH_HOME": os.path.join(tmp, "torch"),
               "HF_HUB_ETAG_TIMEOUT": str(REDUCED_ETAG_TIMEOUT), "HF_HUB_DISABLE_TELEMETRY": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", REAL_LOAD], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        events: List[Tuple[float, str]] = []

        def read_err():
            for line in proc.stderr:
                events.append((round(time.monotonic() - t0, 2), line.rstrip()[:200]))

        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=cap)
            censored = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            censored = True
        elapsed = time.monotonic() - t0
        reader.join(timeout=2)
        out = proc.stdout.read() if proc.stdout else ""
    retries = [t for t, line in events if "Retrying in" in line]
    last = next((line for _, line in reversed(events) if "Error" in line), "")
    return {"seconds": round(elapsed, 2), "censored": censored, "cap_s": cap, "loaded": "LOADED" in out,
            "returncode": None if censored else proc.returncode, "retry_log_times_s": retries,
            "final_error": last}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=3.0, help="probe timeout per stage (default 3 s)")
    ap.add_argument("--real-cap", type=float, default=90.0, help="stop the real load after this many seconds")
    ap.add_argument("--full", action="store_true", help="let the real load run until it fails (~13 min)")
    ap.add_argument("--settings", type=Path, default=CORPUS_SETTINGS, help="settings file of the plan")
    args = ap.parse_args(argv)

    if not args.settings.is_file():
        print(json.dumps({"skipped": f"settings file not found: {args.settings}"}))
        return 0
    consts = hub_constants()
    with BlackHole() as hole, tempfile.TemporaryDirectory(prefix="bench-network-") as home:
        url = f"https://127.0.0.1:{hole.port}"
        netprobe.TORCH_HUB_HOST = url  # torch hub downloads go to the same black hole (nothing leaves the machine)
        ctx = real_context(args.settings, url, args.timeout, home)
        doctor = probe_for_plan(ctx)
        real = real_load(url, None if args.full else args.real_cap)

    affected = sorted(e.id for e in ctx.plan.experiments if any(n.kind in ("timm", "hf", "torchvision") for n in e.needs))
    reduced = black_hole_time_to_failure(consts, REDUCED_ETAG_TIMEOUT)
    default = black_hole_time_to_failure(consts, consts["DEFAULT_ETAG_TIMEOUT"])
    real_s = real["seconds"] if not real["censored"] else max(real["seconds"], 0.0)
    result = {
        "plan": {"settings": str(args.settings), "experiments": len(ctx.plan.experiments), "affected": affected},
        "doctor": {**doctor, "timeout_s": args.timeout,
                   "within_timeout_plus_0_5": doctor["seconds"] <= args.timeout + 0.5,
                   "all_affected_reported": doctor["blocked"] == affected},
        "real_load": {**real, "what": "timm.create_model('hrnet_w18', pretrained=True), empty cache, "
                                      "HF_ENDPOINT black-holed", "HF_HUB_ETAG_TIMEOUT": REDUCED_ETAG_TIMEOUT,
                      "predicted_from_constants_s": reduced["per_load_s"]},
        "default_timeouts": {"huggingface_hub": consts, **default,
                             "formula": "per file = etag_timeout + (max_retries + 1) * _ETAG_RETRY_TIMEOUT + "
                                        "sum(backoff sleeps); timm tries 2 files; the runner retries twice"},
        "ratio": {"real_over_doctor": round(real_s / doctor["seconds"], 1) if doctor["seconds"] else None,
                  "real_is_lower_bound": real["censored"],
                  "default_over_doctor": round(default["per_load_s"] / doctor["seconds"], 1) if doctor["seconds"] else None,
                  "target_met_1_20": bool(doctor["seconds"] and doctor["seconds"] * 20 <= real_s)},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
