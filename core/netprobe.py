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
Endpoints, classifications, results and the launch environment's proxy and CA rules live in
core.netspec and are re-exported here.
"""
from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

from core.netspec import (CA_DIR_VARS, CA_FILE_VARS, CLASSES, CONNECT_TIMEOUT, DEFAULT_HUB, DEFAULT_HUB_PROBE_PATH,
                          DEFAULT_TIMEOUT, DEFAULT_TORCH_PROBE_PATH, DNS, GRACE, HTTP_STATUS, HUB, NOT_A_HUB, OK,
                          PROXY, PROXY_KIND, READ_TIMEOUT, REFUSED, STAGE_CONNECT, STAGE_DNS, STAGE_HTTP,
                          STAGE_PROXY, STAGE_TLS, TLS_TIMEOUT, TLS_VERIFY, TORCH_HUB_HOST, TORCHHUB, USER_AGENT,
                          ca_settings, Endpoint, ProbeResult, proxy_for, _VERIFY_REASONS, _VERIFY_WORDS, _CAMissing,
                          _hostport, _proxy_for, _split, _ssl_context)  # noqa: F401 - public names re-exported
from core.secrets import mask_value


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
