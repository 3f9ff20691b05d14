"""Observe what this training process uses, then hand over to the interpreter's own sitecustomize.

Put on PYTHONPATH by mutation-run together with MUTATION_OBSERVE_DIR. Standard library only, written
for old interpreters too (no f-strings): on one without audit hooks (before 3.8) it records that the
process is not observable and does nothing else. It never raises into the user's program.

Recorded, one JSON line per new fact, appended to `<MUTATION_OBSERVE_DIR>/<pid>.jsonl` as it happens
(so a SIGTERM or SIGKILL loses nothing already seen; forked workers append to their parent's file
with their own pid):
- `open`: the first file read in each folder, every file in hub cache folders;
- `map`: files mapped with mmap, and file mappings still alive at exit (/proc/self/maps);
- `inotify`: opens in the hub caches' blob folders, which catches files opened by native code
  (safetensors) that Python's audit events never see;
- `connect` / `resolve` / `request`: network hosts, and URLs urllib fetches (torch.hub downloads),
  without credentials, query or fragment;
- `process`, `torch`, `exit`: the interpreter, torch's version and CUDA arch list.
"""
import os
import sys

_VAR = "MUTATION_OBSERVE_DIR"
_HERE = os.path.dirname(os.path.abspath(__file__))
_READ, _WRITTEN = "read", "written"  # folder states; a set: a hub folder, recorded file by file
_HUB_MARKS = ("/models--", "/datasets--", "/spaces--", "/hub/checkpoints", "/refs")
_IN_OPEN = 0x20
_state = {"fd": -1, "torch": False, "inotify": -1, "watches": {}}
_dirs = {}
_seen = set()


def _once(key, record):
    """Write `record` the first time `key` is seen in this process."""
    if key not in _seen:
        _seen.add(key)
        _emit(record)


def _now():
    import time
    return round(time.time(), 3)


def _emit(rec):
    """Append one line (small lines with O_APPEND are written whole)."""
    fd = _state["fd"]
    if fd < 0:
        return
    import json
    rec["pid"] = os.getpid()
    try:
        os.write(fd, (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8", "surrogateescape"))
    except Exception:
        pass


def _caches():
    env = os.environ
    home = env.get("HOME") or os.path.expanduser("~")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    hf = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hf:
        hf = os.path.join(env["HF_HOME"], "hub") if env.get("HF_HOME") else os.path.join(xdg, "huggingface", "hub")
    torch_hub = os.path.join(env["TORCH_HOME"], "hub") if env.get("TORCH_HOME") else os.path.join(xdg, "torch", "hub")
    return os.path.expanduser(hf), os.path.expanduser(torch_hub)


# -- native opens: inotify on the blob folders --------------------------------------------------
def _inotify_start(folders):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return
        _state["inotify"] = fd
        _state["add"] = libc.inotify_add_watch
        for d in folders:
            _watch(d)
    except Exception:
        pass


def _watch(folder):
    if _state["inotify"] < 0 or folder in _state["watches"].values():
        return
    try:
        wd = _state["add"](_state["inotify"], os.fsencode(folder), _IN_OPEN)
        if wd >= 0:
            _state["watches"][wd] = folder
    except Exception:
        pass


def _blob_folders(hf, torch_hub):
    out = [os.path.join(torch_hub, "checkpoints")]
    try:
        for name in os.listdir(hf):
            if "--" in name:
                out.append(os.path.join(hf, name, "blobs"))
            elif name == "blobs":
                out.extend(os.path.join(hf, "blobs", x) for x in os.listdir(os.path.join(hf, "blobs")))
    except OSError:
        pass
    return [d for d in out if os.path.isdir(d)]


def _inotify_drain():
    fd = _state["inotify"]
    if fd < 0:
        return
    import struct
    while True:
        try:
            buf = os.read(fd, 65536)
        except OSError:
            return
        if not buf:
            return
        off = 0
        while off + 16 <= len(buf):
            wd, mask, _cookie, size = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16:off + 16 + size].rstrip(b"\0")
            off += 16 + size
            folder = _state["watches"].get(wd)
            if folder and name and (mask & _IN_OPEN):
                _once(("inotify", folder, name), {"t": "inotify", "dir": folder, "name": os.fsdecode(name)})


# -- the audit hook ---------------------------------------------------------------------------
def _open_slow(args):
    """A folder not seen yet, a file in a hub cache folder, a read after writes in a folder."""
    p = args[0]
    if p.__class__ is not str:
        if isinstance(p, int):
            return
        p = os.fsdecode(os.fspath(p))
    i = p.rfind("/")
    d = p[:i] if i > 0 else ("/" if i == 0 else "")
    s = _dirs.get(d)
    if s is _READ or (s is not None and s is not _WRITTEN and p in s):
        return
    mode, flags = args[1], args[2]
    write = ("w" in mode or "a" in mode or "x" in mode or "+" in mode) if mode else bool(flags & 3)
    if any(m in p for m in _HUB_MARKS):
        if s is None or s is _WRITTEN:
            s = _dirs[d] = set()
        if d.endswith("/blobs"):
            _watch(d)
        if write:
            return
        s.add(p)
    elif write:
        _dirs.setdefault(d, _WRITTEN)
        return
    else:
        _dirs[d] = _READ
    path = p if p.startswith("/") else os.path.join(os.getcwd(), p)
    _emit({"t": "open", "path": path})


def _on_other(event, args):
    if event == "import":
        if not _state["torch"] and "torch" in sys.modules:
            _torch_info()
        return
    if event == "mmap.__new__":
        if args[0] is not None and args[0] >= 0:
            path = os.readlink("/proc/self/fd/%d" % args[0])
            _once(("map", path), {"t": "map", "path": path})
        return
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and len(addr) >= 2:
            _once(("connect", str(addr[0]), addr[1]), {"t": "connect", "host": str(addr[0]), "port": addr[1]})
        return
    if event == "urllib.Request":
        url = _bare_url(str(args[0]))
        _once(("request", url), {"t": "request", "url": url})
        return
    if event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host:
            _once(("resolve", host), {"t": "resolve", "host": str(host), "port": args[1]})


_OTHER = frozenset(("import", "mmap.__new__", "socket.connect", "socket.getaddrinfo", "urllib.Request"))


def _bare_url(url):
    """scheme://host/path: no credentials, query or fragment (signed URLs carry secrets there)."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return scheme + "://" + host.rpartition("@")[2] + slash + path


def _hook(event, args):
    """Called by the interpreter for every audit event. The fast path (a file in a folder already
    read) is one slice and one dict lookup; weight files in such folders are listed by the collector."""
    if event == "open":
        try:
            p = args[0]
            if _dirs.get(p[:p.rfind("/")]) is _READ:
                return
        except Exception:
            pass
        try:
            _open_slow(args)
        except Exception:
            pass
    elif event in _OTHER:
        try:
            _on_other(event, args)
        except Exception:
            pass


def _torch_info():
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    c = getattr(torch, "_C", None)
    if version is None or c is None or not hasattr(version, "__version__"):
        return
    _state["torch"] = True
    flags = getattr(c, "_cuda_getArchFlags", None)
    arch = flags() if flags is not None else None
    _emit({"t": "torch", "version": str(version.__version__), "cuda": getattr(version, "cuda", None),
           "file": getattr(torch, "__file__", None), "arch_list": str(arch).split() if arch else []})


def _maps():
    try:
        with open("/proc/self/maps", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].startswith("/dev/"):
            continue
        path = parts[5]
        if ".so" in os.path.basename(path) or path.endswith(" (deleted)"):
            continue
        _once(("map", path), {"t": "map", "path": path})


def _at_exit():
    try:
        if not _state["torch"] and "torch" in sys.modules:
            _torch_info()
        _inotify_drain()
        _maps()
        _emit({"t": "exit", "argv0": (sys.argv or [""])[0], "at": _now()})
    except Exception:
        pass


def _start():
    folder = os.environ.get(_VAR)
    if not folder:
        return
    try:
        _state["fd"] = os.open(os.path.join(folder, "%d.jsonl" % os.getpid()),
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return
    hf, torch_hub = _caches()
    rec = {"t": "process", "ppid": os.getppid(), "executable": sys.executable, "prefix": sys.prefix,
           "base_prefix": getattr(sys, "base_prefix", sys.prefix),
           "version": "%d.%d.%d" % tuple(sys.version_info[:3]), "cwd": os.getcwd(), "hf_cache": hf,
           "torch_hub": torch_hub, "at": _now(), "run": os.environ.get("MUTATION_RUN_ID"),
           "home": os.environ.get("HOME"), "observable": hasattr(sys, "addaudithook")}
    if not rec["observable"]:
        rec["reason"] = "Python %s has no audit hooks (3.8+ needed)" % rec["version"]
        _emit(rec)
        return
    _emit(rec)
    _dirs[folder] = set()  # our own output: never recorded
    _inotify_start(_blob_folders(hf, torch_hub))
    import atexit
    atexit.register(_at_exit)
    sys.addaudithook(_hook)


def _chain():
    """Run the sitecustomize this interpreter would have run without us, as `sitecustomize`."""
    ours = sys.modules.get("sitecustomize")
    keep = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path[:] = keep
    try:
        import importlib.machinery
        import importlib.util
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", keep)
    except Exception:
        spec = None
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules["sitecustomize"] = ours
        raise  # site.py reports it exactly as it would have without us


try:
    _start()
except Exception:
    pass
if __name__ == "sitecustomize":  # imported by site.py (not loaded by a test or a tool)
    _chain()
