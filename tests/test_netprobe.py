"""core.netprobe against real misbehaving peers on 127.0.0.1: every class, the deadline, masking."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from core import netprobe as np
from tests.support import netservers as ns

TIMEOUT = 1.0
BUDGET = TIMEOUT + 0.5
P = np.DEFAULT_HUB_PROBE_PATH
SECRET = "s3cr3t-pw"

pytestmark = pytest.mark.skipif(not ns.openssl_available(), reason="the openssl command is needed to make test certificates")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ns.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def world(pki):
    """Every peer at once: name -> (endpoint, env, expected classification, expected reason)."""
    tls = ns.server_context
    ca = {"SSL_CERT_FILE": pki.ca}
    with contextlib.ExitStack() as st:
        s = lambda cm: st.enter_context(cm)  # noqa: E731
        hub = s(ns.MiniHub())
        hub_tls = s(ns.MiniHub(tls=tls(pki.good)))
        hub_tls2 = s(ns.MiniHub(tls=tls(pki.good)))
        hub_tls3 = s(ns.MiniHub(tls=tls(pki.good)))
        hub_tls4 = s(ns.MiniHub(tls=tls(pki.good)))
        hub_tls5 = s(ns.MiniHub(tls=tls(pki.good)))
        dead = [s(ns.RefusedPort()) for _ in range(3)]
        p407 = s(ns.Proxy("407", userinfo=f"alice:{SECRET}"))
        p502 = s(ns.Proxy("502"))
        phang = s(ns.Proxy("hang"))
        ptun = s(ns.Proxy("tunnel", userinfo=f"bob:{SECRET}"))
        w = {
            "ok": (np.Endpoint(hub.url, "hub", P), {}, "ok", ""),
            "ok-tls": (np.Endpoint(hub_tls.url, "hub", P), ca, "ok", ""),
            "ok-requests-bundle": (np.Endpoint(hub_tls2.url, "hub", P), {"REQUESTS_CA_BUNDLE": pki.ca}, "ok", ""),
            "entry-not-found": (np.Endpoint(hub.url.replace("127.0.0.1", "localhost"), "hub", "/org/x/resolve/main/nope.bin"),
                                {}, "ok", ""),
            "refused": (np.Endpoint(dead[0].url, "hub", P), {}, "refused", "refused"),
            "black-hole-http": (np.Endpoint(s(ns.BlackHole("http")).url, "hub", P), {}, "read-timeout", "timeout"),
            "black-hole-https": (np.Endpoint(s(ns.BlackHole("https")).url, "hub", P), ca, "tls-timeout", "timeout"),
            "syn-dropped": (np.Endpoint(s(ns.SynDrop("https")).url, "hub", P), ca, "connect-timeout", "timeout"),
            "self-signed": (np.Endpoint(s(ns.MiniHub(tls=tls(pki.selfsigned))).url, "hub", P), ca, "tls-verify", "self-signed"),
            "expired": (np.Endpoint(s(ns.MiniHub(tls=tls(pki.expired))).url, "hub", P), ca, "tls-verify", "expired"),
            "wrong-host": (np.Endpoint(s(ns.MiniHub(tls=tls(pki.wronghost))).url, "hub", P), ca, "tls-verify",
                           "hostname-mismatch"),
            "unknown-ca": (np.Endpoint(hub_tls3.url, "hub", P), {}, "tls-verify", "unknown-ca"),
            "ca-missing": (np.Endpoint(hub_tls4.url, "hub", P), {"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "tls-verify",
                           "ca-missing"),
            "portal": (np.Endpoint(s(ns.MiniHub(mode="portal")).url, "hub", P), {}, "not-a-hub", "no-repo-commit"),
            "no-etag": (np.Endpoint(s(ns.MiniHub(mode="no-etag")).url, "hub", P), {}, "not-a-hub", "no-etag"),
            "not-http": (np.Endpoint(s(ns.MiniHub(mode="garbage")).url, "hub", P), {}, "not-a-hub", "not-http"),
            "status-503": (np.Endpoint(s(ns.MiniHub(mode="status", status=503)).url, "hub", P), {}, "http-status", "503"),
            "status-403": (np.Endpoint(s(ns.MiniHub(mode="status", status=403)).url, "hub", P), {}, "http-status", "403"),
            "dns": (np.Endpoint("https://hub.invalid", "hub", P), {}, "dns", "nxdomain"),
            "dead-proxy": (np.Endpoint("https://hub-a.invalid", "hub", P),
                           {"HTTPS_PROXY": dead[1].url.replace("http://", f"http://carol:{SECRET}@")}, "proxy", "refused"),
            "proxy-407": (np.Endpoint("https://hub-b.invalid", "hub", P), {"HTTPS_PROXY": p407.url}, "proxy", "auth-required"),
            "proxy-502": (np.Endpoint("https://hub-c.invalid", "hub", P), {"https_proxy": p502.url}, "proxy", "connect-rejected"),
            "proxy-hang": (np.Endpoint("https://hub-d.invalid", "hub", P), {"ALL_PROXY": phang.url}, "proxy", "timeout"),
            "proxy-tunnel": (np.Endpoint(hub_tls5.url, "hub", P), {**ca, "HTTPS_PROXY": ptun.url}, "ok", ""),
            "proxy-endpoint-dead": (np.Endpoint(dead[2].url, "proxy"), {}, "proxy", "refused"),
            "torchhub-ok": (np.Endpoint(s(ns.MiniHub(mode="portal")).url, "torchhub", np.DEFAULT_TORCH_PROBE_PATH), {}, "ok", ""),
            "torchhub-503": (np.Endpoint(s(ns.MiniHub(mode="status", status=503)).url, "torchhub", "/m.pth"), {},
                             "http-status", "503"),
        }
        yield {"cases": w, "tunnel": ptun, "p407": p407, "hub": hub}


CASES = ["ok", "ok-tls", "ok-requests-bundle", "entry-not-found", "refused", "black-hole-http", "black-hole-https",
         "syn-dropped", "self-signed", "expired", "wrong-host", "unknown-ca", "ca-missing", "portal", "no-etag",
         "not-http", "status-503", "status-403", "dns", "dead-proxy", "proxy-407", "proxy-502", "proxy-hang",
         "proxy-tunnel", "proxy-endpoint-dead", "torchhub-ok", "torchhub-503"]


@pytest.mark.parametrize("name", CASES)
def test_each_peer_is_classified(world, name):
    ep, env, cls, reason = world["cases"][name]
    t0 = time.monotonic()
    r = np.probe(ep, env, timeout=TIMEOUT)
    took = time.monotonic() - t0
    assert (r.classification, r.reason) == (cls, reason), r.detail
    assert r.classification in np.CLASSES
    assert took < BUDGET
    assert ep.host in r.detail and ("stage " in r.detail or r.ok)
    assert r.endpoint == ep
    if cls.endswith("timeout") or reason == "timeout":
        assert r.elapsed >= TIMEOUT * 0.9  # it really waited for the stage timeout
    else:
        assert took < 0.5  # every other failure is quick


def test_all_peers_concurrently_finish_within_one_timeout(world):
    cases = world["cases"]
    endpoints = [cases[n][0] for n in CASES]
    envs = {n: cases[n][1] for n in CASES}
    # probe_all takes one env: run the cases sharing the empty env together, and time that call
    common = [n for n in CASES if not envs[n]]
    t0 = time.monotonic()
    results = np.probe_all([cases[n][0] for n in common], {}, timeout=TIMEOUT)
    took = time.monotonic() - t0
    assert took <= BUDGET, took
    assert [(r.classification, r.reason) for r in results] == [cases[n][2:] for n in common]
    # and every case at once, each with its own env, in parallel calls sharing the same budget
    out = {}
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, np.probe(cases[n][0], envs[n], TIMEOUT)))
               for n in CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took_all = time.monotonic() - t0
    assert took_all <= BUDGET, took_all
    assert {n: (out[n].classification, out[n].reason) for n in CASES} == {n: cases[n][2:] for n in CASES}
    assert len(endpoints) == len(CASES)


def test_deadline_holds_however_many_endpoints():
    with contextlib.ExitStack() as st:
        holes = [st.enter_context(ns.BlackHole("http")) for _ in range(12)]
        eps = [np.Endpoint(h.url, "hub", P) for h in holes] + [np.Endpoint(h.url, "torchhub", "/x.pth") for h in holes]
        t0 = time.monotonic()
        results = np.probe_all(eps, {}, timeout=TIMEOUT)
        took = time.monotonic() - t0
    assert took <= BUDGET, took
    assert len(results) == 24 and {r.classification for r in results} == {"read-timeout"}


def test_stages_share_one_deadline(pki):
    """A slow resolver eats into the budget of the later stages: the total stays bounded."""
    with ns.BlackHole("https") as hole:
        real = socket.getaddrinfo

        def slow(*a, **k):
            time.sleep(0.6)
            return real(*a, **k)

        socket.getaddrinfo = slow
        try:
            t0 = time.monotonic()
            r = np.probe(np.Endpoint(hole.url, "hub", P), {"SSL_CERT_FILE": pki.ca}, timeout=TIMEOUT)
            took = time.monotonic() - t0
        finally:
            socket.getaddrinfo = real
    assert r.classification == "tls-timeout"
    assert took <= BUDGET
    assert dict(r.stages)["dns"] >= 0.5


def test_hung_resolver_is_reported_by_the_deadline(monkeypatch):
    release = threading.Event()

    def hung(*a, **k):
        release.wait(5)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    t0 = time.monotonic()
    r = np.probe(np.Endpoint("https://slow-resolver.invalid", "hub", P), {}, timeout=0.5)
    took = time.monotonic() - t0
    release.set()
    assert (r.classification, r.reason, r.stage) == ("dns", "timeout", "dns")
    assert 0.5 <= took <= 0.5 + 0.5
    assert "resolver did not answer" in r.detail


def test_invalid_tld_fails_fast_and_locally():
    t0 = time.monotonic()
    r = np.probe(np.Endpoint("https://huggingface.invalid", "hub", P), {}, timeout=TIMEOUT)
    assert r.classification == "dns" and time.monotonic() - t0 < 0.5
    assert "huggingface.invalid" in r.detail


def test_proxy_credentials_are_sent_but_never_shown(world):
    cases = world["cases"]
    for name in ("dead-proxy", "proxy-407", "proxy-tunnel"):
        ep, env, *_ = cases[name]
        r = np.probe(ep, env, timeout=TIMEOUT)
        shown = " ".join([r.detail, r.via_proxy, repr(r), repr(r.endpoint)])
        assert SECRET not in shown
        assert "***@" in r.via_proxy
    tunnel: ns.Proxy = world["tunnel"]
    line, auth = tunnel.requests[-1]
    assert line.startswith("CONNECT 127.0.0.1:") and auth.startswith("Basic ")
    import base64

    assert base64.b64decode(auth.split()[1]).decode() == f"bob:{SECRET}"
    # a proxy endpoint's own repr is masked too
    ep = np.Endpoint(f"http://u:{SECRET}@127.0.0.1:3128", "proxy")
    assert SECRET not in repr(ep) and ep.display == "http://***@127.0.0.1:3128"


def test_each_distinct_host_is_probed_once(world):
    hub: ns.MiniHub = world["hub"]
    before = len(hub.requests)
    a = np.Endpoint(hub.url, "hub", "/timm/resnet18.a1_in1k/resolve/main/config.json")
    b = np.Endpoint(hub.url, "hub", "/org/other/resolve/main/model.safetensors")
    ra, rb = np.probe_all([a, b, a], {}, timeout=TIMEOUT)[:2]
    assert len(hub.requests) == before + 1
    assert ra.ok and rb.ok and rb.endpoint == b and ra.endpoint == a


def test_no_proxy_bypasses_the_proxy(world):
    ep, env, *_ = world["cases"]["ok-tls"]
    with ns.RefusedPort() as dead:
        r = np.probe(ep, {**env, "HTTPS_PROXY": dead.url, "NO_PROXY": "example.com,127.0.0.0/8"}, timeout=TIMEOUT)
        assert r.ok and r.via_proxy == ""
        r = np.probe(ep, {**env, "HTTPS_PROXY": dead.url, "NO_PROXY": "example.com"}, timeout=TIMEOUT)
        assert r.classification == "proxy"


# --- endpoints and proxy selection (no network)


def test_endpoints_for_hub_and_torch_hub():
    assert np.endpoints_for({}, False, False) == []
    eps = np.endpoints_for({}, True, True)
    assert [(e.url, e.kind, e.probe_path) for e in eps] == [
        ("https://huggingface.co", "hub", "/timm/resnet18.a1_in1k/resolve/main/config.json"),
        ("https://download.pytorch.org", "torchhub", "/models/resnet18-f37072fd.pth")]
    eps = np.endpoints_for({"HF_ENDPOINT": "https://mirror.example/hf/"}, True, False,
                           hub_probe_path="org/m/resolve/main/model.safetensors")
    assert eps == [np.Endpoint("https://mirror.example/hf", "hub", "/org/m/resolve/main/model.safetensors")]
    assert eps[0].target == "https://mirror.example/hf/org/m/resolve/main/model.safetensors"
    assert eps[0].hostport == "mirror.example:443"


def test_endpoints_include_each_proxy_once():
    env = {"HTTPS_PROXY": "http://u:p@proxy.corp:3128"}
    eps = np.endpoints_for(env, True, True)
    assert [e.kind for e in eps] == ["hub", "torchhub", "proxy"]
    assert eps[2].url == "http://u:p@proxy.corp:3128" and eps[2].display == "http://***@proxy.corp:3128"


@pytest.mark.parametrize("env,kind,url,expected", [
    ({"HTTPS_PROXY": "http://a:1"}, "hub", "https://h.example", "http://a:1"),
    ({"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"}, "hub", "https://h.example", "http://b:2"),
    ({"HTTPS_PROXY": "http://a:1", "https_proxy": ""}, "hub", "https://h.example", ""),
    ({"HTTP_PROXY": "http://a:1"}, "hub", "https://h.example", ""),  # http_proxy is for http:// URLs
    ({"HTTP_PROXY": "http://a:1"}, "hub", "http://h.example", "http://a:1"),
    ({"ALL_PROXY": "http://a:1"}, "hub", "https://h.example", "http://a:1"),
    ({"ALL_PROXY": "http://a:1"}, "torchhub", "https://h.example", ""),  # urllib ignores all_proxy
    ({"HTTPS_PROXY": "a:1"}, "hub", "https://h.example", "http://a:1"),
    ({"HTTPS_PROXY": "http://a:1", "NO_PROXY": "*"}, "hub", "https://h.example", ""),
    ({"HTTPS_PROXY": "http://a:1", "no_proxy": ".example"}, "hub", "https://h.example", ""),
    ({"HTTPS_PROXY": "http://a:1", "NO_PROXY": "h.example:443"}, "hub", "https://h.example", ""),
    ({"HTTPS_PROXY": "http://a:1", "NO_PROXY": "h.example:8443"}, "hub", "https://h.example", "http://a:1"),
    ({"HTTPS_PROXY": "http://a:1", "NO_PROXY": "10.0.0.0/8"}, "hub", "https://10.1.2.3", ""),
    ({"HTTPS_PROXY": "http://a:1", "NO_PROXY": "xh.example"}, "hub", "https://h.example", "http://a:1"),
])
def test_proxy_selection(env, kind, url, expected):
    assert np.proxy_for(np.Endpoint(url, kind, "/"), env) == expected


def test_ca_settings_come_from_the_launch_env_only(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", "/doctor/own/ca.pem")  # ours must not leak into the launch's view
    cafile, capath, source = np.ca_settings({})
    assert source.startswith("system store") and cafile != "/doctor/own/ca.pem"
    assert np.ca_settings({"SSL_CERT_DIR": str(tmp_path)})[1:] == (str(tmp_path), f"SSL_CERT_DIR={tmp_path}")
    assert np.ca_settings({"CURL_CA_BUNDLE": "/x.pem", "SSL_CERT_DIR": "/d"})[0] == "/x.pem"


def test_plain_http_endpoint_goes_through_a_forward_proxy(world):
    hub: ns.MiniHub = world["hub"]
    with ns.Proxy("407", userinfo=f"dave:{SECRET}") as p:
        r = np.probe(np.Endpoint(hub.url, "hub", P), {"HTTP_PROXY": p.url, "HTTPS_PROXY": "http://127.0.0.1:1"},
                     timeout=TIMEOUT)
        line, auth = p.requests[-1]
    assert (r.classification, r.reason, r.stage, r.status) == ("proxy", "auth-required", "http", 407)
    assert line == f"HEAD {hub.url}{P} HTTP/1.1" and auth.startswith("Basic ")  # absolute-form request
    assert SECRET not in r.detail and "(HTTP_PROXY)" in r.detail
