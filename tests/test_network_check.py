"""checks.network.check_network weighed against need states, with loopback peers, and the weighing
rules (cache fallback or not, time lost) checked against the real huggingface_hub client."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import pytest

from core import netprobe as np
from checks.network import (BACKOFF, ETAG_RETRY_TIMEOUT, MAX_RETRIES, check_network, etag_timeout, hub_falls_back,
                            hub_time_to_failure, hub_wait_cached)
from core.model import FAIL, OK, WARN, LaunchContext, Need
from tests.support import netservers as ns

TIMEOUT = 1.0
SECRET = "pa55-w0rd-x"

pytestmark = pytest.mark.skipif(not ns.openssl_available(), reason="the openssl command is needed to make test certificates")


# --- a stand-in for core.context.DoctorContext with the attributes check_network relies on


@dataclass(frozen=True)
class State:
    need: Need
    present: Optional[bool]
    experiments: Tuple[str, ...]
    resolved: object = None


@dataclass(frozen=True)
class Options:
    timeout: float = TIMEOUT
    settings_file: Optional[str] = "settings/batch.json"


@dataclass
class Ctx:
    launch: LaunchContext
    states: Dict[str, State]
    options: Options = field(default_factory=Options)

    def need_states(self):
        return self.states


def launch(env: Mapping[str, str], how: str = "current", home: str = "/home/u",
           invoking_env: Optional[Mapping[str, str]] = None) -> LaunchContext:
    return LaunchContext(how=how, source="simulated", env=dict(env), user="u", uid=os.getuid(), gid=os.getgid(),
                         home=home, cwd=home, invoking_user="u", invoking_uid=os.getuid(), invoking_home=home,
                         invoking_env=dict(invoking_env or {}))


def timm(model: str) -> Need:
    return Need("timm", {"timm": model}, "Person_reID", "/repos/Person_reID")


def tv(model: str) -> Need:
    return Need("torchvision", {"torchvision": model, "pretrained": True}, "Person_reID", "/repos/Person_reID")


def hf(repo: str, *files: str) -> Need:
    return Need("hf", {"hf": repo, "files": list(files)}, "VulBERTa", "/repos/VulBERTa")


def ctx(env, *states: State, how="current", timeout=TIMEOUT, invoking_env=None) -> Ctx:
    return Ctx(launch(env, how, invoking_env=invoking_env), {s.need.key: s for s in states}, Options(timeout))


def net(findings, status=None):
    return [f for f in findings if f.group == "network" and (status is None or f.status == status)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ns.make_pki(tmp_path_factory.mktemp("pki"))


# --- weighing


def test_unreachable_hub_blocks_experiments_whose_files_are_not_cached():
    with ns.RefusedPort() as dead:
        c = ctx({"HF_ENDPOINT": dead.url},
                State(timm("hrnet_w18"), False, ("Person_reID_hrnet18_001", "Person_reID_hrnet18_012_parallel")),
                State(hf("org/vulberta", "config.json"), True, ("VulBERTa_mlp_003",)))
        findings = check_network(c)
    [f] = net(findings)
    assert (f.id, f.status) == ("network.refused", FAIL)
    assert f.experiments == ("Person_reID_hrnet18_001", "Person_reID_hrnet18_012_parallel")
    assert f.blocks
    assert f"127.0.0.1:{dead.port}" in f.detail and "stage connect" in f.detail
    assert "LocalEntryNotFoundError" in f.detail and "46 s" in f.detail  # 2 files x 23 s of backoff
    assert any(x.startswith("mutation-doctor prefetch -ec settings/batch.json") for x in f.fix)
    assert "export HF_HUB_OFFLINE=1" in f.fix
    assert f.data["blocked"] == list(f.experiments) and f.data["falls_back"] is True


def test_unreachable_hub_with_everything_cached_warns_with_the_time_lost():
    with ns.BlackHole("http") as hole:
        env = {"HF_ENDPOINT": hole.url}
        c = ctx(env, State(timm("hrnet_w18"), True, ("A", "B")), State(hf("org/v", "a.json", "b.bin"), True, ("B",)))
        t0 = time.monotonic()
        [f] = net(check_network(c))
        took = time.monotonic() - t0
        assert took <= TIMEOUT + 0.5
        assert (f.id, f.status) == ("network.read-timeout", WARN)
        assert not f.blocks and f.experiments == ("A", "B")
        assert "waits 10 s per file" in f.title
        assert f.data["seconds_lost"] == {"A": 10.0, "B": 30.0}  # hrnet 1 file + 2 hf files
        assert f.fix == ("export HF_HUB_OFFLINE=1",)
        [f] = net(check_network(ctx({**env, "HF_HUB_ETAG_TIMEOUT": "3"}, State(timm("hrnet_w18"), True, ("A",)))))
        assert "waits 3 s per file" in f.title and f.data["seconds_lost"] == {"A": 3.0}


@pytest.mark.parametrize("how,expected", [
    ("sudo", "sudo --preserve-env=HF_HUB_OFFLINE "),
    ("sudo (this process)", "sudo --preserve-env=HF_HUB_OFFLINE "),
    ("sudo --preserve-env=HF_HOME", "sudo --preserve-env=HF_HOME,HF_HUB_OFFLINE "),
    ("sudo -E", None),
    ("current", None),
])
def test_offline_fix_follows_the_launch(how, expected):
    with ns.RefusedPort() as dead:
        [f] = net(check_network(ctx({"HF_ENDPOINT": dead.url}, State(timm("hrnet_w18"), True, ("A",)), how=how)))
    assert f.status == WARN and f.fix[0] == "export HF_HUB_OFFLINE=1"
    assert len(f.fix) == (2 if expected else 1)
    if expected:  # the batch itself, launched so that the variable survives sudo
        assert f.fix[1].startswith(expected) and f.fix[1].endswith("mutation-run --require-preflight -ec settings/batch.json")


def test_offline_launch_does_not_contact_the_hub():
    with ns.MiniHub() as hub:
        findings = check_network(ctx({"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"},
                                     State(timm("hrnet_w18"), False, ("A",))))
        assert hub.requests == []
    [f] = net(findings)
    assert (f.id, f.status) == ("network.offline", OK)
    assert "not contacted" in f.detail and f"127.0.0.1:{hub.port}" in f.detail


def test_reachable_hub_is_one_ok_finding_with_elapsed_ms():
    with ns.MiniHub() as hub:
        [f] = net(check_network(ctx({"HF_ENDPOINT": hub.url}, State(timm("hrnet_w18"), False, ("A",)))))
        assert hub.requests == [("HEAD", np.DEFAULT_HUB_PROBE_PATH)]
    assert (f.id, f.status) == ("network.ok", OK)
    assert f"127.0.0.1:{hub.port}" in f.title and " ms)" in f.title and f.data["elapsed_ms"] >= 0


def test_hub_probe_uses_a_needed_file():
    with ns.MiniHub() as hub:
        [f] = net(check_network(ctx({"HF_ENDPOINT": hub.url}, State(hf("org/vulberta", "pytorch_model.bin"), False, ("A",)))))
        assert hub.requests == [("HEAD", "/org/vulberta/resolve/main/pytorch_model.bin")]
    assert f.status == OK  # 404 EntryNotFound with X-Repo-Commit: a Hub answered


def test_nothing_to_contact_means_no_probe_and_no_finding():
    assert check_network(ctx({}, State(tv("densenet121"), True, ("A",)))) == []
    assert check_network(ctx({})) == []


def test_uncached_torchvision_weights_through_a_dead_proxy_are_blocked():
    with ns.RefusedPort(userinfo=f"bob:{SECRET}") as dead:
        findings = check_network(ctx({"HTTPS_PROXY": dead.url},
                                     State(tv("densenet121"), False, ("D1",)), State(tv("resnet50"), True, ("P1",))))
    [f] = net(findings)  # the proxy endpoint's own failure is folded into this one
    assert (f.id, f.status, f.experiments) == ("network.proxy", FAIL, ("D1",))
    assert "download.pytorch.org:443" in f.detail and "fails at once" in f.detail
    assert any(x.startswith("mutation-doctor prefetch") for x in f.fix)
    assert SECRET not in json.dumps([f.title, f.detail, f.fix, f.data], default=str)


def test_black_holed_torch_hub_says_the_download_hangs(monkeypatch):
    with ns.BlackHole("http") as hole:
        monkeypatch.setattr(np, "TORCH_HUB_HOST", hole.url)
        [f] = net(check_network(ctx({}, State(tv("densenet121"), False, ("D1",)))))
    assert (f.id, f.status) == ("network.read-timeout", FAIL)
    assert "no timeout" in f.detail and "*.partial" in f.detail


def test_proxy_rejecting_connect_blocks_even_cached_loads():
    with ns.Proxy("407", userinfo=f"alice:{SECRET}") as p:
        findings = check_network(ctx({"HTTPS_PROXY": p.url, "HF_ENDPOINT": "https://hub.invalid"},
                                     State(timm("hrnet_w18"), True, ("A", "B"))))
    [f] = net(findings, FAIL)
    assert (f.id, f.experiments) == ("network.proxy", ("A", "B"))
    assert "does not fall back" in f.detail and "(HTTPS_PROXY)" in f.detail
    assert f"export HTTPS_PROXY=http://USER:PASSWORD@127.0.0.1:{p.port}" in f.fix
    assert "export HF_HUB_OFFLINE=1" in f.fix
    assert SECRET not in json.dumps([x.__dict__ for x in findings], default=str)
    # the proxy itself accepts connections: it is reported reachable
    assert [x.id for x in net(findings, OK)] == ["network.ok"]


def test_ca_dropped_by_sudo_is_named_in_the_fix(pki):
    with ns.MiniHub(tls=ns.server_context(pki.good)) as hub:
        c = ctx({"HF_ENDPOINT": hub.url}, State(timm("hrnet_w18"), False, ("A",)), how="sudo",
                invoking_env={"SSL_CERT_FILE": pki.ca})
        [f] = net(check_network(c))
        assert (f.id, f.status, f.data["reason"]) == ("network.tls-verify", FAIL, "unknown-ca")
        assert f"SSL_CERT_FILE={pki.ca} is set in your shell but not in the launch environment" in f.detail
        assert any(x.startswith("sudo --preserve-env=SSL_CERT_FILE /") and "mutation-run" in x for x in f.fix)
        # same machine, the CA in the launch env: reachable
        [ok] = net(check_network(ctx({"HF_ENDPOINT": hub.url, "SSL_CERT_FILE": pki.ca},
                                     State(timm("hrnet_w18"), False, ("A",)))))
        assert ok.id == "network.ok"


def test_self_signed_gives_the_corporate_ca_fix(pki):
    with ns.MiniHub(tls=ns.server_context(pki.selfsigned)) as hub:
        [f] = net(check_network(ctx({"HF_ENDPOINT": hub.url, "SSL_CERT_FILE": pki.ca},
                                    State(timm("hrnet_w18"), True, ("A",)), how="sudo")))
    assert (f.id, f.status, f.data["reason"]) == ("network.tls-verify", WARN, "self-signed")
    assert "self-signed" in f.detail and "stage tls" in f.detail
    assert "export SSL_CERT_FILE=/path/to/corporate-ca.pem" in f.fix
    assert any(x.startswith("sudo --preserve-env=SSL_CERT_FILE,REQUESTS_CA_BUNDLE /") for x in f.fix)


def test_captive_portal_and_unknown_presence():
    with ns.MiniHub(mode="portal") as portal:
        [f] = net(check_network(ctx({"HF_ENDPOINT": portal.url}, State(timm("hrnet_w18"), None, ("A",)))))
    assert (f.id, f.status) == ("network.not-a-hub", WARN)
    assert "cannot tell whether" in f.detail and "captive portal" in f.detail
    assert f.fix[0] == "unset HF_ENDPOINT"


def test_whole_check_is_bounded_however_large_the_plan():
    with ns.BlackHole("https") as hole:
        states = [State(timm(f"model_{i}"), i % 2 == 0, tuple(f"e{i}_{j}" for j in range(3))) for i in range(40)]
        states += [State(tv(f"tv_{i}"), False, (f"t{i}",)) for i in range(40)]
        with ns.RefusedPort() as dead:
            c = ctx({"HF_ENDPOINT": hole.url, "HTTPS_PROXY": dead.url, "NO_PROXY": "127.0.0.1"}, *states)
            t0 = time.monotonic()
            findings = check_network(c)
            took = time.monotonic() - t0
    assert took <= TIMEOUT + 0.5, took
    hub = next(f for f in findings if f.id == "network.tls-timeout")
    assert hub.status == FAIL and len(hub.experiments) == 60  # the 20 uncached models x 3 experiments
    torch = next(f for f in findings if f.data.get("kind") == "torchhub")
    assert torch.status == FAIL and len(torch.experiments) == 40


# --- the timing model


def test_time_model_matches_the_library_constants():
    import huggingface_hub.constants as hc
    import huggingface_hub.file_download as fd
    import inspect
    from huggingface_hub.utils import _http

    sig = inspect.signature(_http.http_backoff).parameters
    assert (hc.DEFAULT_ETAG_TIMEOUT, fd._ETAG_RETRY_TIMEOUT, sig["max_retries"].default) == (10, ETAG_RETRY_TIMEOUT, MAX_RETRIES)
    waits, w = [], sig["base_wait_time"].default
    for _ in range(MAX_RETRIES):
        waits.append(w)
        w = min(sig["max_wait_time"].default, w * 2)
    assert tuple(waits) == BACKOFF

    def r(cls, reason="", stage="connect", status=None):
        return np.ProbeResult(np.Endpoint("https://h", "hub", "/"), cls, stage, "", 0.0, reason=reason, status=status)

    assert hub_time_to_failure(r("refused", "refused"), {}) == 23
    assert hub_time_to_failure(r("read-timeout", "timeout", "http"), {}) == 10 + 6 * 60 + 23
    assert hub_time_to_failure(r("read-timeout", "timeout", "http"), {"HF_HUB_ETAG_TIMEOUT": "1"}) == 1 + 6 * 60 + 23
    assert hub_time_to_failure(r("not-a-hub", "no-repo-commit", "http"), {}) == 0
    assert hub_time_to_failure(r("http-status", "503", "http", 503), {}) == 23
    assert hub_wait_cached(r("tls-timeout", "timeout", "tls"), {}) == 10
    assert hub_wait_cached(r("dns", "timeout", "dns"), {}) is None
    assert etag_timeout({"HF_HUB_ETAG_TIMEOUT": "0"}) == 10 and etag_timeout({"HF_HUB_ETAG_TIMEOUT": "x"}) == 10


# --- agreement with the real huggingface_hub client (subprocesses, loopback only)

CLIENT = r"""
import json, sys, time
t = time.monotonic()
from huggingface_hub import hf_hub_download
try:
    hf_hub_download(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3], endpoint=sys.argv[4])
    print(json.dumps({"ok": True, "t": time.monotonic() - t}))
except Exception as e:
    chain, x = [], e
    while x is not None and len(chain) < 6:
        chain.append(type(x).__name__)
        x = x.__cause__ or x.__context__
    print(json.dumps({"ok": False, "chain": chain, "t": time.monotonic() - t}))
"""
REPO, FILE = "timm/resnet18.a1_in1k", "config.json"


def real_client(endpoint: str, cache: Path, env: Mapping[str, str]) -> dict:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cache.parent), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "1", **env}
    out = subprocess.run([sys.executable, "-c", CLIENT, REPO, FILE, str(cache), endpoint], env=full,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with ns.MiniHub() as hub:
        assert real_client(hub.url, cache, {})["ok"]
    return cache


AGREEMENT = ["portal", "not-http", "status-503", "status-403", "refused", "unknown-ca", "dead-proxy", "proxy-407",
             "proxy-502", "forward-proxy-407", "black-hole"]


@pytest.mark.parametrize("name", AGREEMENT)
def test_fallback_rule_agrees_with_the_real_client(name, pki, warm_cache):
    """With the file cached, the real client loads it exactly when `hub_falls_back` says so, and
    waits about `hub_wait_cached` seconds first."""
    with contextlib.ExitStack() as st:
        tls_hub = st.enter_context(ns.MiniHub(tls=ns.server_context(pki.good)))
        ca = {"SSL_CERT_FILE": pki.ca}
        if name in ("portal", "status-503", "status-403"):
            mode = {"portal": ("portal", 0), "status-503": ("status", 503), "status-403": ("status", 403)}[name]
            url, env = st.enter_context(ns.MiniHub(mode=mode[0], status=mode[1])).url, {}
        elif name == "not-http":
            url, env = st.enter_context(ns.MiniHub(mode="garbage")).url, {}
        elif name == "refused":
            url, env = st.enter_context(ns.RefusedPort()).url, {}
        elif name == "unknown-ca":
            url, env = tls_hub.url, {}
        elif name == "dead-proxy":
            url, env = tls_hub.url, {**ca, "HTTPS_PROXY": st.enter_context(ns.RefusedPort()).url}
        elif name == "forward-proxy-407":  # http:// Hub through HTTP_PROXY: a 407 answer, not a ProxyError
            url, env = st.enter_context(ns.MiniHub()).url, {"HTTP_PROXY": st.enter_context(ns.Proxy("407")).url}
        elif name == "black-hole":
            url, env = st.enter_context(ns.BlackHole("http")).url, {}
        else:
            url, env = tls_hub.url, {**ca, "HTTPS_PROXY": st.enter_context(ns.Proxy(name.split("-")[1])).url}
        r = np.probe(np.Endpoint(url, "hub", np.DEFAULT_HUB_PROBE_PATH), env, timeout=TIMEOUT)
        real = real_client(url, warm_cache, env)
    assert not r.ok
    assert real["ok"] == hub_falls_back(r), (name, r.classification, r.reason, real)
    wait = hub_wait_cached(r, {"HF_HUB_ETAG_TIMEOUT": "1"})
    if real["ok"]:
        assert wait - 0.1 <= real["t"] <= wait + 1.0, (name, real["t"], wait)


def test_portal_without_cache_is_the_file_metadata_error(tmp_path):
    with ns.MiniHub(mode="portal") as portal:
        r = np.probe(np.Endpoint(portal.url, "hub", np.DEFAULT_HUB_PROBE_PATH), {}, timeout=TIMEOUT)
        real = real_client(portal.url, tmp_path / "hub", {})
    assert r.classification == "not-a-hub"
    assert not real["ok"] and "FileMetadataError" in real["chain"]
