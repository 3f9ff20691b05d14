"""checks.env: kept/dropped/changed variables with their consequences, and the offline policy, on real
caches written by the real huggingface_hub client; consequences are checked against the library itself
started with the launch environment. (Runs without root: sudo is simulated here; tests/test_sudo.py
compares with the real sudo.)"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from checks.env import check_offline_policy, check_propagation, sudoers_fix
from core.context import DoctorContext, Options
from doctor.engine import run_doctor
from core.launch import REFUSED_NOTE, RELEVANT_VARS, build_launch_context
from core.model import FAIL, OK, WARN
from core.plan import load_plan
from core.registry import load_registry
from doctor.render import finding_dict
from tests.support import TINY_CONFIG, TINY_REPO, caches
from tests.support.hubserver import HubServer

ABSENT_REPO = "org/absent"
_LIB = """
import json, sys
import huggingface_hub, huggingface_hub.constants as c
hit = huggingface_hub.try_to_load_from_cache(sys.argv[1], sys.argv[2])
print(json.dumps({"hf_cache": c.HF_HUB_CACHE, "hit": hit if isinstance(hit, str) else None}))
"""


@pytest.fixture(scope="module")
def user_home(tmp_path_factory):
    """A home whose default HF cache (~/.cache/huggingface/hub) holds org/tiny config.json (real client)."""
    home = tmp_path_factory.mktemp("user-home")
    with HubServer() as hub:
        hub.add_file(TINY_REPO, "config.json", TINY_CONFIG, lfs=False)
        caches.populate_hf_cache(hub.url, home / ".cache" / "huggingface" / "hub", TINY_REPO, "config.json")
    return home


def project(tmp_path, needs_by_model, python_need=None):
    root = tmp_path / "project"
    (root / "repos" / "r").mkdir(parents=True)
    requires = {m: list(n) for m, n in needs_by_model.items()}
    if python_need:
        requires["*"] = [{"python": python_need}]
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": list(needs_by_model),
                            "supported_hyperparams": {}, "requires": requires}}}
    (root / "models.json").write_text(json.dumps(reg))
    (root / "s.json").write_text(json.dumps({"experiments": [
        {"mode": "default", "repo": "r", "model": m, "hyperparameters": {}} for m in needs_by_model]}))
    return root


def context(root, launch, memo_dir, how="current"):
    registry = load_registry(str(root / "models.json"), str(root))
    plan = load_plan(str(root / "s.json"), registry)
    options = Options(project_root=str(root), settings_file=str(root / "s.json"), models_config=registry.path,
                      launch=how, memo_dir=str(memo_dir), ask_sudo=False)
    return DoctorContext(options=options, registry=registry, plan=plan, launch=launch)


def user_env(home, **extra):
    env = caches.clean_environ(home)
    for k in [k for k in env if k in RELEVANT_VARS and k not in ("HOME", "PATH")]:
        del env[k]  # nothing of this machine's CA bundles, GPUs or venv leaks into the comparison
    env.update(USER="u", LOGNAME="u")
    env.update(extra)
    return env


def sudo_launch(env, how, root_home, invoking_uid=4242):
    """The simulated sudo launch, with root's home replaced by a scratch folder and a non-root caller."""
    ctx = build_launch_context(how, environ=env, ask_sudo=False)
    launched = dict(ctx.env)
    if ctx.home != env.get("HOME"):
        launched["HOME"] = str(root_home)
    return dataclasses.replace(ctx, env=launched, home=launched["HOME"], invoking_uid=invoking_uid,
                               invoking_user="u", invoking_home=env["HOME"])


def library_sees(env, repo=TINY_REPO, filename="config.json"):
    """huggingface_hub started with `env`: its cache directory and whether the file is found there."""
    p = subprocess.run([sys.executable, "-c", _LIB, repo, filename], env=dict(env), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def by_id(findings):
    return {f.id: f for f in findings}


TINY = {"hf": TINY_REPO, "files": ["config.json"]}
ABSENT = {"hf": ABSENT_REPO, "files": ["config.json"]}


def test_home_moved_says_where_the_cache_goes_and_what_is_missing_there(user_home, tmp_path):
    root = project(tmp_path, {"a": [TINY], "b": [ABSENT]})
    env = user_env(user_home)
    launch = sudo_launch(env, "sudo", tmp_path / "roothome")
    ctx = context(root, launch, tmp_path / "memo", "sudo")
    f = by_id(check_propagation(ctx))
    before, after = f"{user_home}/.cache/huggingface/hub", f"{tmp_path}/roothome/.cache/huggingface/hub"
    home = f["env.home-moved"]
    assert home.status == WARN and home.title == f"HOME becomes {tmp_path}/roothome (was {user_home})"
    assert home.detail == (f"HOME becomes {tmp_path}/roothome, so the Hugging Face cache moves from {before} to "
                           f"{after}, where 2 of 2 needed models are missing (1 of them is in {before})")
    assert set(home.experiments) == {"r_a_001", "r_b_002"}
    # the words agree with huggingface_hub itself, started with each environment
    assert library_sees(env) == {"hf_cache": before, "hit": f"{before}/models--org--tiny/snapshots/"
                                 f"{caches.hf_commit(before, TINY_REPO)}/config.json"}
    assert library_sees(launch.env) == {"hf_cache": after, "hit": None}
    # the printed fix: export the cache, preserve it; the launch it describes finds the model again
    assert home.fix[0] == f"export HF_HUB_CACHE={before}"
    how = "sudo --preserve-env=HF_HUB_CACHE,HF_HUB_OFFLINE"
    assert home.fix[1].startswith(how + " /") and "mutation-run --require-preflight -ec " in home.fix[1]
    assert "  # check first: mutation-doctor -ec " in home.fix[1]
    fixed = sudo_launch(dict(env, HF_HUB_CACHE=before), how, tmp_path / "roothome")
    assert fixed.hf_cache == before and library_sees(fixed.env)["hit"]
    assert "env.home-moved" in by_id(check_propagation(context(root, fixed, tmp_path / "memo", how)))
    assert by_id(check_propagation(context(root, fixed, tmp_path / "memo", how)))["env.home-moved"].status == OK
    assert home.fix[2] == sudoers_fix(["HF_HUB_CACHE", "HF_HUB_OFFLINE"]) + "  # with the exports above in your shell profile"


def test_dropped_variables_with_consequences_and_no_secret_shown(user_home, tmp_path):
    root = project(tmp_path, {"a": [TINY], "b": [ABSENT]})
    token, proxy_pw = "hf_" + "s3cr3t" * 4, "pr0xyp4ss"
    env = user_env(user_home, HF_HOME=f"{user_home}/.cache/huggingface", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="1",
                   HF_TOKEN=token, https_proxy=f"http://alice:{proxy_pw}@proxy.lab:3128", LD_LIBRARY_PATH="/opt/cuda",
                   SSL_CERT_FILE="/etc/ssl/lab.pem")
    launch = sudo_launch(env, "sudo", tmp_path / "roothome")
    ctx = context(root, launch, tmp_path / "memo", "sudo")
    findings = check_propagation(ctx)
    f = by_id(findings)["env.dropped"]
    assert f.status == WARN
    assert f.title == ("sudo drops HF_HOME, HF_HUB_OFFLINE, HF_TOKEN, https_proxy, SSL_CERT_FILE, CUDA_VISIBLE_DEVICES, "
                       "LD_LIBRARY_PATH")
    words = f.detail
    assert "HF_HOME=" in words and "the Hugging Face cache moves from" in words and "2 of 2 needed models are missing" in words
    assert "HF_HUB_OFFLINE=1: the launched process asks the Hub before using its cache" in words
    assert "CUDA_VISIBLE_DEVICES=1: the experiments see every GPU instead of 1" in words
    assert "downloads go directly instead of through http://***@proxy.lab:3128" in words
    assert "neither -E nor --preserve-env keeps it" in words
    assert f.fix[0].startswith("sudo --preserve-env=HF_HOME,HF_HUB_OFFLINE,HF_TOKEN,https_proxy,SSL_CERT_FILE,"
                               "CUDA_VISIBLE_DEVICES /")
    assert f.fix[-1].startswith('sudo env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" /') and "mutation-run" in f.fix[-1]
    shown = json.dumps([finding_dict(x, launch.env) for x in findings])
    assert token not in shown and proxy_pw not in shown


def test_sudo_E_keeps_the_cache_but_root_writes_into_it(user_home, tmp_path):
    root = project(tmp_path, {"a": [TINY], "b": [ABSENT]})
    env = user_env(user_home, HF_HUB_OFFLINE="1")
    launch = sudo_launch(env, "sudo -E", tmp_path / "roothome")
    ctx = context(root, launch, tmp_path / "memo", "sudo -E")
    f = by_id(check_propagation(ctx))
    assert "env.home-moved" not in f and "env.dropped" not in f
    assert set(f["env.kept"].data["kept"]) >= {"HOME", "HF_HUB_OFFLINE"}
    rw = f["env.root-writes-user-cache"]
    assert rw.status == WARN and rw.data["paths"] == [f"{user_home}/.cache/huggingface/hub"]
    assert rw.fix[-1] == f"sudo chown -R u: {user_home}/.cache/huggingface/hub  # after the batch"
    # offline and everything cached: nothing is written, no warning
    ctx = context(project(tmp_path / "2", {"a": [TINY]}), launch, tmp_path / "memo", "sudo -E")
    assert "env.root-writes-user-cache" not in by_id(check_propagation(ctx))


def test_python3_changes_under_secure_path(user_home, tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python3").symlink_to(sys.executable)
    env = user_env(user_home, PATH=f"{venv}:/usr/bin:/bin", VIRTUAL_ENV=str(venv.parent))
    launch = sudo_launch(env, "sudo", tmp_path / "roothome")
    root = project(tmp_path, {"a": [], "b": []}, python_need=None)
    f = by_id(check_propagation(context(root, launch, tmp_path / "memo", "sudo")))["env.python-changed"]
    after = next((os.path.join(d, "python3") for d in launch.env["PATH"].split(":")
                  if os.access(os.path.join(d, "python3"), os.X_OK)), None)
    assert f.status == WARN and f.data == {"command": "python3", "before": f"{venv}/python3", "after": after}
    assert f.experiments == ("r_a_001", "r_b_002")
    p = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"], env=launch.env, capture_output=True,
                       text=True) if after else None
    if p is not None:
        assert p.stdout.strip() == after  # what the launched PATH really starts
    # a declared interpreter is called by its path: nothing to warn about
    root = project(tmp_path / "2", {"a": []}, python_need=sys.executable)
    f = by_id(check_propagation(context(root, launch, tmp_path / "memo", "sudo")))["env.python-changed"]
    assert f.status == OK and f.experiments == ()


def test_offline_policy_safe_and_missing_against_the_real_client(user_home, tmp_path):
    cache = f"{user_home}/.cache/huggingface/hub"
    root = project(tmp_path, {"a": [TINY], "b": [ABSENT], "c": []})
    env = user_env(user_home)
    ctx = context(root, build_launch_context("current", environ=env, ask_sudo=False), tmp_path / "memo")
    f = by_id(check_offline_policy(ctx))
    assert set(f) == {"env.offline.safe"} and f["env.offline.safe"].status == OK
    assert f["env.offline.safe"].experiments == ("r_a_001",)
    offline = dict(env, HF_HUB_OFFLINE="1")
    ctx = context(root, build_launch_context("current", environ=offline, ask_sudo=False), tmp_path / "memo")
    report = run_doctor(ctx, checks=[c for c in __import__("checks").CHECKS if c.name == "offline"])
    f = by_id(report.findings)
    assert f["env.offline.missing"].status == FAIL and f["env.offline.missing"].experiments == ("r_b_002",)
    assert {v.experiment.id: v.verdict for v in report.verdicts} == {"r_a_001": "pass", "r_b_002": "blocked",
                                                                     "r_c_003": "unverified"}  # needs nothing known
    # the real client agrees: offline, the cached file loads and the missing one fails at once
    ok = caches.hf_download_subprocess(None, None, TINY_REPO, "config.json", env=offline, offline=True)
    assert ok.returncode == 0, ok.stdout
    gone = caches.hf_download_subprocess(None, None, ABSENT_REPO, "config.json", env=offline, offline=True)
    assert gone.returncode == 1 and caches.last_json(gone)["error"] == "LocalEntryNotFoundError"
    assert caches.last_json(ok)["path"].startswith(cache)
    # TRANSFORMERS_OFFLINE counts too
    ctx = context(root, build_launch_context("current", environ=dict(env, TRANSFORMERS_OFFLINE="1"), ask_sudo=False),
                  tmp_path / "memo")
    assert by_id(check_offline_policy(ctx))["env.offline.missing"].title.startswith("TRANSFORMERS_OFFLINE is set")


def test_current_launch_inherits_everything(user_home, tmp_path):
    env = user_env(user_home, HF_HOME="/data/hf")
    ctx = context(project(tmp_path, {"a": [TINY]}), build_launch_context("current", environ=env, ask_sudo=False),
                  tmp_path / "memo")
    findings = check_propagation(ctx)
    assert [f.id for f in findings] == ["env.kept"] and "HF_HOME" in findings[0].data["kept"]


def test_under_sudo_without_the_invoking_environment(user_home, tmp_path):
    env = user_env(user_home)
    launch = dataclasses.replace(build_launch_context("current", environ=env, ask_sudo=False),
                                 how="sudo (this process)", invoking_env={}, invoking_user="u")
    f = by_id(check_propagation(context(project(tmp_path, {"a": [TINY]}), launch, tmp_path / "memo")))
    assert f["env.invoking-unknown"].status == WARN


def test_refused_and_differing_real_sudo(user_home, tmp_path):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    env = user_env(user_home, HF_HOME="/data/hf")
    sim = sudo_launch(env, "sudo", tmp_path / "roothome")
    root_home = pwd.getpwuid(0).pw_dir
    # a real answer that kept HF_HOME (a sudoers env_keep line): the real one wins, the difference is said
    real_env = dict(build_launch_context("sudo", environ=env, ask_sudo=False).env, HF_HOME="/data/hf")
    real = dataclasses.replace(sim, source="real", env=real_env, home=root_home, invoking_user=me, invoking_env=env)
    ctx = context(project(tmp_path, {"a": [TINY]}), real, tmp_path / "memo", "sudo")
    f = by_id(check_propagation(ctx))
    d = f["env.sudo.simulation-differs"]
    assert d.status == WARN and d.data["differences"] == [{"name": "HF_HOME", "simulated": None, "real": "/data/hf"}]
    assert "HF_HOME" in f["env.kept"].data["kept"]
    refused = dataclasses.replace(sim, how="sudo --preserve-env=HF_HOME",
                                  notes=(REFUSED_NOTE + "sorry, you are not allowed to preserve the environment",))
    ctx = context(project(tmp_path / "2", {"a": [TINY], "b": []}), refused, tmp_path / "memo", "sudo --preserve-env=HF_HOME")
    report = run_doctor(ctx, checks=[c for c in __import__("checks").CHECKS if c.name == "propagation"])
    f = by_id(report.findings)["env.sudo.refused"]
    assert f.status == FAIL and f.experiments == ("r_a_001", "r_b_002")
    assert all(v.verdict == "blocked" for v in report.verdicts)
    assert 'Defaults env_keep += "HF_HOME"' in f.fix[0]


def test_runner_adjusted_contexts_are_understood(user_home, tmp_path):
    """The runner re-runs the doctor in contexts labelled "<how> + runner environment" (source runner)."""
    env = user_env(user_home)
    base = sudo_launch(env, "sudo --preserve-env=HF_HOME", tmp_path / "roothome")
    adjusted = dataclasses.replace(base, how=base.how + " + runner environment", source="runner",
                                   env=dict(base.env, HF_HUB_CACHE=f"{user_home}/.cache/huggingface/hub"),
                                   notes=(REFUSED_NOTE + "sorry, you are not allowed to preserve the environment",))
    ctx = context(project(tmp_path, {"a": [TINY]}), adjusted, tmp_path / "memo", "sudo --preserve-env=HF_HOME")
    f = by_id(check_propagation(ctx) + check_offline_policy(ctx))
    assert not [x for x in f if x.endswith(".crashed")]
    assert f["env.changed"].status == OK and "HF_HUB_CACHE" in f["env.changed"].title
    assert 'Defaults env_keep += "HF_HOME"' in f["env.sudo.refused"].fix[0]
    assert f["env.offline.safe"].experiments == ("r_a_001",)
