"""Reachability probes for the hosts a launched experiment will contact, classified exactly.

A probe walks the stages a real client walks: DNS (getaddrinfo), TCP connect, the proxy's CONNECT
tunnel when a proxy applies, the TLS handshake with certificate verification (using the CA settings
of the *launch* environment, not ours), and an HTTP HEAD of a real URL. The first stage that fails
decides the classification:

    ok               every stage passed (for the Hub: the HEAD carried X-Repo-Commit and an ETag,
                     or a Hub error code such as 404 EntryNotFound, which still proves a Hub)
    dns              the name does not resolve (or the resolver did not answer in time)
    refused          the connection was refused, reset or the network is unreachable
    connect-timeout  no answer to the TCP connect (SYN dropped)
    tls-timeout      TCP accepted but the TLS handshake got no answer
    read-timeout     the HEAD got no answer
    tls-verify       the certificate did not verify: self-signed, expired, hostname mismatch,
                     unknown CA (or the configured CA file is missing)
    proxy            the proxy is unreachable, refused, timed out, wants credentials (407) or
                     answered CONNECT with anything but 2xx
    http-status      an HTTP error status without Hub headers (5xx, 403 from a firewall, ...)
    not-a-hub        the Hub URL answered, but not like a Hub (no X-Repo-Commit: a captive portal or
                     an intercepting proxy; huggingface_hub reports FileMetadataError)

All probes of one `probe_all` call share one deadline (`timeout` seconds from the start): each
stage waits at most `min(timeout, time left)`, probes run concurrently in daemon threads, and the
call returns by the deadline plus a short grace whatever the sockets or the resolver do.

Standard library only; nothing here prints. Credentials in proxy URLs never reach detail text.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

from core.secrets import mask_value

# Classifications.
OK = "ok"
DNS = "dns"
REFUSED = "refused"
CONNECT_TIMEOUT = "connect-timeout"
TLS_TIMEOUT = "tls-timeout"
READ_TIMEOUT = "read-timeout"
TLS_VERIFY = "tls-verify"
PROXY = "proxy"
HTTP_STATUS = "http-status"
NOT_A_HUB = "not-a-hub"
CLASSES = (OK, DNS, REFUSED, CONNECT_TIMEOUT, TLS_TIMEOUT, READ_TIMEOUT, TLS_VERIFY, PROXY, HTTP_STATUS, NOT_A_HUB)

# Stages, in the order a client walks them.
STAGE_DNS, STAGE_CONNECT, STAGE_PROXY, STAGE_TLS, STAGE_HTTP = "dns", "connect", "proxy", "tls", "http"

# Endpoint kinds.
HUB, TORCHHUB, PROXY_KIND = "hub", "torchhub", "proxy"

DEFAULT_HUB = "https://huggingface.co"
TORCH_HUB_HOST = "https://download.pytorch.org"
DEFAULT_HUB_PROBE_PATH = "/timm/resnet18.a1_in1k/resolve/main/config.json"
DEFAULT_TORCH_PROBE_PATH = "/models/resnet18-f37072fd.pth"
DEFAULT_TIMEOUT = 3.0
GRACE = 0.25  # how long past the deadline probe_all waits for threads to report
USER_AGENT = "mutation-doctor-probe/1"

# Where OpenSSL-based clients look when the compiled-in default file is missing (as httpcore2 does).
_CA_FILE_CANDIDATES = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)
# Launch-environment CA settings, in the order they are honoured.
CA_FILE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
CA_DIR_VARS = ("SSL_CERT_DIR",)

# OpenSSL verify codes -> the short reason used in details and findings.
_VERIFY_REASONS = {
    18: "self-signed",  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: "self-signed",  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN (intercepting proxies)
    10: "expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    9: "not-yet-valid",  # X509_V_ERR_CERT_NOT_YET_VALID
    62: "hostname-mismatch",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "hostname-mismatch",  # X509_V_ERR_IP_ADDRESS_MISMATCH
    2: "unknown-ca",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    20: "unknown-ca",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown-ca",  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_VERIFY_WORDS = {
    "self-signed": "self-signed certificate",
    "expired": "certificate expired",
    "not-yet-valid": "certificate not yet valid (check the clock)",
    "hostname-mismatch": "hostname mismatch",
    "unknown-ca": "unknown CA (issuer not in the trusted store)",
}


@dataclass(frozen=True)
class Endpoint:
    """A host the launched process will contact.

    `url` is the base URL (`https://huggingface.co`, an `HF_ENDPOINT` with its path prefix, or, for
    kind `proxy`, the proxy URL as configured, credentials included: display it with `.display`).
    `kind` is `hub`, `torchhub` or `proxy`; `probe_path` is the path HEAD-requested below `url`.
    """

    url: str
    kind: str
    probe_path: str = ""

    def __repr__(self) -> str:  # never leak proxy credentials through a repr
        return f"Endpoint(url={self.display!r}, kind={self.kind!r}, probe_path={self.probe_path!r})"

    @property
    def display(self) -> str:
        return mask_value(self.url)  # credentials become ***

    @property
    def scheme(self) -> str:
        return _split(self.url)[0]

    @property
    def host(self) -> str:
        return _split(self.url)[1]

    @property
    def port(self) -> int:
        return _split(self.url)[2]

    @property
    def hostport(self) -> str:
        """`host:port`, the name findings use for the endpoint."""
        return _hostport(self.host, self.port)

    @property
    def target(self) -> str:
        """The full URL that is HEAD-requested (base path plus probe path)."""
        return self.url.rstrip("/") + self.probe_path if self.probe_path else self.url


@dataclass(frozen=True)
class ProbeResult:
    """What one probe learnt.

    `classification` is one of CLASSES; `stage` is the stage that failed (for `ok`: the last stage
    passed); `detail` is one line naming the host and the stage, credentials masked; `elapsed` is
    seconds from the start of the probe; `via_proxy` is the masked proxy URL used ("" when direct).
    `reason` refines the classification (`self-signed`, `expired`, `hostname-mismatch`,
    `unknown-ca`, `ca-missing`, `reset`, `unreachable`, `timeout`, `refused`, `auth-required`,
    `connect-rejected`, `forward-rejected`, `no-repo-commit`, `no-etag`, `not-http`, ...).
    `status` is the HTTP status when one was received; `ca_source` says which CA store verified
    TLS; `stages` holds (stage, seconds) for every stage passed.
    """

    endpoint: Endpoint
    classification: str
    stage: str
    detail: str
    elapsed: float
    via_proxy: str = ""
    reason: str = ""
    status: Optional[int] = None
    ca_source: str = ""
    stages: Tuple[Tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.classification == OK

    @property
    def host(self) -> str:
        return self.endpoint.hostport


# --------------------------------------------------------------------------------------------
# URLs, proxies and CA settings of the launch environment


def _split(url: str) -> Tuple[str, str, int]:
    """(scheme, host, port) of a URL; a URL without scheme is taken as http (as clients do)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, host, port or (443 if scheme == "https" else 80)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _env_var(env: Mapping[str, str], lower: str) -> Tuple[str, str]:
    """(name, value) of a proxy variable; the lowercase name wins, as in urllib and httpx."""
    if lower in env:
        return lower, env[lower] or ""
    upper = lower.upper()
    return upper, env.get(upper, "") or ""


def _bypassed(host: str, port: int, env: Mapping[str, str]) -> bool:
    """True when NO_PROXY/no_proxy exempts `host:port` (`*`, domains and subdomains, IPs, CIDRs)."""
    _, value = _env_var(env, "no_proxy")
    for entry in (e.strip().lower() for e in value.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        entry_port = None
        if entry.startswith("["):
            addr, _, rest = entry[1:].partition("]")
            entry, entry_port = addr, rest.lstrip(":") or None
        elif entry.count(":") == 1:
            entry, entry_port = entry.split(":")
        if entry_port and entry_port != str(port):
            continue
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            net = None
        if net is not None:
            try:
                if ipaddress.ip_address(host) in net:
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


@dataclass(frozen=True)
class _Proxy:
    var: str  # the variable it came from, e.g. HTTPS_PROXY
    url: str  # as configured (may hold credentials)

    @property
    def display(self) -> str:
        return mask_value(self.url)  # credentials become ***


def _proxy_for(endpoint: Endpoint, env: Mapping[str, str]) -> Optional[_Proxy]:
    """The proxy the launched client will use for `endpoint`, or None.

    The Hub client (httpx) takes `https_proxy` for https URLs, `http_proxy` for http ones, then
    `all_proxy`; torch hub (urllib) takes the scheme's variable only. NO_PROXY is honoured.
    """
    if endpoint.kind == PROXY_KIND:
        return None
    scheme, host, port = _split(endpoint.url)
    candidates = [f"{scheme}_proxy"] + (["all_proxy"] if endpoint.kind == HUB else [])
    for lower in candidates:
        name, value = _env_var(env, lower)
        if value.strip():
            if _bypassed(host, port, env):
                return None
            url = value.strip()
            return _Proxy(name, url if "://" in url else "http://" + url)
    return None


def proxy_for(endpoint: Endpoint, env: Mapping[str, str]) -> str:
    """The proxy URL (as configured, credentials included) the launched client uses for `endpoint`, or ""."""
    p = _proxy_for(endpoint, env)
    return p.url if p else ""


def ca_settings(env: Mapping[str, str]) -> Tuple[Optional[str], Optional[str], str]:
    """(cafile, capath, description) the launch environment verifies TLS with.

    SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE (files), then SSL_CERT_DIR; otherwise the
    system store compiled into OpenSSL. Our own process environment is never consulted.
    """
    for var in CA_FILE_VARS:
        if env.get(var):
            return env[var], None, f"{var}={env[var]}"
    for var in CA_DIR_VARS:
        if env.get(var):
            return None, env[var], f"{var}={env[var]}"
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if paths.openssl_capath and os.path.isdir(paths.openssl_capath) else None
    if not cafile and not capath:
        cafile = next((c for c in _CA_FILE_CANDIDATES if os.path.isfile(c)), None)
    return cafile, capath, f"system store ({cafile or capath or 'none found'})"


def _ssl_context(env: Mapping[str, str]) -> Tuple[ssl.SSLContext, str]:
    cafile, capath, source = ca_settings(env)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    if cafile or capath:
        if cafile and not os.path.isfile(cafile):
            raise _CAMissing(f"{source}: no such file")
        if capath and not os.path.isdir(capath):
            raise _CAMissing(f"{source}: no such directory")
        ctx.load_verify_locations(cafile=cafile, capath=capath)
    return ctx, source


class _CAMissing(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Endpoints


def endpoints_for(
    env: Mapping[str, str],
    need_hub: bool,
    need_torchhub: bool,
    hub_probe_path: Optional[str] = None,
    torch_probe_path: Optional[str] = None,
) -> List[Endpoint]:
    """The endpoints the launch environment `env` will contact.

    The Hub (`HF_ENDPOINT` or https://huggingface.co) when `need_hub`, probed with a real resolve
    URL (`hub_probe_path`, default `DEFAULT_HUB_PROBE_PATH`); the torch hub download host when
    `need_torchhub`; then each distinct proxy those endpoints go through (kind `proxy`).
    """
    eps: List[Endpoint] = []
    if need_hub:
        base = (env.get("HF_ENDPOINT") or DEFAULT_HUB).strip().rstrip("/")
        eps.append(Endpoint(base, HUB, _path(hub_probe_path or DEFAULT_HUB_PROBE_PATH)))
    if need_torchhub:
        eps.append(Endpoint(TORCH_HUB_HOST, TORCHHUB, _path(torch_probe_path or DEFAULT_TORCH_PROBE_PATH)))
    seen = set()
    for ep in list(eps):
        p = _proxy_for(ep, env)
        if p and p.url not in seen:
            seen.add(p.url)
            eps.append(Endpoint(p.url, PROXY_KIND, ""))
    return eps


def _path(p: str) -> str:
    return p if p.startswith("/") else "/" + p


def hub_resolve_path(repo_id: str, filename: str, revision: str = "main") -> str:
    """The resolve path of a Hub file, as huggingface_hub builds it."""
    return f"/{repo_id}/resolve/{revision}/{filename}"


# --------------------------------------------------------------------------------------------
# The probe itself


class _Timeout(Exception):
    pass


class _Fail(Exception):
    """A classified failure raised inside a probe."""

    def __init__(self, classification: str, reason: str, words: str, status: Optional[int] = None):
        super().__init__(words)
        self.classification, self.reason, self.words, self.status = classification, reason, words, status


class _Job:
    """One probe running in a daemon thread, with the stage it is in for the supervisor to read."""

    def __init__(self, endpoint: Endpoint, env: Mapping[str, str], timeout: float, start: float, deadline: float):
        self.endpoint, self.env, self.timeout = endpoint, dict(env), float(timeout)
        self.start, self.deadline = start, deadline
        self.stage = STAGE_DNS
        self.stage_start = start
        self.stages: List[Tuple[str, float]] = []
        self.proxy = _proxy_for(endpoint, env)
        self.ca_source = ""
        self.result: Optional[ProbeResult] = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self.thread = threading.Thread(target=self._run, name=f"probe-{endpoint.host}", daemon=True)

    # -- bookkeeping
    def _enter(self, stage: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self.stage != stage:
                self.stages.append((self.stage, round(now - self.stage_start, 4)))
            self.stage, self.stage_start = stage, now

    def _budget(self) -> float:
        """Seconds the current stage may wait: its own timeout, capped by the shared deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0.005:
            raise _Timeout()
        return min(self.timeout, left)

    def _finish(self, result: ProbeResult) -> None:
        with self._lock:
            if self.result is None:
                self.result = result
        self.done.set()

    def _result(self, classification: str, reason: str, words: str, status: Optional[int] = None) -> ProbeResult:
        ep = self.endpoint
        where = ep.display if ep.kind == PROXY_KIND else ep.hostport
        via = f" via proxy {self.proxy.display} ({self.proxy.var})" if self.proxy else ""
        if classification == OK:
            detail = f"{where}{via}: {words}"
        else:
            detail = f"{where}{via}: stage {self.stage}: {words}"
        stages = tuple(self.stages) + ((self.stage, round(time.monotonic() - self.stage_start, 4)),) if classification == OK else tuple(self.stages)
        return ProbeResult(
            endpoint=ep,
            classification=classification,
            stage=self.stage,
            detail=mask_value(detail),
            elapsed=round(time.monotonic() - self.start, 4),
            via_proxy=self.proxy.display if self.proxy else "",
            reason=reason,
            status=status,
            ca_source=self.ca_source,
            stages=stages,
        )

    def timed_out(self) -> ProbeResult:
        """The result when the thread has not reported by the deadline (e.g. a hung resolver)."""
        with self._lock:
            if self.result is not None:
                return self.result
        return self._timeout_result()

    def _timeout_result(self) -> ProbeResult:
        secs = f"{self.timeout:g} s" if self.deadline - self.start >= self.timeout else f"{self.deadline - self.start:.2f} s (shared deadline)"
        stage = self.stage
        if self.endpoint.kind == PROXY_KIND or (self.proxy and stage in (STAGE_DNS, STAGE_CONNECT, STAGE_PROXY)):
            what = {STAGE_DNS: "the resolver did not answer", STAGE_CONNECT: "no answer to TCP connect",
                    STAGE_PROXY: "the proxy accepted but did not answer CONNECT"}.get(stage, "no answer")
            return self._result(PROXY, "timeout", f"{what} within {secs}")
        if stage == STAGE_DNS:
            return self._result(DNS, "timeout", f"the resolver did not answer within {secs}")
        if stage == STAGE_CONNECT:
            return self._result(CONNECT_TIMEOUT, "timeout", f"no answer to TCP connect within {secs} (packets dropped?)")
        if stage == STAGE_TLS:
            return self._result(TLS_TIMEOUT, "timeout", f"TCP connected but the TLS handshake got no answer within {secs}")
        return self._result(READ_TIMEOUT, "timeout", f"no answer to HEAD {self.endpoint.probe_path or '/'} within {secs}")

    # -- the stages
    def _run(self) -> None:
        try:
            self._finish(self._probe())
        except _Timeout:
            self._finish(self._timeout_result())
        except socket.timeout:
            self._finish(self._timeout_result())
        except _Fail as f:
            self._finish(self._result(f.classification, f.reason, f.words, f.status))
        except Exception as e:  # anything unforeseen is still a classified, bounded answer
            self._finish(self._unexpected(e))
        finally:
            sock = self._sock
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def _unexpected(self, e: Exception) -> ProbeResult:
        words = f"{type(e).__name__}: {e}"
        if self.endpoint.kind == PROXY_KIND or (self.proxy and self.stage in (STAGE_DNS, STAGE_CONNECT, STAGE_PROXY)):
            return self._result(PROXY, "error", words)
        if self.stage == STAGE_DNS:
            return self._result(DNS, "error", words)
        if self.stage == STAGE_TLS:
            return self._result(TLS_VERIFY, "handshake-failed", words)
        if self.stage == STAGE_HTTP:
            return self._result(NOT_A_HUB if self.endpoint.kind == HUB else HTTP_STATUS, "not-http", words)
        return self._result(REFUSED, "error", words)

    def _probe(self) -> ProbeResult:
        ep = self.endpoint
        scheme, host, port = _split(ep.url)
        if not host:
            raise _Fail(DNS, "bad-url", f"{ep.display!r} has no host name")
        if ep.kind == PROXY_KIND:
            self._connect(host, port, through_proxy=True)
            return self._result(OK, "", f"proxy accepts connections ({self._ms()})")
        if self.proxy:
            pscheme, phost, pport = _split(self.proxy.url)
            if not phost:
                raise _Fail(PROXY, "bad-url", f"{self.proxy.var}={self.proxy.display} has no host name")
            sock = self._connect(phost, pport, through_proxy=True)
            if pscheme != "http":
                self._enter(STAGE_PROXY)
                return self._result(OK, "", f"proxy {pscheme}:// reachable; the tunnel itself is not probed "
                                            f"for this proxy scheme ({self._ms()})")
            if scheme == "https":
                self._enter(STAGE_PROXY)
                self._tunnel(sock, host, port)
        else:
            sock = self._connect(host, port, through_proxy=False)
        if scheme == "https":
            sock = self._tls(sock, host)
        return self._head(sock, scheme, host, port)

    def _ms(self) -> str:
        return f"{(time.monotonic() - self.start) * 1000:.0f} ms"

    def _connect(self, host: str, port: int, through_proxy: bool) -> socket.socket:
        pclass = PROXY if through_proxy else None
        who = "proxy host" if through_proxy and self.endpoint.kind != PROXY_KIND else "host"
        self._enter(STAGE_DNS)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise _Fail(pclass or DNS, "dns" if pclass else "nxdomain", f"cannot resolve {who} {host!r}: {e.strerror or e}")
        except UnicodeError as e:
            raise _Fail(pclass or DNS, "bad-url", f"invalid {who} name {host!r}: {e}")
        if time.monotonic() >= self.deadline:
            raise _Timeout()
        self._enter(STAGE_CONNECT)
        first: Optional[BaseException] = None
        for family, stype, proto, _, addr in infos:
            s = socket.socket(family, stype, proto)
            self._sock = s
            try:
                s.settimeout(self._budget())
                s.connect(addr)
                return s
            except (socket.timeout, _Timeout) as e:
                s.close()
                first = first or e
                break  # the shared deadline is spent: do not try further addresses
            except OSError as e:
                s.close()
                first = first or e
        self._sock = None
        if isinstance(first, (socket.timeout, _Timeout)):
            if pclass:
                raise _Fail(PROXY, "timeout", f"no answer to TCP connect to {who} {_hostport(host, port)} "
                                              f"within {self.timeout:g} s")
            raise _Timeout()
        if isinstance(first, ConnectionRefusedError):
            raise _Fail(pclass or REFUSED, "refused", f"connection refused by {who} {_hostport(host, port)}")
        raise _Fail(pclass or REFUSED, "unreachable",
                    f"cannot connect to {who} {_hostport(host, port)}: {getattr(first, 'strerror', None) or first}")

    def _tunnel(self, sock: socket.socket, host: str, port: int) -> None:
        """CONNECT host:port through the proxy; anything but 2xx is a proxy failure."""
        target = _hostport(host, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: {USER_AGENT}"]
        auth = _proxy_auth(self.proxy.url)
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        try:
            sock.settimeout(self._budget())
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = b""
            while b"\r\n\r\n" not in head:
                sock.settimeout(self._budget())
                chunk = sock.recv(4096)
                if not chunk:
                    raise _Fail(PROXY, "closed", "the proxy closed the connection without answering CONNECT")
                head += chunk
                if len(head) > 65536:
                    raise _Fail(PROXY, "connect-rejected", "the proxy's answer to CONNECT is not HTTP")
        except (socket.timeout, _Timeout):
            raise _Fail(PROXY, "timeout", f"the proxy accepted but did not answer CONNECT {target} "
                                          f"within {self.timeout:g} s")
        except (ConnectionResetError, BrokenPipeError) as e:
            raise _Fail(PROXY, "reset", f"the proxy reset the connection during CONNECT: {e.strerror or e}")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = status_line.split(None, 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            raise _Fail(PROXY, "connect-rejected", f"the proxy answered CONNECT with {status_line[:60]!r}")
        if status == 407:
            has = "with credentials that were rejected" if auth else "and none are set in the proxy URL"
            raise _Fail(PROXY, "auth-required", f"the proxy demands authentication (407) {has}", status)
        if not 200 <= status < 300:
            raise _Fail(PROXY, "connect-rejected", f"the proxy answered CONNECT {target} with {status_line[:80]!r}", status)

    def _tls(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        self._enter(STAGE_TLS)
        try:
            ctx, self.ca_source = _ssl_context(self.env)
        except _CAMissing as e:
            raise _Fail(TLS_VERIFY, "ca-missing", f"cannot load the CA settings: {e}")
        except ssl.SSLError as e:
            raise _Fail(TLS_VERIFY, "ca-missing", f"cannot load the CA settings ({ca_settings(self.env)[2]}): {e}")
        tls = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        self._sock = tls
        try:
            tls.settimeout(self._budget())
            tls.do_handshake()
        except ssl.SSLCertVerificationError as e:
            reason = _VERIFY_REASONS.get(getattr(e, "verify_code", 0), "verify-failed")
            message = getattr(e, "verify_message", "") or str(e)
            words = _VERIFY_WORDS.get(reason, "certificate did not verify")
            raise _Fail(TLS_VERIFY, reason, f"{words}: {message} (verified against {self.ca_source})")
        except (socket.timeout, _Timeout):
            raise
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            raise _Fail(REFUSED, "reset", f"connection reset during the TLS handshake: {getattr(e, 'strerror', None) or e}")
        except ssl.SSLError as e:
            raise _Fail(TLS_VERIFY, "handshake-failed", f"TLS handshake failed: {e.reason or e}")
        return tls

    def _head(self, sock: socket.socket, scheme: str, host: str, port: int) -> ProbeResult:
        ep = self.endpoint
        self._enter(STAGE_HTTP)
        base_path = urlsplit(ep.url if "://" in ep.url else "http://" + ep.url).path.rstrip("/")
        path = base_path + ep.probe_path if ep.probe_path else (base_path or "/")
        host_header = host if port == (443 if scheme == "https" else 80) else _hostport(host, port)
        forward = bool(self.proxy) and scheme == "http"
        target = f"{scheme}://{host_header}{path}" if forward else path
        conn = http.client.HTTPConnection(host, port)
        conn.sock = sock
        try:
            sock.settimeout(self._budget())
            conn.putrequest("HEAD", target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host_header)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept-Encoding", "identity")
            if forward and _proxy_auth(self.proxy.url):
                conn.putheader("Proxy-Authorization", _proxy_auth(self.proxy.url))
            conn.endheaders()
            sock.settimeout(self._budget())
            resp = conn.getresponse()
        except (socket.timeout, _Timeout):
            raise
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
            raise _Fail(REFUSED, "reset", f"the connection was closed without an answer to HEAD {path}: "
                                          f"{getattr(e, 'strerror', None) or e}")
        except http.client.HTTPException as e:
            cls = NOT_A_HUB if ep.kind == HUB else HTTP_STATUS
            raise _Fail(cls, "not-http", f"the answer to HEAD {path} is not HTTP ({type(e).__name__})")
        try:
            return self._judge(resp, path, host, forward)
        finally:
            resp.close()
            conn.close()

    def _judge(self, resp: http.client.HTTPResponse, path: str, host: str, forward: bool) -> ProbeResult:
        ep = self.endpoint
        status = resp.status
        line = f"HEAD {path} -> {status} {resp.reason}".rstrip()
        if forward and status == 407:
            raise _Fail(PROXY, "auth-required", f"{line}: the proxy demands authentication", status)
        if ep.kind != HUB:
            if status >= 400:
                raise _Fail(HTTP_STATUS, str(status), line, status)
            return self._result(OK, "", f"{line} in {self._ms()}", status)
        commit = resp.getheader("X-Repo-Commit")
        code = resp.getheader("X-Error-Code")
        etag = resp.getheader("X-Linked-Etag") or resp.getheader("ETag")
        if status >= 500:
            extra = f" (Hub error {code})" if code else ""
            raise _Fail(HTTP_STATUS, str(status), f"{line}{extra}", status)
        if commit or code:
            if status >= 400:
                return self._result(OK, "", f"{line} with X-Error-Code {code or '-'}: a Hub answered "
                                            f"(the file itself is not served) in {self._ms()}", status)
            if not commit:
                raise _Fail(NOT_A_HUB, "no-repo-commit", f"{line} without X-Repo-Commit", status)
            if not etag and status < 300:
                raise _Fail(NOT_A_HUB, "no-etag", f"{line} with X-Repo-Commit but no ETag: huggingface_hub "
                                                  f"refuses it (FileMetadataError)", status)
            return self._result(OK, "", f"{line}, X-Repo-Commit {commit[:12]} in {self._ms()}", status)
        if status == 407:
            raise _Fail(PROXY, "auth-required", f"{line}: an intercepting proxy demands authentication", status)
        if status >= 400:
            raise _Fail(HTTP_STATUS, str(status), f"{line} without Hub headers (a firewall or a web server "
                                                  f"that is not a Hub?)", status)
        if 300 <= status < 400:
            location = resp.getheader("Location") or ""
            lhost = urlsplit(location).hostname if "://" in location else host
            if (lhost or "").lower() == host:
                return self._result(OK, "", f"{line}: redirect within the Hub to {location[:80]} (not followed) "
                                            f"in {self._ms()}", status)
            raise _Fail(NOT_A_HUB, "no-repo-commit", f"{line} to {mask_value(location)[:100]} without "
                                                     f"X-Repo-Commit: a captive portal or an intercepting proxy "
                                                     f"(huggingface_hub raises FileMetadataError)", status)
        ctype = resp.getheader("Content-Type") or "no content type"
        raise _Fail(NOT_A_HUB, "no-repo-commit", f"{line} ({ctype}) without X-Repo-Commit: a captive portal or an "
                                                 f"intercepting proxy (huggingface_hub raises FileMetadataError)", status)


def _proxy_auth(proxy_url: str) -> str:
    """The Proxy-Authorization header value for a proxy URL with credentials, or ""."""
    parts = urlsplit(proxy_url)
    if parts.username is None:
        return ""
    raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _key(endpoint: Endpoint, env: Mapping[str, str]) -> tuple:
    scheme, host, port = _split(endpoint.url)
    return endpoint.kind, scheme, host, port, proxy_for(endpoint, env)


def probe_all(endpoints: Sequence[Endpoint], env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> List[ProbeResult]:
    """Probe every endpoint, each distinct host once, all concurrently; one result per endpoint.

    Returns by `timeout` + GRACE seconds after the call whatever happens: stages share one
    deadline, threads are daemons, and a probe still running at the deadline is reported as a
    timeout of the stage it is stuck in.
    """
    timeout = max(0.05, float(timeout))
    start = time.monotonic()
    deadline = start + timeout
    jobs: Dict[tuple, _Job] = {}
    for ep in endpoints:
        k = _key(ep, env)
        if k not in jobs:
            jobs[k] = _Job(ep, env, timeout, start, deadline)
    for job in jobs.values():
        job.thread.start()
    for job in jobs.values():
        job.done.wait(max(0.0, deadline + GRACE - time.monotonic()))
    results = {k: job.timed_out() for k, job in jobs.items()}
    out = []
    for ep in endpoints:
        r = results[_key(ep, env)]
        out.append(r if r.endpoint == ep else replace(r, endpoint=ep))
    return out


def probe(endpoint: Endpoint, env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Probe one endpoint (see `probe_all`); returns within `timeout` + GRACE seconds."""
    return probe_all([endpoint], env, timeout)[0]
