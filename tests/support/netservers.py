"""Misbehaving network peers on 127.0.0.1 for the network probe tests.

Every server binds 127.0.0.1 only, is a context manager that stops itself (listening socket and
every accepted connection closed, threads are daemons with bounded loops), and exposes `.url`.

- `MiniHub`: the HEAD/GET resolve protocol of the Hub (`X-Repo-Commit`, `ETag`, `X-Error-Code`),
  optionally over TLS; `mode="portal"` answers 200 HTML without Hub headers (a captive portal),
  `mode="status"` answers every request with `status`, `mode="no-etag"` omits the ETag,
  `mode="garbage"` answers with bytes that are not HTTP.
- `RefusedPort`: a port bound but not listening: connections are refused (RST).
- `BlackHole`: accepts connections and never writes a byte (http: read timeout; https: the TLS
  handshake gets no answer).
- `SynDrop`: a listener with a full accept queue, so further SYNs are dropped (connect timeout).
- `Proxy`: an HTTP CONNECT proxy; `mode="tunnel"` relays to 127.0.0.1 targets only, `"407"`
  demands credentials, `"502"` refuses the tunnel, `"hang"` accepts and never answers.
- `make_pki(dir)`: a test CA and certificates (good, expired, wrong host, self-signed) made with
  the `openssl` command line (argv, no shell).
"""
from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HOST = "127.0.0.1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class CertPair:
    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    """Test certificates: `ca` signs `good` (valid for 127.0.0.1 and localhost), `expired` (same
    names, notAfter yesterday) and `wronghost` (valid for wrong.invalid only); `selfsigned` signs
    itself (valid for 127.0.0.1)."""

    ca: str
    good: CertPair
    expired: CertPair
    wronghost: CertPair
    selfsigned: CertPair


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(argv: List[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)


_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_pki(directory: Path) -> Pki:
    """Generate the test PKI in `directory` with `openssl` (about 50 ms)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=mutation-doctor test CA",
          "-days", "3", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)

    def leaf(name: str, san: str, days: str) -> CertPair:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
        _run(["openssl", "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"], d)
        _run(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
              "-set_serial", str(1000 + len(name) * 7 + ord(name[0])), "-out", f"{name}.pem", "-days", days,
              "-extfile", f"{name}.ext"], d)
        return CertPair(str(d / f"{name}.pem"), str(d / f"{name}.key"))

    good = leaf("good", "IP:127.0.0.1,DNS:localhost", "3")
    expired = leaf("expired", "IP:127.0.0.1,DNS:localhost", "-1")  # notAfter = now - 1 day
    wronghost = leaf("wronghost", "DNS:wrong.invalid", "3")
    _run(["openssl", "req", "-x509", *_EC, "-keyout", "selfsigned.key", "-out", "selfsigned.pem",
          "-subj", "/CN=127.0.0.1", "-days", "3", "-addext", "subjectAltName=IP:127.0.0.1"], d)
    return Pki(str(d / "ca.pem"), good, expired, wronghost, CertPair(str(d / "selfsigned.pem"), str(d / "selfsigned.key")))


def server_context(pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


# ---------------------------------------------------------------------------------------------
# The peers


class _Peer:
    """A loopback peer on `port`: `url` is `scheme://[userinfo@]127.0.0.1:port`; used as a context
    manager it runs `start()` on entry and `stop()` on exit."""

    scheme = "http"
    userinfo = ""
    port: int

    @property
    def url(self) -> str:
        creds = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{creds}{HOST}:{self.port}"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Acceptor(_Peer):
    """Accept loop in a daemon thread; `handle(conn)` runs in its own daemon thread per connection."""

    def __init__(self, backlog: int = 64):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(backlog)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name=type(self).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                self.accepted += 1
            threading.Thread(target=self._handle_safely, args=(conn,), daemon=True).start()

    def _handle_safely(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            self.handle(conn)
        except OSError:
            pass

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        pass

    def wait_stopped(self, conn: socket.socket, limit: float = 30.0) -> None:
        """Hold `conn` open without a byte until the server stops (or `limit` seconds pass)."""
        end = time.monotonic() + limit
        while not self._stop.is_set() and time.monotonic() < end:
            time.sleep(0.05)


class BlackHole(_Acceptor):
    """Accepts and never answers; `scheme="https"` to be used as a TLS endpoint (no handshake answer)."""

    def __init__(self, scheme: str = "http"):
        super().__init__()
        self.scheme = scheme

    def handle(self, conn: socket.socket) -> None:
        self.wait_stopped(conn)


class SynDrop(_Peer):
    """A listener whose accept queue is full (backlog 0 plus one queued connection, never accepted):
    the kernel drops further SYNs, so clients see a connect timeout."""

    def __init__(self, scheme: str = "https"):
        self.scheme = scheme
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self._fillers: List[socket.socket] = []

    def start(self) -> None:
        for _ in range(4):  # fill the queue: stop at the first connect that no longer completes
            s = socket.socket()
            s.settimeout(0.2)
            self._fillers.append(s)
            try:
                s.connect((HOST, self.port))
            except (socket.timeout, OSError):
                break

    def stop(self) -> None:
        for s in self._fillers + [self._listener]:
            try:
                s.close()
            except OSError:
                pass


class RefusedPort(_Peer):
    """A port bound (so nobody else takes it) but not listening: connecting is refused."""

    def __init__(self, scheme: str = "http", userinfo: str = ""):
        self.scheme = scheme
        self.userinfo = userinfo
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self.port = self._sock.getsockname()[1]

    def stop(self) -> None:
        self._sock.close()


def _read_head(conn: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _relay(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
    a.settimeout(0.2)
    while not stop.is_set():
        try:
            data = a.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            b.sendall(data)
        except OSError:
            break
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Proxy(_Acceptor):
    """An HTTP proxy for CONNECT. `requests` records (request line, Proxy-Authorization or None)."""

    def __init__(self, mode: str = "tunnel", userinfo: str = ""):
        super().__init__()
        self.mode = mode
        self.userinfo = userinfo
        self.requests: List[Tuple[str, Optional[str]]] = []

    def handle(self, conn: socket.socket) -> None:
        head = _read_head(conn)
        lines = head.decode("latin-1", "replace").split("\r\n")
        auth = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("proxy-authorization:")), None)
        with self._lock:
            self.requests.append((lines[0], auth))
        if self.mode == "hang":
            self.wait_stopped(conn)
            return
        if self.mode == "407":
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if self.mode == "502":
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        parts = lines[0].split()
        if len(parts) < 2 or parts[0] != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        host, _, port = parts[1].rpartition(":")
        if host not in (HOST, "localhost"):  # loopback only: this proxy never leaves the machine
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((HOST, int(port)), timeout=2)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with self._lock:
            self._conns.append(upstream)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        t = threading.Thread(target=_relay, args=(upstream, conn, self._stop), daemon=True)
        t.start()
        _relay(conn, upstream, self._stop)
        t.join(timeout=2)


# ---------------------------------------------------------------------------------------------
# A minimal Hub


class _HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MiniHub/1"
    timeout = 5  # idle keep-alive connections end by themselves

    def log_message(self, *args):  # keep test output clean
        pass

    def _answer(self, body: bool) -> None:
        hub: MiniHub = self.server.hub  # type: ignore[attr-defined]
        with hub._lock:
            hub.requests.append((self.command, self.path))
        mode = hub.mode
        if mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            self.close_connection = True
            return
        if mode == "status":
            self.send_response(hub.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "portal":
            page = b"<html><body>Please log in to the guest network</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        content = hub.files.get((repo, filename))
        if content is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        import hashlib

        etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        self.send_response(200)
        self.send_header("X-Repo-Commit", hub.commit)
        if mode != "no-etag":
            self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)


class _HubHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, hub: "MiniHub"):
        self.hub = hub
        super().__init__((HOST, 0), _HubHandler)

    def finish_request(self, request, client_address):
        # TLS is set up in the connection's own thread, so a client that never speaks TLS
        # cannot stall the accept loop.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.hub.tls is not None:
            request.settimeout(5)
            try:
                request = self.hub.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class MiniHub(_Peer):
    """The Hub's resolve protocol on 127.0.0.1: `files[(repo_id, filename)] = bytes`.

    `tls` (an `ssl.SSLContext` for the server side) makes it https; `requests` records
    (method, path) of every request.
    """

    def __init__(self, files: Optional[Dict[Tuple[str, str], bytes]] = None, mode: str = "hub",
                 status: int = 503, tls: Optional[ssl.SSLContext] = None, commit: str = COMMIT):
        self.files = dict(files or {("timm/resnet18.a1_in1k", "config.json"): b'{"architecture": "resnet18"}'})
        self.mode, self.status, self.tls, self.commit = mode, status, tls, commit
        self.requests: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = _HubHTTPServer(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return "https" if self.tls else "http"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
