"""The failure catalogue: the causes (core.failures.causes) and the rules that recognise each cause
in an exception or a log line.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from core.failures.causes import _HUB_NOTE, BY_ID, IDS, RULES, CauseRule, render_lines
from core.failures.traceback import Chain, ExceptionRecord, looks_like_exception


# --------------------------------------------------------------------------- recognition

_HUB_TYPES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "transformers")


def hub_context(rec: ExceptionRecord) -> bool:
    t = rec.type
    if t.startswith(_HUB_TYPES):
        return True
    if rec.in_files("huggingface_hub", "/timm/", "/transformers/", "httpx", "httpcore"):
        return True
    m = rec.full_message
    return "huggingface" in m or "/resolve/" in m or "hf.co" in m


def torchhub_context(rec: ExceptionRecord) -> bool:
    if rec.in_files("torch/hub.py", "torchvision/models/_api.py", "torchvision/datasets/utils.py"):
        return True
    m = rec.full_message
    return "download.pytorch.org" in m or "urlopen error" in m and not hub_context(rec)


_OOM = re.compile(r"CUDA out of memory|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|"
                  r"OutOfMemoryError|HIP out of memory", re.I)
_ARCH = re.compile(r"no kernel image is available for execution|not compatible with the current "
                   r"PyTorch installation|CUDA error: invalid device function|"
                   r"sm_\d+ is not compatible", re.I)
_NO_CUDA = re.compile(r"Found no NVIDIA driver|No CUDA GPUs are available|Torch not compiled with "
                      r"CUDA enabled|CUDA driver version is insufficient|CUDA-capable device\(s\) "
                      r"is/are busy or unavailable|no CUDA-capable device is detected|"
                      r"cuda runtime error \(100\)|CUDA driver initialization failed|"
                      r"NVIDIA-SMI has failed", re.I)
_TLS = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|\[SSL[:\]]|SSLError|"
                  r"WRONG_VERSION_NUMBER|TLSV1_ALERT|SSLCertVerificationError", re.I)
_TIMEOUT = re.compile(r"timed out|Timeout", re.I)
_CONN = re.compile(r"ConnectError|ConnectionError|NetworkError|RemoteProtocolError|"
                   r"Connection refused|Connection reset|Connection aborted|"
                   r"Name or service not known|Temporary failure in name resolution|"
                   r"nodename nor servname|Network is unreachable|No route to host|"
                   r"Max retries exceeded|getaddrinfo failed|HTTP Error 5\d\d|5\d\d Server Error|"
                   r"Service Unavailable|Bad Gateway|Gateway Time-?out", re.I)
_PROXY = re.compile(r"ProxyError|proxy", re.I)
_NOT_FOUND_T = ("RepositoryNotFoundError", "RemoteEntryNotFoundError", "EntryNotFoundError",
                "RevisionNotFoundError", "GatedRepoError", "DisabledRepoError")
_CACHE_MISS = re.compile(r"LocalEntryNotFoundError|OfflineModeIsEnabled|cannot find the requested "
                         r"files in the local cache|couldn't connect to '?https?://[^ ]{0,200}?huggingface|"
                         r"outgoing traffic has been disabled|offline mode is enabled", re.I)
# Gaps between two words of a message are bounded: an unbounded `.*` after a word that repeats on a
# long line makes the search quadratic in the line's length.
_DATASET_GONE = re.compile(r"\bdataset\b.{0,200}?\b(?:not found|does not exist)", re.I)
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|\[Errno 28\]", re.I)
_NET_TYPES = ("ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
              "TimeoutError", "timeout", "gaierror", "RemoteDisconnected", "IncompleteRead", "URLError",
              "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError", "ChunkedEncodingError")
_PY_PATH = re.compile(r"/(?:python|python\d(?:\.\d+)?)['\"]?$")
_SETTINGS_KEYS = {"repo", "model", "hyperparameters", "foreground", "background", "experiments",
                  "mode", "models", "supported_hyperparams", "train_script", "path"}


def classify_exception(rec: ExceptionRecord) -> Optional[Tuple[str, int]]:
    """(cause id, specificity) for one exception, or None when nothing in the catalogue fits."""
    name, msg = rec.name, rec.full_message
    text = f"{rec.type}: {msg}"
    if name == "KeyboardInterrupt":
        return "interrupted", 90
    if _OOM.search(text):
        return "cuda.oom", 80
    if "killed by signal" in msg and "DataLoader" in msg:
        return "killed", 70
    if _ARCH.search(text):
        return "cuda.arch", 85
    if _NO_CUDA.search(text):
        return "cuda.unavailable", 85
    if name in _NOT_FOUND_T or (hub_context(rec) and re.search(r"\b40[14] Client Error", msg)):
        return "hub.not-found", 75
    if _CACHE_MISS.search(text):
        return "hub.cache-miss", 50
    torch_ctx = torchhub_context(rec)
    hub_ctx = hub_context(rec) and not torch_ctx
    if "ProxyError" in name or (hub_ctx and _PROXY.search(msg) and _CONN.search(text)):
        return "hub.proxy", 78
    netty = _TLS.search(text) or _TIMEOUT.search(text) or _CONN.search(text)
    if torch_ctx and (netty or name in ("URLError", "HTTPError", "ContentTooShortError")
                      or "invalid hash value" in msg):
        return "torchhub.download", 70
    if hub_ctx and netty:
        if _TIMEOUT.search(text):
            return "hub.timeout", 76
        if _TLS.search(text):
            return "hub.tls", 77
        return "hub.connection", 72
    if name in _NET_TYPES:
        return "network.connection", 40
    if name == "ModuleNotFoundError" or (name == "ImportError" and "No module named" in msg):
        return "python.module-missing", 60
    if name == "ImportError":
        return "python.module-missing", 45
    if _DISK_FULL.search(text):
        return "disk.full", 70
    if name == "PermissionError" or re.search(r"Permission denied|Operation not permitted|"
                                              r"Read-only file system", msg):
        return "permission.denied", 60
    if name == "FileNotFoundError" or "No such file or directory" in msg:
        path = missing_path(msg)
        if path and _PY_PATH.search(path):
            return "python.interpreter-missing", 65
        return "data.missing", 55
    if "Dataset not found" in msg or _DATASET_GONE.search(msg):
        return "data.missing", 60
    if name == "JSONDecodeError" or (name == "KeyError" and (
            rec.in_files("mutation.py", "/runner/", "settings") or msg.strip("'\"") in _SETTINGS_KEYS)):
        return "config.error", 55
    return None


_TEXT_RULES: Tuple[Tuple[str, "re.Pattern[str]"], ...] = tuple(
    (cid, re.compile(rx, re.I)) for cid, rx in (
        ("python.interpreter-missing", r"Python not found at|python[\d.]*: (?:command )?not found|"
                                       r"/python[\d.]*: No such file or directory|"
                                       r"EnvironmentLocationNotFound|Could not find conda environment|"
                                       r"conda: command not found|Not a conda environment"),
        ("perf.unavailable", r"event syntax error: .{0,200}?power/energy|Cannot find PMU `power'|"
                             r"perf_event_paranoid|Access to performance monitoring and observability|"
                             r"perf: command not found|perf not found|sys_perf_event_open\(\) syscall|"
                             r"power/energy-(?:pkg|ram)/\s+<not (?:supported|counted)>"),
        ("cuda.oom", r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError"),
        ("cuda.arch", _ARCH.pattern),
        ("cuda.unavailable", _NO_CUDA.pattern),
        ("killed", r"^Killed$|^\S*: line \d+: +\d+ Killed|killed by signal: Killed|"
                   r"exit code: (?:137|-9)\b"),
        ("interrupted", r"KeyboardInterrupt|^Terminated$|exit code: (?:130|-2|143|-15)\b|"
                        r"received (?:SIGINT|SIGTERM|SIGHUP)"),
        ("config.error", r"error: unrecognized arguments|error: argument .{0,200}?: invalid|"
                         r"error: the following arguments are required|KeyError: '(?:repo|model|"
                         r"hyperparameters|foreground|background|experiments)'"),
        ("hub.cache-miss", _CACHE_MISS.pattern),
        ("disk.full", _DISK_FULL.pattern),
        ("permission.denied", r"Permission denied|Operation not permitted|Read-only file system"),
        ("data.missing", r"No such file or directory|Dataset not found"),
    ))


def is_cache_miss(text: str) -> bool:
    """True when the text says the Hub's local-cache fallback found nothing (LocalEntryNotFoundError family)."""
    return _CACHE_MISS.search(text) is not None


def text_rule(line: str) -> Optional[str]:
    """Cause id of the first tool or shell message rule that matches the line (no exception rules)."""
    for cid, rx in _TEXT_RULES:
        if rx.search(line):
            return cid
    return None


LINE_HEAD = 4096  # a long line is read only this far from its start...
LINE_TAIL = 2048  # ...and this far from its end (progress bars joined by \r, printed tensors)


def classify_text(line: str) -> Optional[str]:
    """Cause id for a log line that is not part of a traceback: an exception line by the exception
    rules, else a tool or shell message by the text rules.

    A message that names a cause starts a line or ends it (after a progress bar that had no newline):
    of a line longer than LINE_HEAD + LINE_TAIL only its start and its end are read, so the time
    spent on a line is bounded whatever its length."""
    if len(line) > LINE_HEAD + LINE_TAIL:
        return _classify_line(line[:LINE_HEAD]) or _classify_line(line[-LINE_TAIL:])
    return _classify_line(line)


def _classify_line(line: str) -> Optional[str]:
    exc = looks_like_exception(line)
    if exc is not None:
        got = classify_exception(ExceptionRecord(exc[0], exc[1], 0, None))
        if got:
            return got[0]
    return text_rule(line)


def decisive(chain: Chain) -> Tuple[Optional[str], ExceptionRecord]:
    """The cause id for a chain and the exception that decides it.

    Starting from the fatal exception, a deeper exception joined by "direct cause" wins when its
    rule is more specific (an SSL error under a LocalEntryNotFoundError is a TLS problem). An
    implicit context ("during handling of ...") only decides when the fatal one says nothing."""
    best_id, best_spec, best_rec = None, -1, chain.fatal
    got = classify_exception(chain.fatal)
    if got:
        best_id, best_spec = got
    context_only = False
    for rec, link in list(chain.down())[1:]:
        got = classify_exception(rec)
        if link == "context":
            context_only = True
        if not got:
            continue
        cid, spec = got
        if best_id == "interrupted":
            break
        if context_only and best_id is not None:
            continue
        if spec > best_spec:
            best_id, best_spec, best_rec = cid, spec, rec
    return best_id, best_rec


def missing_path(msg: str) -> str:
    """The path named in a FileNotFoundError / 'No such file or directory' message."""
    m = re.search(r"No such file or directory: ['\"]([^'\"]+)['\"]", msg)
    if m:
        return m.group(1)
    m = re.search(r"(?:Dataset not found|not found|does not exist)[^/]*((?:/|\./)[^\s'\"]+)", msg)
    if m:
        return m.group(1)
    m = re.search(r"['\"]((?:/|\./)[^'\"]+)['\"]", msg)
    return m.group(1) if m else ""


def module_name(msg: str) -> str:
    m = re.search(r"No module named ['\"]?([\w.]+)", msg)
    return m.group(1) if m else ""


# pip package names for imports whose module name differs.
PIP_NAMES = {"sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow", "yaml": "pyyaml",
             "skimage": "scikit-image", "clang": "libclang"}


__all__ = ["BY_ID", "IDS", "RULES", "CauseRule", "render_lines", "HUB_NOTE", "classify_exception", "classify_text",
           "text_rule", "is_cache_miss", "decisive", "missing_path", "module_name", "PIP_NAMES", "hub_context", "torchhub_context"]
HUB_NOTE = _HUB_NOTE
