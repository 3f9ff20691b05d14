"""`mutation-doctor explain` on failures caused for real.

A session fixture starts every failing process at once (real subprocesses: huggingface_hub against
loopback servers that refuse, black-hole, present a self-signed certificate, proxy-refuse and 404;
timm offline with an empty cache; torch.hub against a refused port; CUDA on a machine without a
driver; missing module, dataset, interpreter; argparse; perf without RAPL; a non-root process
writing a root-owned folder; SIGKILL, SIGINT and a timeout's SIGTERM), captures their output the
way the runner does (stdout+stderr into the attempt's log), and writes result folders in our
runner's layout and in the user's mutation.py layout. The CUDA OOM/arch texts cannot be produced
on this machine and come from the exact texts in CONTEXT.md; the sudo case is built from records
(the real sudo is tested with the runner).

Only waits are shortened in the Hub client (backoff sleeps removed, one retry, 1 s timeouts); the
code path, the exceptions and their chains are the library's own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Optional

import pytest

from doctor.explain import explain_path, main
from doctor.explain.render import to_json
from tests.support.children import HUB_CHILD

PY = sys.executable
RUN_TS = "run_20260201_010203"

TIMM_CHILD = r'''
print("Model: hrnet18 (ft_HRNet18)", flush=True)
import timm
timm.create_model("hrnet_w18", pretrained=True)
'''

TORCHHUB_CHILD = r'''
import sys, torch.hub
print("Loading densenet121", flush=True)
torch.hub.load_state_dict_from_url(sys.argv[1], model_dir=sys.argv[2])
'''

TRAIN_CHILD = r'''
import sys, time
mode = sys.argv[1]
print("Train Epoch: 1 [0/60000 (0%)]\tLoss: 2.296764", flush=True)
if mode == "zero":
    rate = 1 / 0
elif mode == "hang":
    for i in range(600):
        print(f"Train Epoch: 1 [{i * 64}/60000]\tLoss: 2.1", flush=True)
        time.sleep(0.05)
elif mode == "noop":
    print("Mode siamese_v2: not yet implemented, skipping training", flush=True)
elif mode == "benign":
    import subprocess
    subprocess.run([sys.executable, "-c", "import scipy.io"])
    print("Rank@1:0.879454 Rank@5:0.962886 Rank@10:0.975356 mAP:0.697153", flush=True)
    print("Training completed successfully!", flush=True)
'''

DATA_CHILD = r'''
import torchvision
print("Data Directory: ./Market/Market-1501-v15.09.15/pytorch", flush=True)
torchvision.datasets.ImageFolder("./Market/Market-1501-v15.09.15/pytorch/train_all")
'''

ARGS_CHILD = r'''
import argparse
p = argparse.ArgumentParser(prog="train.py")
p.add_argument("--lr", type=float)
p.parse_args()
'''

TRAIN_SH = r'''#!/bin/bash
PYTHON_PATH="$HOME/miniconda3/envs/reid_baseline/bin/python"
echo "Model: hrnet18 (ft_HRNet18)"
if [ ! -x "$PYTHON_PATH" ]; then
    echo "ERROR: Python not found at $PYTHON_PATH"
    exit 1
fi
exec "$PYTHON_PATH" train.py "$@"
'''

WRITE_CHILD = r'''
import os, sys
print("Saving checkpoint", flush=True)
with open(os.path.join(sys.argv[1], "net_last.pth"), "wb") as f:
    f.write(b"x")
'''

CUDA_CHILD = r'''
import torch
print("Using device cuda:0", flush=True)
torch.zeros(1).cuda()
'''

# Exact texts from CONTEXT.md (CUDA cannot be made to fail this way on this machine).
OOM_TEXT = ("RuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 9.77 GiB total "
            "capacity; 8.10 GiB already allocated; ...)")
ARCH_TEXT = "RuntimeError: CUDA error: no kernel image is available for execution on the device"
CONTEXT_TLS = ("httpcore.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
               "self-signed certificate (_ssl.c:1017)")
CONTEXT_TIMEOUT = "httpx.ConnectTimeout: _ssl.c:1000: The handshake operation timed out"
CONTEXT_RESET = "httpx.ConnectError: [Errno 104] Connection reset by peer"
CONTEXT_LEN = ("huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate "
               "the file on the Hub and we cannot find the requested files in the local cache. Please "
               "check your connection and try again or make sure your Internet connection is on.")


def torch_traceback(exc_line: str) -> str:
    return ("Traceback (most recent call last):\n"
            '  File "/home/u/repos/Person_reID_baseline_pytorch/train.py", line 512, in <module>\n'
            "    model = train_model(model, criterion, optimizer_ft, exp_lr_scheduler, num_epochs=opt.total_epoch)\n"
            '  File "/home/u/repos/Person_reID_baseline_pytorch/train.py", line 233, in train_model\n'
            "    outputs = model(inputs)\n"
            f"{exc_line}\n")


# --------------------------------------------------------------------------- loopback servers

class _Handler(BaseHTTPRequestHandler):
    def do_CONNECT(self):  # a proxy that refuses tunnels
        self.send_response(403)
        self.end_headers()

    def do_HEAD(self):  # a Hub that does not know the repo
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *a):
        pass


class Servers:
    """Refused port, black hole, self-signed TLS server, proxy/404 HTTP server; all on 127.0.0.1."""

    def __init__(self, tmp: Path):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.refused_port = s.getsockname()[1]
        s.close()  # nothing listens there any more: connection refused
        self.blackhole = socket.socket()
        self.blackhole.bind(("127.0.0.1", 0))
        self.blackhole.listen(64)  # accepts (kernel backlog), never answers
        self.stop = threading.Event()
        self.tls = None
        if shutil.which("openssl"):  # a self-signed certificate for the TLS server
            key, cert = tmp / "key.pem", tmp / "cert.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                            "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                           timeout=30)
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(cert), str(key))
            self._start_tls()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.http_thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.http_thread.start()

    def _start_tls(self):
        self.tls = socket.socket()
        self.tls.bind(("127.0.0.1", 0))
        self.tls.listen(64)
        self.tls.settimeout(0.2)
        self.tls_thread = threading.Thread(target=self._tls_loop, daemon=True)
        self.tls_thread.start()

    def _tls_loop(self):
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.tls.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn.settimeout(2)
                self.ctx.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                conn.close()

    def url(self, kind: str) -> str:
        if kind == "tls":
            return f"https://127.0.0.1:{self.tls.getsockname()[1]}"
        if kind == "blackhole":
            return f"http://127.0.0.1:{self.blackhole.getsockname()[1]}"
        if kind == "http":
            return f"http://127.0.0.1:{self.http.server_address[1]}"
        return f"http://127.0.0.1:{self.refused_port}"

    def close(self):
        self.stop.set()
        self.http.shutdown()
        self.http.server_close()
        if self.tls is not None:
            self.tls_thread.join(5)
            self.tls.close()
        self.blackhole.close()


# --------------------------------------------------------------------------- scenarios

@dataclass
class Proc:
    name: str
    argv: list
    env: dict
    cwd: str
    log: Path
    action: Optional[str] = None  # "kill" | "timeout" | "sigint"
    user: Optional[str] = None
    popen: Optional[subprocess.Popen] = None
    started: float = 0.0
    duration: float = 0.0
    returncode: Optional[int] = None
    signal: Optional[str] = None
    timed_out: bool = False


@dataclass
class RealResults:
    root: Path
    run: Path
    user_run: Path
    procs: Dict[str, Proc] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    report: object = None

    def exp(self, name: str):
        for e in self.report.explanations:
            if e.experiment_id == name:
                return e
        raise KeyError(name)


def _start(p: Proc) -> None:
    p.log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(p.log, "wb")
    kw = {}
    if p.user:
        kw["user"] = p.user
    p.started = time.monotonic()
    p.popen = subprocess.Popen(p.argv, env=p.env, cwd=p.cwd, stdout=fh, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    fh.close()


def _drive(p: Proc) -> None:
    """Wait for the process; deliver its signal once it has printed its first epoch."""
    deadline = time.monotonic() + 60
    if p.action:
        while time.monotonic() < deadline and b"Train Epoch" not in p.log.read_bytes():
            time.sleep(0.02)
        time.sleep(0.3 if p.action == "timeout" else 0.1)
        sig = {"kill": signal.SIGKILL, "timeout": signal.SIGTERM, "sigint": signal.SIGINT}[p.action]
        p.popen.send_signal(sig)
        p.timed_out = p.action == "timeout"
    try:
        p.popen.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(p.popen.pid, signal.SIGKILL)
        p.popen.wait(5)
        raise
    p.duration = time.monotonic() - p.started
    p.returncode = p.popen.returncode
    if p.returncode < 0:
        p.signal = signal.Signals(-p.returncode).name


def _attempt(p: Proc, log: str = "training.log", n: int = 1, retry_reason=None) -> dict:
    return {"attempt": n, "log": log, "started": "2026-02-01T01:02:03", "duration_seconds": round(p.duration, 3),
            "exit_code": p.returncode, "signal": p.signal, "timed_out": p.timed_out, "retry_reason": retry_reason}


def write_runner(run: Path, eid: str, *, repo="Person_reID_baseline_pytorch", model="hrnet18", status="failed",
                 exit_code=1, attempts=(), logs: Dict[str, bytes] = None, hyper=None, **extra) -> Path:
    """An experiment folder in our runner's layout (the contract in the explain brief)."""
    d = run / eid
    d.mkdir(parents=True, exist_ok=True)
    for name, data in (logs or {}).items():
        (d / name).write_bytes(data)
    rec = {"experiment_id": eid, "timestamp": "2026-02-01T01:02:03", "repository": repo, "model": model,
           "hyperparameters": hyper or {"epochs": 1, "learning_rate": 0.05, "seed": 1334},
           "duration_seconds": attempts[-1]["duration_seconds"] if attempts else 0.0,
           "energy_metrics": {}, "performance_metrics": {}, "training_success": status == "passed",
           "retries": max(0, len(attempts) - 1), "error_message": "", "status": status,
           "exit_code": exit_code, "attempts": list(attempts), "error_excerpt": []}
    rec.update(extra)
    (d / "experiment.json").write_text(json.dumps(rec, indent=2))
    return d


def write_user(run: Path, eid: str, output: bytes, exit_code: int, *, success: bool, metrics=None,
               repo="Person_reID_baseline_pytorch", model="hrnet18", error_message=None, duration=60.0) -> Path:
    """An experiment folder as the user's mutation.py writes it: training.log, terminal_output.txt
    with STDOUT/STDERR sections (the wrapper's own lines around the training output)."""
    d = run / eid
    d.mkdir(parents=True, exist_ok=True)
    (d / "training.log").write_bytes(output)
    bar = b"=" * 80
    wrapper = (b"[Train Wrapper] Repository: repos/" + repo.encode() + b"\n[Train Wrapper] Training script: ./train.sh\n"
               b"[Train Wrapper] Starting training with integrated energy monitoring...\n")
    done = b"[Train Wrapper] Training finished with exit code: %d\n[Train Wrapper] Energy monitoring completed\n" % exit_code
    (d / "terminal_output.txt").write_bytes(bar + b"\nSTDOUT:\n" + bar + b"\n" + wrapper + output + done + b"\n"
                                            + bar + b"\nSTDERR:\n" + bar + b"\n(empty)\n")
    rec = {"experiment_id": eid, "timestamp": "2026-02-01T02:03:04", "repository": repo, "model": model,
           "hyperparameters": {"epochs": 2, "learning_rate": 0.05, "seed": 1334}, "duration_seconds": duration,
           "energy_metrics": {"gpu_util_max_percent": 0.0}, "performance_metrics": metrics or {},
           "training_success": success, "retries": 0 if success else 3,
           "error_message": error_message or ("Training completed successfully" if success else
                                              "Error pattern found: Training.*FAILED")}
    (d / "experiment.json").write_text(json.dumps(rec, indent=2))
    return d


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> RealResults:
    base = tmp_path_factory.mktemp("explain_real")
    res = RealResults(base / "results", base / "results" / RUN_TS, base / "user_results" / "run_20260201_020304")
    work = base / "work"
    work.mkdir()
    (work / "hub_child.py").write_text(HUB_CHILD)
    for name, src in (("timm_child.py", TIMM_CHILD), ("torchhub_child.py", TORCHHUB_CHILD),
                      ("train_child.py", TRAIN_CHILD), ("data_child.py", DATA_CHILD), ("args_child.py", ARGS_CHILD),
                      ("write_child.py", WRITE_CHILD), ("cuda_child.py", CUDA_CHILD)):
        (work / name).write_text(src)
    (work / "train.sh").write_text(TRAIN_SH)
    (work / "train.sh").chmod(0o755)
    servers = Servers(base)
    empty_cache = base / "empty_hf_cache"
    empty_cache.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGINGFACE", "TORCH_HOME", "XDG_CACHE")) and "proxy" not in k.lower()}
    hub_env = dict(clean, HF_HUB_CACHE=str(empty_cache), HF_HUB_ETAG_TIMEOUT="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HOME=str(base / "home_run"))
    logs = base / "logs"
    procs = [
        Proc("hub_offline", [PY, "timm_child.py"], dict(hub_env, HF_HUB_OFFLINE="1"), str(work), logs / "hub_offline.log"),
        Proc("hub_refused", [PY, "hub_child.py"], dict(hub_env, HF_ENDPOINT=servers.url("refused")), str(work), logs / "hub_refused.log"),
        Proc("hub_blackhole", [PY, "hub_child.py"], dict(hub_env, HF_ENDPOINT=servers.url("blackhole")), str(work), logs / "hub_blackhole.log"),
        Proc("hub_proxy", [PY, "hub_child.py"], dict(hub_env, HF_ENDPOINT="https://hub.example.invalid",
                                                     HTTPS_PROXY=servers.url("http")), str(work), logs / "hub_proxy.log"),
        Proc("hub_notfound", [PY, "hub_child.py"], dict(hub_env, HF_ENDPOINT=servers.url("http")), str(work), logs / "hub_notfound.log"),
        Proc("torchhub", [PY, "torchhub_child.py", servers.url("refused") + "/densenet121-a639ec97.pth",
                          str(base / "torch_home" / "hub" / "checkpoints")], clean, str(work), logs / "torchhub.log"),
        Proc("module", [PY, "-c", "print('Starting Evaluation...', flush=True)\nimport scipy.io"], clean, str(work), logs / "module.log"),
        Proc("data", [PY, "data_child.py"], clean, str(work), logs / "data.log"),
        Proc("config", [PY, "args_child.py", "--lr", "0.05", "--droprate", "0.5"], clean, str(work), logs / "config.log"),
        Proc("interpreter", ["bash", "train.sh", "--lr", "0.05"], dict(clean, HOME=str(base / "home_run")), str(work), logs / "interpreter.log"),
        Proc("cuda", [PY, "cuda_child.py"], clean, str(work), logs / "cuda.log"),
        Proc("zero", [PY, "train_child.py", "zero"], clean, str(work), logs / "zero.log"),
        Proc("killed", [PY, "train_child.py", "hang"], clean, str(work), logs / "killed.log", action="kill"),
        Proc("sigint", [PY, "train_child.py", "hang"], clean, str(work), logs / "sigint.log", action="sigint"),
        Proc("timeout", [PY, "train_child.py", "hang"], clean, str(work), logs / "timeout.log", action="timeout"),
        Proc("noop", [PY, "train_child.py", "noop"], clean, str(work), logs / "noop.log"),
        Proc("benign", [PY, "train_child.py", "benign"], clean, str(work), logs / "benign.log"),
        Proc("user_module", [PY, "-c", "import scipy.io"], clean, str(work), logs / "user_module.log"),
    ]
    if servers.tls is not None:
        procs.append(Proc("hub_tls", [PY, "hub_child.py"], dict(hub_env, HF_ENDPOINT=servers.url("tls")), str(work),
                          logs / "hub_tls.log"))
    else:
        res.skipped["hub_tls"] = "openssl is not installed (needed for the self-signed certificate)"
    perf = shutil.which("perf")
    if perf:
        procs.append(Proc("perf", [perf, "stat", "-e", "power/energy-pkg/,power/energy-ram/", "-o",
                                   str(base / "cpu_energy_raw.txt"), PY, "-c", "print('training')"],
                          clean, str(work), logs / "perf.log"))
    else:
        res.skipped["perf"] = "perf is not installed"
    sys_python = "/usr/bin/python3"
    shared = None
    try:
        import pwd
        pwd.getpwnam("nobody")
        has_nobody = True
    except KeyError:
        has_nobody = False
    if os.geteuid() == 0 and os.access(sys_python, os.X_OK) and has_nobody:
        # A folder left root-owned (0700) by an earlier sudo run, written to by a normal user.
        import tempfile
        shared = Path(tempfile.mkdtemp(prefix="explain-perm-", dir="/tmp"))
        shared.chmod(0o755)
        locked = shared / "results_root_owned"
        locked.mkdir(mode=0o700)
        procs.append(Proc("permission", [sys_python, "-c", WRITE_CHILD, str(locked)], {"PATH": "/usr/bin:/bin"},
                          "/tmp", logs / "permission.log", user="nobody"))
    else:
        res.skipped["permission"] = "needs root, user nobody and /usr/bin/python3 to run a child as another user"
    try:
        for p in procs:
            _start(p)
        threads = [threading.Thread(target=_drive, args=(p,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        for p in procs:
            if p.popen and p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait(5)
        servers.close()
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    res.procs = {p.name: p for p in procs}
    _write_results(res, base)
    res.report = explain_path(str(res.root.parent))
    return res


def _log(res: RealResults, name: str) -> bytes:
    return res.procs[name].log.read_bytes()


def _write_results(res: RealResults, base: Path) -> None:
    run = res.run
    simple = ["hub_offline", "hub_refused", "hub_tls", "hub_blackhole", "hub_proxy", "hub_notfound", "torchhub",
              "module", "data", "config", "interpreter", "cuda", "zero", "killed", "sigint", "timeout",
              "perf", "permission"]
    for name in simple:
        p = res.procs.get(name)
        if p is None:
            continue
        status = "interrupted" if p.action == "sigint" else "failed"
        model = {"torchhub": "densenet121", "data": "densenet121", "cuda": "pcb"}.get(name, "hrnet18")
        write_runner(run, name, model=model, status=status, exit_code=p.returncode, attempts=[_attempt(p)],
                     logs={"training.log": _log(res, name)})
    # Two attempts: the first log is kept as training.attempt1.log, the last is training.log.
    p = res.procs["hub_refused"]
    write_runner(run, "hub_refused_retried", status="failed", exit_code=1,
                 attempts=[_attempt(p, "training.attempt1.log", 1, None), _attempt(p, "training.log", 2, "network")],
                 logs={"training.attempt1.log": _log(res, "hub_refused"), "training.log": _log(res, "hub_refused")})
    # The incident: a sudo launch (HOME=/root) with the weights only in the invoking user's cache.
    p = res.procs["hub_offline"]
    # As the runner records it: found_elsewhere lists the other caches that hold the need.
    need = {"key": "timm:hrnet_w18", "kind": "timm", "status": "missing",
            "path": None, "found_elsewhere": ["/home/u/.cache/huggingface/hub"]}
    launch = {"how": "sudo", "user": "root", "uid": 0, "home": "/root",
              "hf_cache": "/root/.cache/huggingface/hub", "torch_hub": "/root/.cache/torch/hub",
              "offline": True, "invoking_user": "u", "invoking_home": "/home/u",
              "env_set": {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "***"}, "env_dropped": ["HF_HOME"]}
    preflight_pass = {"verdict": "pass", "blocked_by": [], "findings": [], "hf_cache": "/root/.cache/huggingface/hub",
                      "torch_hub": "/root/.cache/torch/hub", "needs": [need]}
    write_runner(run, "sudo_home", exit_code=1, attempts=[_attempt(p)], logs={"training.log": _log(res, "hub_offline")},
                 preflight=preflight_pass, launch=launch)
    # Held back by the preflight gate.
    finding = {"id": "cache.hub.missing", "status": "fail",
               "title": "timm:hrnet_w18 is not in /root/.cache/huggingface/hub",
               "fix": ["sudo --preserve-env=HF_HUB_CACHE mutation-run -ec settings/x.json"]}
    write_runner(run, "blocked_hrnet", status="blocked", exit_code=None, attempts=[],
                 preflight=dict(preflight_pass, verdict="blocked", blocked_by=["cache.hub.missing"], findings=[finding]),
                 launch=launch)
    # CUDA, from the exact texts.
    oom_log = b"Train Epoch: 1\n" + torch_traceback(OOM_TEXT).encode()
    fake = {"attempt": 1, "log": "training.log", "started": "2026-02-01T01:02:03", "duration_seconds": 12.5,
            "exit_code": 1, "signal": None, "timed_out": False, "retry_reason": None}
    write_runner(run, "cuda_oom", model="pcb", attempts=[fake], logs={"training.log": oom_log},
                 hyper={"epochs": 1, "batch_size": 64})
    write_runner(run, "cuda_oom_foreign", model="pcb", attempts=[fake], logs={"training.log": oom_log},
                 gpu_foreign_processes=[{"pid": 4242, "user": "u", "memory_mib": 5632,
                                         "cmdline": "python train.py -n mnist_rnn (results/run_20260131/bg)"}])
    write_runner(run, "cuda_arch", repo="VulBERTa", model="mlp", attempts=[fake],
                 logs={"training.log": torch_traceback(ARCH_TEXT).encode()})
    # Parallel, with a background log.
    d = write_runner(run, "cuda_oom_parallel", model="pcb", attempts=[fake], logs={"training.log": oom_log,
                                                                                   "background.log": b"epoch 3\n" + oom_log})
    rec = json.loads((d / "experiment.json").read_text())
    fg = {k: rec.pop(k) for k in ("repository", "model", "hyperparameters", "duration_seconds", "energy_metrics",
                                  "performance_metrics", "training_success", "retries", "error_message")}
    rec.update(mode="parallel", foreground=fg,
               background={"repository": "examples", "model": "mnist_rnn",
                           "hyperparameters": {"epochs": 1, "batch_size": 32}, "log": "background.log"})
    (d / "experiment.json").write_text(json.dumps(rec, indent=2))
    # Error excerpts only (no log files): the exact network texts of CONTEXT.md.
    for eid, text in (("excerpt_tls", CONTEXT_TLS), ("excerpt_timeout", CONTEXT_TIMEOUT),
                      ("excerpt_reset", CONTEXT_RESET)):
        write_runner(run, eid, attempts=[dict(fake, log="missing.log")],
                     error_excerpt=[text, "", "The above exception was the direct cause of the following exception:",
                                    "", "Traceback (most recent call last):",
                                    '  File "train.py", line 40, in <module>', CONTEXT_LEN])
    # Passed runs: one clean, one that trained nothing.
    ok = {"attempt": 1, "log": "training.log", "started": "2026-02-01T01:02:03", "duration_seconds": 30.0,
          "exit_code": 0, "signal": None, "timed_out": False, "retry_reason": None}
    write_runner(run, "passed_ok", model="densenet121", status="passed", exit_code=0, attempts=[ok],
                 logs={"training.log": _log(res, "benign")}, performance_metrics={"rank1": 0.88, "map": 0.69})
    write_runner(run, "passed_noop", model="densenet121", status="passed", exit_code=0,
                 attempts=[dict(ok, duration_seconds=0.2)], logs={"training.log": _log(res, "noop")})
    # The user's layout.
    write_user(res.user_run, "Person_reID_baseline_pytorch_hrnet18_001", _log(res, "user_module"),
               res.procs["user_module"].returncode, success=False)
    write_user(res.user_run, "Person_reID_baseline_pytorch_hrnet18_002", _log(res, "benign"), 0, success=True,
               metrics={"rank1": 0.879454, "map": 0.697153}, duration=2278.0)
    write_user(res.user_run, "Person_reID_baseline_pytorch_hrnet18_003", _log(res, "interpreter"),
               res.procs["interpreter"].returncode, success=False)
    # Their false success: the regex saw a banner, the process failed.
    write_user(res.user_run, "Person_reID_baseline_pytorch_densenet121_004", _log(res, "data") +
               b"Training completed successfully\n", res.procs["data"].returncode, success=True,
               model="densenet121", metrics={})


# --------------------------------------------------------------------------- tests

EXPECTED = {
    "hub_offline": "hub.cache-miss",
    "hub_refused": "hub.connection",
    "hub_refused_retried": "hub.connection",
    "hub_tls": "hub.tls",
    "hub_blackhole": "hub.timeout",
    "hub_proxy": "hub.proxy",
    "hub_notfound": "hub.not-found",
    "torchhub": "torchhub.download",
    "module": "python.module-missing",
    "data": "data.missing",
    "config": "config.error",
    "interpreter": "python.interpreter-missing",
    "cuda": "cuda.unavailable",
    "zero": "unknown",
    "killed": "killed",
    "sigint": "interrupted",
    "timeout": "timeout",
    "perf": "perf.unavailable",
    "permission": "permission.denied",
    "sudo_home": "hub.cache-miss.sudo-home",
    "cuda_oom": "cuda.oom",
    "cuda_oom_foreign": "cuda.oom.foreign-process",
    "cuda_oom_parallel": "cuda.oom",
    "cuda_arch": "cuda.arch",
    "excerpt_tls": "hub.tls",
    "excerpt_timeout": "hub.timeout",
    "excerpt_reset": "hub.connection",
}


def _line_of_file(folder: str, file: str, line: int) -> str:
    with open(os.path.join(folder, file), "rb") as f:
        for i, raw in enumerate(f, 1):
            if i == line:
                return raw.decode("utf-8", "replace")
    raise AssertionError(f"{file} has no line {line}")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_failure_is_explained(real, name):
    if name in real.skipped:
        pytest.skip(real.skipped[name])
    e = real.exp(name)
    assert e.status == "failed", (e.status, e.chain)
    assert e.cause is not None and e.cause.id == EXPECTED[name], (e.cause, e.evidence, e.chain)
    if name == "zero":
        assert e.cause.confidence <= 0.5
    else:
        assert e.cause.confidence >= 0.75
    assert e.chain and e.evidence
    assert all(step.strip() and "{" not in step for step in e.chain), e.chain
    assert all("{" not in f for f in e.fix), e.fix
    # Evidence that names a log line really is that line of that file.
    for v in e.evidence:
        if v.line and not v.file.endswith(".json"):
            assert v.text.split(": ", 1)[-1][:40] in _line_of_file(e.path, v.file, v.line), v


def test_processes_really_failed_the_way_they_should(real):
    p = real.procs
    assert p["killed"].returncode == -signal.SIGKILL
    assert p["sigint"].returncode in (-signal.SIGINT, 1, 130)
    assert p["timeout"].returncode == -signal.SIGTERM and p["timeout"].timed_out
    assert p["hub_offline"].returncode == 1 and b"OfflineModeIsEnabled" in _log(real, "hub_offline")
    if "hub_tls" in p:
        assert b"CERTIFICATE_VERIFY_FAILED" in _log(real, "hub_tls")
    assert b"Connection refused" in _log(real, "hub_refused")
    assert p["interpreter"].returncode == 1
    if "perf" in p:
        assert p["perf"].returncode != 0, "perf can read RAPL here: perf.unavailable cannot be produced"


def test_decisive_exception_is_the_one_down_the_chain(real):
    if "hub_tls" in real.skipped:
        pytest.skip(real.skipped["hub_tls"])
    e = real.exp("hub_tls")
    assert "CERTIFICATE_VERIFY_FAILED" in e.evidence[0].text
    assert any("LocalEntryNotFoundError" in v.text for v in e.evidence)  # the fatal one is shown too
    assert any("fallback" in step for step in e.chain)
    e = real.exp("hub_refused")
    assert "Connection refused" in e.evidence[0].text
    assert real.exp("hub_offline").evidence[0].text.startswith("huggingface_hub.errors.LocalEntryNotFoundError")
    assert any("HF_HUB_OFFLINE=1 was set" in s for s in real.exp("hub_offline").chain)


def test_sudo_home_names_both_paths(real):
    e = real.exp("sudo_home")
    assert e.cause.id == "hub.cache-miss.sudo-home" and e.cause.confidence >= 0.9
    text = " ".join(e.chain)
    assert "/root" in text and "/home/u" in text
    assert "/root/.cache/huggingface/hub" in text and "/home/u/.cache/huggingface/hub" in text
    assert any("HF_HUB_CACHE=/home/u/.cache/huggingface/hub" in f for f in e.fix)
    assert any(f.endswith("cp -a /home/u/.cache/huggingface/hub/models--timm--hrnet_w18.ms_aug_in1k "
                          "/root/.cache/huggingface/hub/") for f in e.fix), e.fix
    assert "HOME=/root" in e.cause.title


def test_blocked_experiment_reports_its_findings(real):
    e = real.exp("blocked_hrnet")
    assert e.status == "blocked"
    assert e.cause.id == "hub.cache-miss.sudo-home"
    assert any("cache.hub.missing" in v.text for v in e.evidence)
    assert "sudo --preserve-env=HF_HUB_CACHE mutation-run -ec settings/x.json" in e.fix


def test_retried_experiment_uses_last_attempt_log(real):
    e = real.exp("hub_refused_retried")
    assert e.evidence[0].file == "training.log"
    assert any("2 attempts" in s and "network" in s for s in e.chain)


def test_oom_variants(real):
    assert any("Tried to allocate 192.00 MiB" in s for s in real.exp("cuda_oom").chain)
    assert any("batch size was 64" in s for s in real.exp("cuda_oom").chain)
    foreign = real.exp("cuda_oom_foreign")
    assert any("pid 4242" in s for s in foreign.chain)
    assert "kill 4242" in foreign.fix
    par = real.exp("cuda_oom_parallel")
    assert par.mode == "parallel" and any("background job examples/mnist_rnn" in s for s in par.chain)
    assert any(v.file == "background.log" and "CUDA out of memory" in v.text for v in par.evidence)


def test_timeout_killed_interrupted_carry_the_signal(real):
    assert any("SIGKILL" in s for s in real.exp("killed").chain)
    assert any("Train Epoch" in s for s in real.exp("killed").chain)  # what it was doing
    assert any("SIGTERM" in s for s in real.exp("timeout").chain)
    assert any("SIGINT" in s for s in real.exp("sigint").chain)
    assert any("--resume" in f for f in real.exp("sigint").fix)


def test_successes_and_suspicious_runs(real):
    ok = real.exp("passed_ok")
    assert ok.status == "succeeded" and ok.cause is None
    assert any("scipy" in n for n in ok.notes)  # the side script's traceback is noise
    noop = real.exp("passed_noop")
    assert noop.status == "suspicious" and noop.cause.id == "false-success"
    assert any("not yet implemented" in v.text for v in noop.evidence)


def test_user_layout(real):
    e = real.exp("Person_reID_baseline_pytorch_hrnet18_001")
    assert (e.status, e.cause.id) == ("failed", "python.module-missing")
    assert e.evidence[0].file == "training.log"
    assert any("pip install scipy" in f for f in e.fix)
    e = real.exp("Person_reID_baseline_pytorch_hrnet18_002")
    assert e.status == "succeeded" and e.cause is None
    assert any("noise" in s for s in e.chain)
    e = real.exp("Person_reID_baseline_pytorch_hrnet18_003")
    assert e.cause.id == "python.interpreter-missing"
    assert any("miniconda3/envs/reid_baseline/bin/python" in f for f in e.fix)
    # Recorded as a success by their regex; the process exited 1 on a missing dataset.
    e = real.exp("Person_reID_baseline_pytorch_densenet121_004")
    assert (e.status, e.cause.id) == ("failed", "data.missing")
    assert any("exited with code 1" in s for s in e.chain)


def test_json_schema_and_secrets(real):
    data = to_json(real.report)
    assert set(data) == {"format_version", "experiments", "causes", "precision"} and data["format_version"] == 1
    assert sum(data["precision"].values()) == len(data["experiments"]) and data["precision"]["from_logs"] > 0
    for x in data["experiments"]:
        assert set(x) == {"experiment_id", "path", "status", "cause", "evidence", "chain", "fix"}
        assert os.path.isabs(x["path"]) and os.path.isdir(x["path"])
        assert x["status"] in ("failed", "succeeded", "blocked", "suspicious")
        if x["cause"] is None:
            assert x["status"] == "succeeded"
        else:
            assert set(x["cause"]) == {"id", "title", "confidence"}
            assert 0 <= x["cause"]["confidence"] <= 1
        for v in x["evidence"]:
            assert set(v) == {"file", "line", "text"}
    assert sum(data["causes"].values()) == sum(1 for x in data["experiments"] if x["cause"])
    assert data["causes"]["hub.connection"] >= 3


def test_cli_on_real_results(real, tmp_path, capsys):
    md = tmp_path / "report.md"
    code = main([str(real.run), "--markdown", str(md)])
    assert code == 1
    out = capsys.readouterr().out
    assert "hub.cache-miss.sudo-home" in out and "Rerun:" in out
    text = md.read_text()
    for section in ("## What ran", "## Causes", "### `hub.connection`", "## Why the others succeeded",
                    "## What to rerun"):
        assert section in text
    rerun = json.loads((tmp_path / "report.rerun.json").read_text())
    names = [x.get("note", "") for x in rerun["experiments"]]
    assert not any("passed_ok" in n or "passed_noop" in n for n in names)
    par = [x for x in rerun["experiments"] if x["mode"] == "parallel"]
    assert par and par[0]["foreground"]["repo"] == "Person_reID_baseline_pytorch"
    assert par[0]["background"]["model"] == "mnist_rnn"


def test_rerun_file_loads_as_a_plan(real, tmp_path):
    from core.plan import load_plan
    from core.registry import load_registry

    root = Path(__file__).resolve().parents[1]
    rr = tmp_path / "rerun.json"
    assert main([str(real.user_run), "--json", "--rerun", str(rr)]) == 1
    reg = load_registry(str(root / "settings" / "models_config.json"), str(root))
    plan = load_plan(str(rr), reg)
    assert len(plan.experiments) == 3
    assert all(p.foreground.hyperparameters == {"epochs": 2, "learning_rate": 0.05, "seed": 1334}
               for p in plan.experiments)
    assert not [f for f in plan.findings if f.status in ("fail", "error")], plan.findings
