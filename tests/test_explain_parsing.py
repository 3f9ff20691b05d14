"""Reading logs from the end, finding the fatal exception, and the catalogue's rules."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tracemalloc

import pytest

from core.failures import catalogue as cat
from doctor.explain.readers import Tail, clean_line, find_experiments, ExplainInputError
from core.failures.traceback import find_fatal, looks_like_exception

PY = sys.executable


def _py_output(tmp_path, code: str) -> str:
    """What Python really prints for `code` (stdout+stderr)."""
    script = tmp_path / "s.py"
    script.write_text(code)
    r = subprocess.run([PY, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return r.stdout.decode()


# --------------------------------------------------------------------------- tails

@pytest.mark.parametrize("first", [16, 100, 4096])
def test_tail_lines_equal_the_file_lines(tmp_path, first):
    rnd = random.Random(first)
    lines = []
    for i in range(3000):
        kind = rnd.random()
        if kind < 0.1:
            lines.append("")
        elif kind < 0.2:
            lines.append("\x1b[0;34m[INFO]\x1b[0m epoch %d" % i)
        elif kind < 0.3:
            lines.append("10%|#  | 1/10\r 50%|#####  | 5/10\r100%|##########| 10/10")
        else:
            lines.append("Train Epoch: %d Loss: %.6f é" % (i, rnd.random()))
    p = tmp_path / "log.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    t = Tail.open(str(p), first=first, cap=10 ** 9)
    while t.grow():
        pass
    assert t.at_file_start
    assert t.lines == [clean_line(x) for x in lines]
    # Mid-way windows: the lines held are the file's last lines, with exact line numbers.
    t = Tail.open(str(p), first=first, cap=10 ** 9)
    for _ in range(3):
        t.grow()
    n = len(t.lines)
    assert t.lines == [clean_line(x) for x in lines[-n:]]
    assert t.line_number(0) == len(lines) - n + 1
    assert t.line_number(n - 1) == len(lines)


def test_clean_line():
    assert clean_line("\x1b[0;32m[SUCCESS]\x1b[0m done\r\n") == "[SUCCESS] done"
    assert clean_line("[0;34m[INFO][0m Model: mnist") == "[INFO] Model: mnist"
    assert clean_line("  0%|          | 0/3\r100%|##########| 3/3\r") == "100%|##########| 3/3"


def test_big_log_is_read_from_the_end_only(tmp_path):
    """A 64 MiB log whose traceback is at the end: only a few blocks are read, memory stays small."""
    from doctor.explain.logscan import scan_log

    p = tmp_path / "training.log"
    block = ("Train Epoch: 3 [1040/60000 (2%)]\tLoss: 2.291909\n" * 20000).encode()
    with open(p, "wb") as f:
        while f.tell() < 64 * 1024 * 1024:
            f.write(block)
        f.write(b"Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
                b"    import scipy.io\nModuleNotFoundError: No module named 'scipy'\n")
    tracemalloc.start()
    scan = scan_log(str(tmp_path), "training.log", want_chain=True, cap=1024 * 1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert scan.chain.fatal.line_text == "ModuleNotFoundError: No module named 'scipy'"
    assert scan.tail.bytes_read <= 64 * 1024
    assert peak < 8 * 1024 * 1024
    # A log with no traceback stops at the cap.
    q = tmp_path / "killed.log"
    q.write_bytes(block * 20)
    scan = scan_log(str(tmp_path), "killed.log", want_chain=True, cap=512 * 1024)
    assert scan.chain is None and scan.tail.bytes_read <= 512 * 1024


def test_traceback_spanning_blocks_is_found_whole(tmp_path):
    """The chain starts before the first block: the tail grows until the whole chain is read."""
    from doctor.explain.logscan import scan_log

    frames = "".join(f'  File "/lib/mod{i}.py", line {i}, in f{i}\n    call_{i}()\n' for i in range(3000))
    text = ("noise\n" * 10 + "Traceback (most recent call last):\n" + frames +
            "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed\n\n"
            "The above exception was the direct cause of the following exception:\n\n"
            "Traceback (most recent call last):\n" + frames +
            "huggingface_hub.errors.LocalEntryNotFoundError: cannot find the requested files in the local cache\n")
    (tmp_path / "training.log").write_text(text)
    scan = scan_log(str(tmp_path), "training.log", want_chain=True, cap=10 * 1024 * 1024)
    assert len(scan.chain.records) == 2 and not scan.chain.truncated
    assert scan.tail.line_number(scan.chain.records[0].index) == 10 + 1 + 6000 + 1


# --------------------------------------------------------------------------- tracebacks

def test_real_chained_exceptions(tmp_path):
    out = _py_output(tmp_path, """
class LocalEntryNotFoundError(Exception): pass
def net():
    raise ConnectionRefusedError(111, "Connection refused")
try:
    net()
except OSError as e:
    raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from e
""")
    ch = find_fatal(out.splitlines())
    assert [r.name for r in ch.records] == ["ConnectionRefusedError", "LocalEntryNotFoundError"]
    assert ch.links == ("cause",)
    assert ch.records[0].frames and ch.records[0].frames[-1].func == "net"

    out = _py_output(tmp_path, """
try:
    open("/nonexistent/data.csv")
except FileNotFoundError:
    {}["repo"]
""")
    ch = find_fatal(out.splitlines())
    assert [r.name for r in ch.records] == ["FileNotFoundError", "KeyError"] and ch.links == ("context",)


def test_only_the_last_traceback_is_fatal(tmp_path):
    out = _py_output(tmp_path, """
import subprocess, sys
subprocess.run([sys.executable, "-c", "import scipy_is_not_here"])
print("Training complete in 1m 7.10s")
raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
""")
    ch = find_fatal(out.splitlines())
    assert ch.fatal.line_text.startswith("RuntimeError: CUDA error: no kernel image")
    assert len(ch.records) == 1


def test_headerless_causes_and_multiline_messages():
    lines = """httpx2.HTTPStatusError: Client error '404 Not Found' for url 'http://127.0.0.1:1/timm/x/resolve/main/model.safetensors'
For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/404

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "t.py", line 1, in <module>
huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error.

Repository Not Found for url: http://127.0.0.1:1/timm/x/resolve/main/model.safetensors.
Training FAILED""".splitlines()
    ch = find_fatal(lines)
    assert [r.name for r in ch.records] == ["HTTPStatusError", "RepositoryNotFoundError"]
    assert ch.records[0].header_index is None and ch.records[0].extra[0].startswith("For more information")
    assert cat.decisive(ch)[0] == "hub.not-found"


def test_exception_line_recognition():
    assert looks_like_exception("huggingface_hub.errors.OfflineModeIsEnabled: Cannot reach") == \
        ("huggingface_hub.errors.OfflineModeIsEnabled", "Cannot reach")
    assert looks_like_exception("KeyboardInterrupt") == ("KeyboardInterrupt", "")
    for not_exc in ("Model: hrnet18 (ft_HRNet18)", "ERROR: Python not found at /x", "Training: done",
                    "  File \"x\", line 1", "[INFO] Error: none"):
        assert looks_like_exception(not_exc) is None, not_exc


# --------------------------------------------------------------------------- catalogue

CONTEXT_TEXTS = {
    "httpcore.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1017)": "hub.tls",
    "httpx.ConnectTimeout: _ssl.c:1000: The handshake operation timed out": "hub.timeout",
    "httpx.ConnectError: [Errno 104] Connection reset by peer": "hub.connection",
    "huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local cache. Please check your connection and try again or make sure your Internet connection is on.": "hub.cache-miss",
    "RuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 9.77 GiB total capacity; 8.10 GiB already allocated; ...)": "cuda.oom",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 9.77 GiB of which 3.25 MiB is free. Process 4242 has 5.50 GiB memory in use.": "cuda.oom",
    "RuntimeError: CUDA error: no kernel image is available for execution on the device": "cuda.arch",
    "RuntimeError: Found no NVIDIA driver on your system.": "cuda.unavailable",
    "AssertionError: Torch not compiled with CUDA enabled": "cuda.unavailable",
    "ERROR: Python not found at /home/u/miniconda3/envs/reid_baseline/bin/python": "python.interpreter-missing",
    "./train.sh: line 12: /home/u/miniconda3/envs/vulberta/bin/python: No such file or directory": "python.interpreter-missing",
    "EnvironmentLocationNotFound: Not a conda environment: /home/u/miniconda3/envs/mrt": "python.interpreter-missing",
    "ModuleNotFoundError: No module named 'scipy'": "python.module-missing",
    "KeyError: 'repo'": "config.error",
    "train.py: error: unrecognized arguments: --droprate 0.5": "config.error",
    "event syntax error: 'power/energy-pkg/'": "perf.unavailable",
    "Error: Access to performance monitoring and observability operations is limited.": "perf.unavailable",
    "PermissionError: [Errno 13] Permission denied: 'results/run_1/x/training.log'": "permission.denied",
    "FileNotFoundError: [Errno 2] No such file or directory: './Market/pytorch/train_all'": "data.missing",
    "RuntimeError: Dataset not found. You can use download=True to download it": "data.missing",
    "RuntimeError: DataLoader worker (pid 4321) is killed by signal: Killed. ": "killed",
    "Killed": "killed",
    "KeyboardInterrupt": "interrupted",
    "huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error.": "hub.not-found",
    "httpx.ProxyError: 407 Proxy Authentication Required": "hub.proxy",
    "ZeroDivisionError: division by zero": None,
}


@pytest.mark.parametrize("text,expected", sorted(CONTEXT_TEXTS.items()))
def test_catalogue_recognises_exact_texts(text, expected):
    assert cat.classify_text(text) == expected


def test_catalogue_ids_are_the_issue_list():
    from core.failures import cause_ids
    assert cause_ids() == cat.IDS
    assert set(cat.IDS) == {"network.connection", "metrics.not-extracted", "disk.full",
        "hub.cache-miss", "hub.cache-miss.sudo-home", "hub.tls", "hub.timeout", "hub.connection", "hub.proxy",
        "hub.not-found", "torchhub.download", "cuda.oom", "cuda.oom.foreign-process", "cuda.arch",
        "cuda.unavailable", "python.module-missing", "python.interpreter-missing", "data.missing", "config.error",
        "perf.unavailable", "permission.denied", "killed", "interrupted", "timeout", "false-success", "unknown"}
    for r in cat.RULES:
        assert r.title and r.chain and r.fix, r.id


def test_context_does_not_override_the_fatal_exception():
    lines = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
ConnectionRefusedError: [Errno 111] Connection refused

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/hub.py", line 620, in download_url_to_file
urllib.error.URLError: <urlopen error [Errno 111] Connection refused>""".splitlines()
    cid, rec = cat.decisive(find_fatal(lines))
    assert cid == "torchhub.download" and rec.name == "URLError"


def test_render_lines_drops_unknown_facts():
    assert cat.render_lines(("a {x}", "b {y}", "c"), {"x": 1, "y": ""}) == ("a 1", "c")


def test_timm_hub_ids_match_timm():
    """The table used to avoid importing timm agrees with timm's own pretrained configs."""
    from doctor.explain.knowledge import TIMM_HUB_IDS

    out = subprocess.run([PY, "-c", "import timm, json; print(json.dumps({n: timm.models.get_pretrained_cfg(n)"
                                    ".hf_hub_id for n in %r}))" % sorted(TIMM_HUB_IDS)],
                         capture_output=True, text=True, timeout=60)
    import json
    assert json.loads(out.stdout) == TIMM_HUB_IDS


def test_find_experiments_errors(tmp_path):
    with pytest.raises(ExplainInputError, match="no such file"):
        find_experiments(str(tmp_path / "nope"))
    with pytest.raises(ExplainInputError, match="no experiment.json"):
        find_experiments(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ExplainInputError, match="is a file"):
        find_experiments(str(tmp_path / "f.txt"))
    (tmp_path / "run_1" / "e1" / "energy").mkdir(parents=True)
    (tmp_path / "run_1" / "e1" / "experiment.json").write_text("{}")
    (tmp_path / "run_1" / "e1" / "energy" / "experiment.json").write_text("{}")  # not searched
    assert find_experiments(str(tmp_path)) == (str(tmp_path / "run_1" / "e1"),)


def test_header_after_a_progress_bar_on_the_same_line():
    lines = ["3368it [00:10, 316.78it/s]Traceback (most recent call last):",
             '  File "evaluate_gpu.py", line 1, in <module>',
             "    import scipy.io",
             "ModuleNotFoundError: No module named 'scipy'",
             "Original Traceback (most recent call last):"]
    ch = find_fatal(lines)
    assert ch.fatal.line_text == "ModuleNotFoundError: No module named 'scipy'" and ch.fatal.header_index == 0
