"""What a reachability probe is and says (endpoints, classifications, results), and what the launch
environment decides about it: proxies, NO_PROXY, CA settings. Standard library only; core.netprobe
runs the probes and re-exports these names.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple
from urllib.parse import urlsplit

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
