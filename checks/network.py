"""The `network` group: can the launched experiments reach the hosts their needs make them contact?

Only the endpoints the launch context will really contact are probed: the Hub for hub needs
(timm, hf) unless HF_HUB_OFFLINE is set in the launch environment (huggingface_hub contacts the
Hub even for cached files, to check for updates), the torch hub download host only for torchvision
needs that are not cached (torch.hub does no network when the file is present), and the proxy they
go through. Each failure is weighed against the need states:

- unreachable and a needed file is not cached: the experiments needing it are blocked (`fail`);
- unreachable and everything cached: `warn`, with the time each load loses before huggingface_hub
  falls back to the cache, and the `HF_HUB_OFFLINE=1` fix;
- a proxy that rejects the CONNECT (407, 403, 502...) blocks every hub load, cached or not:
  huggingface_hub re-raises proxy errors instead of falling back to the cache.

The weighing follows huggingface_hub 2.4.0 (`file_download._get_metadata_or_catch_error`): cache
fallback on ConnectError (refused, DNS, TLS verification, unreachable proxy), timeouts, HTTP error
statuses and FileMetadataError (no X-Repo-Commit); no fallback on ProxyError and on a connection
dropped after the request was sent (ReadError / RemoteProtocolError).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from core import netprobe as np
from core.commands import prefetch_fix, quote, run_command
from core.model import FAIL, OK, WARN, Finding
from core.needs import kinds

GROUP = "network"
HUB_KINDS = kinds(network=np.HUB, falls_back=True)  # a load falls back to the cache when the Hub is down
TORCH_KINDS = kinds(network=np.TORCHHUB, falls_back=False)  # a load of an uncached file fails or hangs

# huggingface_hub 2.4.0 timing constants (constants.DEFAULT_ETAG_TIMEOUT,
# file_download._ETAG_RETRY_TIMEOUT, utils/_http.py http_backoff defaults). bench/bench_network.py
# reads the installed library's own values; these are what the check assumes for the launched env.
ETAG_TIMEOUT = 10
ETAG_RETRY_TIMEOUT = 60
MAX_RETRIES = 5
BACKOFF = (1, 2, 4, 8, 8)  # base_wait_time 1 doubling up to max_wait_time 8, MAX_RETRIES sleeps

_TIMEOUT_CLASSES = (np.CONNECT_TIMEOUT, np.TLS_TIMEOUT, np.READ_TIMEOUT)
_CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR")
_PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


# ---------------------------------------------------------------------------------------------
# What huggingface_hub does with each classification


def hub_falls_back(r: np.ProbeResult) -> bool:
    """True when huggingface_hub, meeting this failure, still loads a cached file."""
    if r.classification == np.PROXY and r.stage == np.STAGE_PROXY and r.reason in (
            "auth-required", "connect-rejected", "closed", "reset"):
        return False  # ProxyError / protocol error on CONNECT: re-raised, cache not consulted
    if r.stage == np.STAGE_HTTP and (r.reason == "not-http" or (r.classification == np.REFUSED and r.reason == "reset")):
        return False  # RemoteProtocolError / ReadError after the request: not caught
    return True


def etag_timeout(env: Mapping[str, str]) -> int:
    """The metadata timeout of the launched process: HF_HUB_ETAG_TIMEOUT (an integer >= 1) or 10."""
    try:
        value = int(env.get("HF_HUB_ETAG_TIMEOUT", ""))
    except ValueError:
        return ETAG_TIMEOUT
    return value if value >= 1 else ETAG_TIMEOUT


def hub_wait_cached(r: np.ProbeResult, env: Mapping[str, str]) -> Optional[float]:
    """Seconds one cached Hub file costs a load before the cache is used (None: the resolver's timeout)."""
    if r.classification in _TIMEOUT_CLASSES or (r.classification == np.PROXY and r.reason == "timeout"):
        return float(etag_timeout(env))
    if r.classification == np.DNS and r.reason == "timeout":
        return None
    return 0.0


def hub_time_to_failure(r: np.ProbeResult, env: Mapping[str, str]) -> Optional[float]:
    """Seconds one *uncached* Hub file takes to fail (first HEAD, then the retry phase with 60 s
    timeouts and 5 backoffs for network errors, timeouts and 5xx); None when the resolver decides."""
    first = hub_wait_cached(r, env)
    if first is None:
        return None
    retried = r.classification in _TIMEOUT_CLASSES + (np.REFUSED, np.DNS, np.TLS_VERIFY) or (
        r.classification == np.PROXY and hub_falls_back(r)) or (
        r.classification == np.HTTP_STATUS and r.status in (408, 429, 500, 502, 503, 504))
    if not retried or not hub_falls_back(r):
        return first
    per_try = ETAG_RETRY_TIMEOUT if (r.classification in _TIMEOUT_CLASSES or r.reason == "timeout") else 0
    return first + (MAX_RETRIES + 1) * per_try + sum(BACKOFF)


# ---------------------------------------------------------------------------------------------
# Helpers on the context


def _uniq(items: Iterable[str]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _exps(states: Sequence) -> Tuple[str, ...]:
    return _uniq(e for s in states for e in s.experiments)


def _files(s) -> int:
    """How many Hub files a load of this need fetches when present (timm: the first it finds)."""
    r = getattr(s, "resolved", None)
    if r is not None and getattr(r, "files", None):
        return 1 if getattr(r, "any_of", False) else len(r.files)
    files = s.need.spec.get("files") if s.need.kind == "hf" else None
    return len(files) if files else 1


def _tries(s) -> int:
    """How many Hub files a load of this need tries when none is cached (timm falls back to a second)."""
    r = getattr(s, "resolved", None)
    if r is not None and getattr(r, "files", None):
        return len(r.files)
    if s.need.kind == "timm":
        return 2  # model.safetensors, then pytorch_model.bin
    files = s.need.spec.get("files") if s.need.kind == "hf" else None
    return len(files) if files else 1


def _label(s) -> str:
    n = s.need
    r = getattr(s, "resolved", None)
    if r is not None and getattr(r, "repo_id", ""):
        return f"{n.kind} {n.spec.get(n.kind)} ({r.repo_id})"
    return f"{n.kind} {n.spec.get(n.kind)}"


def _hub_probe_path(hub_states: Sequence) -> Optional[str]:
    """A resolve path of a file the plan really needs (an uncached one first), if known."""
    ranked = sorted(hub_states, key=lambda s: s.present is not False)
    for s in ranked:
        r = getattr(s, "resolved", None)
        if r is not None and getattr(r, "source", "") == "hf" and r.repo_id and r.files:
            return np.hub_resolve_path(r.repo_id, r.files[0], r.revision or "main")
        if s.need.kind == "hf" and s.need.spec.get("files"):
            return np.hub_resolve_path(s.need.spec["hf"], s.need.spec["files"][0], s.need.spec.get("revision") or "main")
    return None


def _preserve(ctx, *names: str) -> Optional[str]:
    """The sudo form that carries `names` into the launched process, or None when an export is enough."""
    how = (ctx.launch.how or "current").strip()
    if not how.startswith("sudo") or how.startswith("sudo -E"):
        return None
    kept: List[str] = []
    if how.startswith("sudo --preserve-env="):
        kept = [n for n in how.split("=", 1)[1].split(",") if n]
    return run_command(ctx, ("sudo", "--preserve-env=" + ",".join(_uniq(kept + list(names)))))


def _offline_fixes(ctx) -> List[str]:
    fixes = ["export HF_HUB_OFFLINE=1"]
    p = _preserve(ctx, "HF_HUB_OFFLINE")
    if p:
        fixes.append(p)
    return fixes


def _secs(x: Optional[float]) -> str:
    if x is None:
        return "the resolver's timeout"
    if x >= 120:
        return f"{x / 60:.0f} min"
    return f"{x:.0f} s"


# ---------------------------------------------------------------------------------------------
# Fixes per classification


def _class_fixes(ctx, r: np.ProbeResult) -> Tuple[List[str], List[str]]:
    """(fixes, extra detail sentences) specific to the failure class."""
    launch, env = ctx.launch, ctx.launch.env
    fixes: List[str] = []
    notes: List[str] = []
    c = r.classification
    if c == np.TLS_VERIFY:
        inv = getattr(launch, "invoking_env", {}) or {}
        lost = [v for v in _CA_VARS if inv.get(v) and not env.get(v)]
        if r.reason == "ca-missing":
            var = next((v for v in _CA_VARS if env.get(v)), "SSL_CERT_FILE")
            fixes += [quote("ls", "-l", env.get(var, "")), f"export {var}=/path/to/corporate-ca.pem"]
        elif lost:
            notes.append(", ".join(f"{v}={inv[v]}" for v in lost) + " is set in your shell but not in the launch "
                         f"environment ({launch.how} drops it)")
            fixes.append(_preserve(ctx, *lost) or run_command(ctx, ("sudo", "-E")))
        else:
            if r.reason == "expired":
                notes.append("the certificate has expired, or this machine's clock is wrong")
                fixes.append("date -u")
            elif r.reason == "hostname-mismatch":
                notes.append("the certificate is issued for another name than the one in the URL")
                if env.get("HF_ENDPOINT") and r.endpoint.kind == np.HUB:
                    fixes.append("unset HF_ENDPOINT")
            else:
                notes.append("a TLS-intercepting proxy or firewall presents its own certificate: trust its CA")
            fixes.append("export SSL_CERT_FILE=/path/to/corporate-ca.pem")
            if r.endpoint.kind == np.HUB:
                fixes.append("export REQUESTS_CA_BUNDLE=/path/to/corporate-ca.pem  # huggingface_hub < 1.0 (requests)")
            p = _preserve(ctx, "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE") if r.endpoint.kind == np.HUB else \
                _preserve(ctx, "SSL_CERT_FILE")
            if p:
                fixes.append(p)
    elif c == np.PROXY:
        set_vars = [v for v in _PROXY_VARS if env.get(v)]
        proxy = r.via_proxy or r.endpoint.display
        hostport = proxy.split("@")[-1].split("://")[-1].rstrip("/")
        if r.reason == "auth-required":
            var = set_vars[0] if set_vars else "HTTPS_PROXY"
            fixes.append(f"export {var}=http://USER:PASSWORD@{hostport}")
        if set_vars:
            fixes.append("unset " + " ".join(set_vars) + "  # if the Hub is reachable without the proxy")
        if r.endpoint.kind != np.PROXY_KIND:
            fixes.append(f"export NO_PROXY={r.endpoint.host}  # bypass the proxy for this host only")
    elif c == np.NOT_A_HUB:
        notes.append("a captive portal or an intercepting proxy answered instead of the Hub "
                     "(huggingface_hub raises FileMetadataError)")
        if env.get("HF_ENDPOINT"):
            notes.append(f"HF_ENDPOINT={env['HF_ENDPOINT']} in the launch environment")
            fixes.append("unset HF_ENDPOINT")
    elif c in (np.DNS, np.REFUSED) + _TIMEOUT_CLASSES and env.get("HF_ENDPOINT") and r.endpoint.kind == np.HUB:
        notes.append(f"HF_ENDPOINT={env['HF_ENDPOINT']} in the launch environment")
    return fixes, notes


# ---------------------------------------------------------------------------------------------
# Findings


def _data(r: np.ProbeResult, **extra) -> Dict:
    d = {"host": r.host, "url": r.endpoint.display, "kind": r.endpoint.kind, "classification": r.classification,
         "stage": r.stage, "reason": r.reason, "elapsed_ms": round(r.elapsed * 1000, 1), "via_proxy": r.via_proxy,
         "status": r.status, "ca_source": r.ca_source}
    d.update(extra)
    return d


def _ok_finding(r: np.ProbeResult) -> Finding:
    what = {np.HUB: "Hub", np.TORCHHUB: "torch hub download host", np.PROXY_KIND: "proxy"}[r.endpoint.kind]
    name = r.endpoint.display if r.endpoint.kind == np.PROXY_KIND else r.host
    detail = r.detail
    src = r.ca_source.split("=", 1)[0]
    if r.endpoint.kind == np.HUB and src in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        detail += f"; verified with {src}, which huggingface_hub >= 1.0 ignores (it reads SSL_CERT_FILE)"
    return Finding(id="network.ok", group=GROUP, status=OK, title=f"{what} {name} reachable ({r.elapsed * 1000:.0f} ms)",
                   detail=detail, data=_data(r))


def _hub_finding(ctx, r: np.ProbeResult, hub: Sequence) -> Finding:
    env = ctx.launch.env
    falls_back = hub_falls_back(r)
    missing = [s for s in hub if s.present is False]
    cached = [s for s in hub if s.present is True]
    unknown = [s for s in hub if s.present is None]
    blocked_states = missing if falls_back else missing + cached
    blocked = _exps(blocked_states)
    wait = hub_wait_cached(r, env)
    fail_time = hub_time_to_failure(r, env)
    parts = [r.detail]
    if blocked_states:
        why = "not cached" if falls_back else "cached or not: huggingface_hub does not fall back to the cache on proxy errors"
        if falls_back and missing:
            per_load = {_label(s): None if fail_time is None else fail_time * _tries(s) for s in missing}
            times = ", ".join(f"{_secs(v)} for {k}" for k, v in per_load.items())
            parts.append(f"needed and {why}: {', '.join(_label(s) for s in missing)}; each load fails with "
                         f"LocalEntryNotFoundError after {times}")
        else:
            parts.append(f"every hub load fails, {why}: {', '.join(_label(s) for s in blocked_states)}")
        parts.append(f"blocked: {', '.join(blocked)}")
    lost: Dict[str, float] = {}
    if falls_back and cached:
        for s in cached:
            for e in s.experiments:
                lost[e] = lost.get(e, 0.0) + (wait or 0.0) * _files(s)
        if wait:
            parts.append(f"cached loads wait {_secs(wait)} per file (HF_HUB_ETAG_TIMEOUT) before using the cache: "
                         + ", ".join(f"{e} {v:.0f} s" for e, v in lost.items()))
        elif wait is None:
            parts.append("cached loads wait for the resolver's timeout before using the cache: "
                         + ", ".join(lost))
        else:
            parts.append("cached loads fail fast and use the cache: " + ", ".join(lost))
    if unknown:
        parts.append(f"cannot tell whether these are cached in {ctx.launch.hf_cache}: "
                     f"{', '.join(_label(s) for s in unknown)} ({', '.join(_exps(unknown))} fail if they are not)")
    fixes, notes = _class_fixes(ctx, r)
    parts += notes
    if missing:  # fetch the files elsewhere, then load them offline
        fixes.append(prefetch_fix(ctx))
    if missing or cached:
        fixes += _offline_fixes(ctx)
    status = FAIL if blocked else WARN
    host = r.host
    if blocked:
        title = f"Hub {host} unreachable ({r.classification}): {len(blocked)} experiment(s) blocked"
    elif wait:
        title = f"Hub {host} unreachable ({r.classification}): every hub load waits {_secs(wait)} per file"
    else:
        title = f"Hub {host} unreachable ({r.classification}): loads rely on the cache"
    affected = _uniq(list(blocked) + list(lost) + list(_exps(unknown)))
    return Finding(id=f"network.{r.classification}", group=GROUP, status=status, title=title,
                   detail="; ".join(parts), fix=tuple(_uniq(fixes)), experiments=blocked if blocked else affected,
                   data=_data(r, falls_back=falls_back, blocked=list(blocked), seconds_lost=lost,
                              seconds_to_failure_per_file=fail_time, etag_timeout=etag_timeout(env)))


def _torch_finding(ctx, r: np.ProbeResult, torch_states: Sequence) -> Finding:
    missing = [s for s in torch_states if s.present is False]
    unknown = [s for s in torch_states if s.present is None]
    blocked = _exps(missing)
    parts = [r.detail]
    if r.classification in _TIMEOUT_CLASSES or r.reason == "timeout":
        consequence = "torch.hub's download has no timeout: the load hangs and leaves a *.partial file"
    else:
        consequence = "the download fails at once (URLError)"
    if missing:
        parts.append(f"not cached in {ctx.launch.torch_hub}/checkpoints: {', '.join(_label(s) for s in missing)}; "
                     f"{consequence}; blocked: {', '.join(blocked)}")
    if unknown:
        parts.append(f"cannot tell whether these are cached: {', '.join(_label(s) for s in unknown)} "
                     f"({', '.join(_exps(unknown))} {consequence.split(':')[0]} if they are not)")
    fixes, notes = _class_fixes(ctx, r)
    parts += notes
    fixes.append(prefetch_fix(ctx))
    title = f"torch hub {r.host} unreachable ({r.classification})" + (
        f": {len(blocked)} experiment(s) blocked" if blocked else "")
    return Finding(id=f"network.{r.classification}", group=GROUP, status=FAIL if blocked else WARN, title=title,
                   detail="; ".join(parts), fix=tuple(_uniq(fixes)), experiments=blocked or _exps(unknown),
                   data=_data(r, blocked=list(blocked)))


def _offline_finding(ctx, hub: Sequence) -> Finding:
    env = ctx.launch.env
    var = "HF_HUB_OFFLINE" if env.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    host = np.Endpoint((env.get("HF_ENDPOINT") or np.DEFAULT_HUB).rstrip("/"), np.HUB).hostport
    return Finding(id="network.offline", group=GROUP, status=OK,
                   title=f"Hub not contacted: {var}={env.get(var)} in the launch environment",
                   detail=f"{host} is not contacted; {len(hub)} hub need(s) load from {ctx.launch.hf_cache} only",
                   experiments=(), data={"host": host, "variable": var, "needs": [s.need.key for s in hub]})


def check_network(ctx) -> List[Finding]:
    """Probe the endpoints the launch context will contact and weigh failures against the needs."""
    launch = ctx.launch
    env = dict(launch.env)
    timeout = float(getattr(ctx.options, "timeout", None) or np.DEFAULT_TIMEOUT)
    states = list(ctx.need_states().values())
    hub = [s for s in states if s.need.kind in HUB_KINDS]
    torch_missing = [s for s in states if s.need.kind in TORCH_KINDS and s.present is not True]
    findings: List[Finding] = []
    if hub and launch.offline:
        findings.append(_offline_finding(ctx, hub))
        hub = []
    endpoints = np.endpoints_for(env, bool(hub), bool(torch_missing), hub_probe_path=_hub_probe_path(hub))
    if not endpoints:
        return findings
    results = np.probe_all(endpoints, env, timeout)
    for r in results:
        kind = r.endpoint.kind
        if r.ok:
            findings.append(_ok_finding(r))
        elif kind == np.HUB:
            findings.append(_hub_finding(ctx, r, hub))
        elif kind == np.TORCHHUB:
            findings.append(_torch_finding(ctx, r, torch_missing))
        elif not any(x.via_proxy == r.endpoint.display and x.classification == np.PROXY for x in results):
            fixes, _ = _class_fixes(ctx, r)
            findings.append(Finding(id="network.proxy", group=GROUP, status=WARN,
                                    title=f"proxy {r.endpoint.display} unreachable", detail=r.detail,
                                    fix=tuple(fixes), data=_data(r)))
    return findings
