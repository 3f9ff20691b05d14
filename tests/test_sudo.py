"""The env group against the real sudo: a throwaway user with a NOPASSWD sudoers.d entry runs the doctor,
and every launch context the doctor reports is compared with what a process really launched that
way sees (its environment, huggingface_hub's cache directory, the interpreter `python3` becomes).

Skipped, with the reason, where we are not root or sudo/useradd/visudo/setpriv are missing.
"""
import json
import re
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import sudo
from core.launch import RELEVANT_VARS, build_launch_context, parse_launch, simulate_sudo
from tests.support import TINY_CONFIG, TINY_REPO, caches
from tests.support.hubserver import HubServer
from tests.support.sudo_user import install_sudoers, skip_reason, throwaway_user, user_python

ROOT = Path(__file__).resolve().parents[1]
REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"real sudo tests: {REASON}")
SUDOERS_FIX_FILE = Path("/etc/sudoers.d/mutation-preflight")

# What the launched process reports: its environment, the cache huggingface_hub resolves, and
# whether the needed file is in it (the zero-network primitive of the library itself).
_LAUNCHED = """
import json, os, sys
import huggingface_hub, huggingface_hub.constants as c
hit = huggingface_hub.try_to_load_from_cache(sys.argv[1], sys.argv[2])
print(json.dumps({"env": dict(os.environ), "hf_cache": c.HF_HUB_CACHE, "hit": hit if isinstance(hit, str) else None,
                  "uid": os.getuid()}))
"""


@pytest.fixture(scope="module")
def user():
    with throwaway_user() as u:
        yield u


@pytest.fixture(scope="module")
def upy(user):
    found = user_python(user)
    if found is None:
        pytest.skip("no interpreter the throwaway user can import the project with")
    return found


@pytest.fixture(scope="module")
def hf_home(user):
    """The user's HF_HOME holding org/tiny config.json, written by the real client, owned by the user."""
    home = user.mkdir("hfhome")
    with HubServer() as hub:
        hub.add_file(TINY_REPO, "config.json", TINY_CONFIG, lfs=False)
        caches.populate_hf_cache(hub.url, home / "hub", TINY_REPO, "config.json")
    for d, _, files in os.walk(home):
        os.chown(d, user.uid, user.gid)
        for f in files:
            os.chown(os.path.join(d, f), user.uid, user.gid, follow_symlinks=False)
    return home


@pytest.fixture(scope="module")
def project(user):
    """A project in the user's home: one repo, one model that needs org/tiny's config.json."""
    root = user.mkdir("project")
    repo = user.mkdir("project", "repos", "r")
    (repo / "train.sh").write_text("#!/bin/sh\necho ok\n")
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                            "supported_hyperparams": {},
                            "requires": {"m": [{"hf": TINY_REPO, "files": ["config.json"]}]}}}}
    (root / "models.json").write_text(json.dumps(reg))
    (root / "s.json").write_text(json.dumps({"experiments": [{"mode": "default", "repo": "r", "model": "m",
                                                              "hyperparameters": {}}]}))
    for p in root.rglob("*"):
        os.chown(p, user.uid, user.gid)
    return root


@pytest.fixture(scope="module")
def venv_bin(user):
    """A venv-like folder first on the user's PATH whose python3 is not the system one by path."""
    bin_dir = user.mkdir("venv", "bin")
    link = bin_dir / "python3"
    if not link.exists():
        link.symlink_to("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    return bin_dir


@pytest.fixture
def user_env(user, upy, hf_home, venv_bin):
    return user.env(**upy[1], HF_HOME=str(hf_home), CUDA_VISIBLE_DEVICES="1",
                    PATH=f"{venv_bin}:/usr/local/bin:/usr/bin:/bin")


def doctor_as(user, upy, project, env, how, *extra):
    argv = [upy[0], "-m", "doctor.cli", "-ec", "s.json", "--models-config", "models.json", "--project-root",
            str(project), "--only", "env,cache", "--json", "--launch", how, *extra]
    p = user.run(argv, env=env, cwd=str(project), timeout=120)
    assert p.returncode in (0, 1, 3), p.stderr[-3000:]  # 3: some experiment unverified
    return json.loads(p.stdout)


def launched_as(user, env, how, *, python=None, code=_LAUNCHED, args=(TINY_REPO, "config.json")):
    """What a process launched `how` (`sudo`, `sudo -E`, ...) by the user really sees."""
    words = parse_launch(how).argv_prefix
    argv = [words[0], "-n", *words[1:], python or sys.executable, "-I", "-c", code, *args]
    p = user.run(argv, env=env, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def by_id(data):
    return {f["id"]: f for f in data["findings"]}


def relevant(env):
    return {k: env[k] for k in RELEVANT_VARS if k in env}


def assert_doctor_saw_what_sudo_gave(data, real):
    """The doctor's launch context against the real launched process."""
    launch = data["launch"]
    assert launch["source"] == "real", launch["notes"]
    assert real["uid"] == launch["uid"] == 0
    assert launch["home"] == real["env"]["HOME"]
    assert launch["hf_cache"] == real["hf_cache"]
    assert launch["env"] == relevant(real["env"])
    verdict = data["experiments"][0]["verdict"]
    assert (verdict == "pass") == (real["hit"] is not None), (verdict, real["hit"])


def test_plain_sudo_drops_hf_home_and_moves_home(user, upy, project, user_env, hf_home):
    if Path("/root/.cache/huggingface/hub", "models--org--tiny").exists():
        pytest.skip("root's own cache holds org/tiny on this machine")
    data = doctor_as(user, upy, project, user_env, "sudo")
    real = launched_as(user, user_env, "sudo")
    assert_doctor_saw_what_sudo_gave(data, real)
    assert "HF_HOME" not in real["env"] and real["env"]["HOME"] == "/root"
    f = by_id(data)
    dropped = f["env.dropped"]
    assert dropped["status"] == "warn" and "HF_HOME" in dropped["title"] and "CUDA_VISIBLE_DEVICES" in dropped["title"]
    assert (f"the Hugging Face cache moves from {hf_home}/hub to /root/.cache/huggingface/hub, where 1 of 1 needed "
            f"model is missing (it is in {hf_home}/hub)") in dropped["detail"]
    assert dropped["experiments"] == ["r_m_001"]
    assert f["env.home-moved"]["title"] == f"HOME becomes /root (was {user.home})"
    # the cache group blocks it once; the env group only warns
    assert data["experiments"][0]["blocked_by"] == ["cache.hub.missing"]
    assert any(x.startswith("sudo --preserve-env=HF_HOME") for x in dropped["fix"])


def test_sudo_E_keeps_hf_home_and_home(user, upy, project, user_env, hf_home):
    data = doctor_as(user, upy, project, user_env, "sudo-E")
    real = launched_as(user, user_env, "sudo -E")
    assert_doctor_saw_what_sudo_gave(data, real)
    assert real["env"]["HF_HOME"] == str(hf_home) and real["env"]["HOME"] == user.home
    f = by_id(data)
    assert "env.home-moved" not in f and "HF_HOME" in f["env.kept"]["data"]["kept"]
    assert data["experiments"][0]["verdict"] == "pass" and real["hit"]
    # root now runs with the user's cache: what it downloads there stays root-owned
    rw = f["env.root-writes-user-cache"]
    assert rw["status"] == "warn" and f"{hf_home}/hub" in rw["title"]


def test_preserve_env_keeps_only_the_named_ones(user, upy, project, user_env, hf_home):
    how = "sudo --preserve-env=HF_HOME"
    data = doctor_as(user, upy, project, user_env, how)
    real = launched_as(user, user_env, how)
    assert_doctor_saw_what_sudo_gave(data, real)
    assert real["env"]["HF_HOME"] == str(hf_home) and real["env"]["HOME"] == "/root"
    assert "CUDA_VISIBLE_DEVICES" not in real["env"]
    f = by_id(data)
    assert f["env.dropped"]["title"] == f"{how} drops CUDA_VISIBLE_DEVICES"
    assert f["env.home-moved"]["status"] == "ok"  # HOME moves, but the cache stays (HF_HOME is kept)
    assert data["experiments"][0]["verdict"] == "pass"


def test_the_sudoers_env_keep_fix_keeps_them(user, upy, project, user_env, hf_home):
    """The exact sudoers fix the doctor prints, run as the user, makes plain `sudo` keep HF_HOME."""
    if SUDOERS_FIX_FILE.exists():
        pytest.skip(f"{SUDOERS_FIX_FILE} already exists on this machine")
    before = doctor_as(user, upy, project, user_env, "sudo")
    fix = next(x for x in by_id(before)["env.dropped"]["fix"] if "visudo -cf" in x)
    assert f"visudo -cf {SUDOERS_FIX_FILE}" in fix
    scratch = user.mkdir("fix")
    try:
        # a copy-paste command with && and >: run it the way the user would, in a shell
        p = user.run(["/bin/sh", "-c", fix], env=user_env, cwd=str(scratch), timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert SUDOERS_FIX_FILE.stat().st_mode & 0o777 == 0o440
        data = doctor_as(user, upy, project, user_env, "sudo")
        real = launched_as(user, user_env, "sudo")
    finally:
        SUDOERS_FIX_FILE.unlink(missing_ok=True)
    assert_doctor_saw_what_sudo_gave(data, real)
    assert real["env"]["HF_HOME"] == str(hf_home) and real["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    f = by_id(data)
    assert "env.dropped" not in f and data["experiments"][0]["verdict"] == "pass"
    differs = f["env.sudo.simulation-differs"]  # sudo's defaults would have dropped them
    assert differs["status"] == "warn"
    assert {d["name"] for d in differs["data"]["differences"]} >= {"HF_HOME", "CUDA_VISIBLE_DEVICES"}


def test_secure_path_changes_the_interpreter_and_the_fixes_restore_it(user, upy, project, user_env, venv_bin):
    data = doctor_as(user, upy, project, user_env, "sudo")
    code = "import json, sys; print(json.dumps({'executable': sys.executable}))"
    real = user.run(["sudo", "-n", "python3", "-c", code], env=user_env, timeout=60)
    assert real.returncode == 0, real.stderr
    real_python = json.loads(real.stdout)["executable"]
    assert data["launch"]["python3"] == real_python != str(venv_bin / "python3")
    f = by_id(data)["env.python-changed"]
    assert f["title"] == f"python3 resolves to {real_python} instead of {venv_bin / 'python3'}"
    # each printed fix, with the batch command replaced by python3, starts the user's python3 again
    assert f["fix"] and all("mutation-run --require-preflight" in fix for fix in f["fix"])
    for fix in f["fix"]:
        command = re.sub(r"\S*mutation-run --require-preflight.*$", "python3 -c " + shlex.quote(code),
                         fix.split("  #")[0]).replace("sudo ", "sudo -n ", 1)
        p = user.run(["/bin/sh", "-c", command], env=user_env, timeout=60)
        assert p.returncode == 0, (command, p.stderr)
        assert json.loads(p.stdout)["executable"] == str(venv_bin / "python3"), command


def test_simulation_matches_the_real_sudo(user):
    """sudo's rules as simulated, against sudo itself, for an environment full of edge cases."""
    env = user.env(HF_HOME="/data/hf", HF_HUB_OFFLINE="1", TORCH_HOME="~/t", CUDA_VISIBLE_DEVICES="0",
                   LD_LIBRARY_PATH="/opt/cuda/lib64", TMPDIR="/scratch", PYTHONPATH="/pp", TZ="Europe/Paris",
                   LC_ALL="C.UTF-8", LC_CTYPE="a/b", LANG="C.UTF-8", TERM="xterm", COLORTERM="truecolor",
                   DISPLAY=":0", MAIL="/var/mail/x", **{"BASH_FUNC_f%%": "() { :; }"}, SSL_CERT_FILE="/etc/ssl/my.pem",
                   https_proxy="http://proxy:3128")
    import pwd

    caller, root = pwd.getpwnam(user.name), pwd.getpwuid(0)
    for how in ("sudo", "sudo -E", "sudo --preserve-env=HF_HOME,LD_LIBRARY_PATH,PATH,PYTHONPATH"):
        spec = parse_launch(how)
        answer = sudo.ask(spec, env, user=user.name)
        assert answer.ok, answer.reason
        simulated = simulate_sudo(env, spec, caller, root, defaults=answer.defaults)
        real = {k: v for k, v in answer.env.items() if k != "SUDO_COMMAND"}
        assert simulated == real, how
    assert answer.env["PATH"] == env["PATH"] and "LD_LIBRARY_PATH" not in answer.env  # the loader strips LD_*
    with user.sudoers_defaults(f'Defaults:{user.name} env_keep += "HF_HOME TORCH_HOME"',
                               f'Defaults:{user.name} secure_path="/opt/bin:/usr/bin:/bin"'):
        answer = sudo.ask(parse_launch("sudo"), env, user=user.name)
        assert answer.defaults.secure_path == "/opt/bin:/usr/bin:/bin"
        assert {"HF_HOME", "TORCH_HOME"} <= set(answer.defaults.added_keep)
        assert simulate_sudo(env, parse_launch("sudo"), caller, root, defaults=answer.defaults) == \
            {k: v for k, v in answer.env.items() if k != "SUDO_COMMAND"}


def test_root_asks_as_the_invoking_user(user, upy):
    """As root, build_launch_context asks sudo as the user (root's sudo would keep everything for root)."""
    env = user.env(**upy[1], HF_HOME="/data/hf")
    ctx = build_launch_context("sudo --preserve-env=HF_HOME", environ=env, sudo_user=user.name)
    assert ctx.source == "real" and ctx.invoking_user == user.name and ctx.env["SUDO_USER"] == user.name
    assert ctx.env["HF_HOME"] == "/data/hf" and ctx.home == "/root"
    assert build_launch_context("sudo", environ=env, sudo_user=user.name, ask_sudo=False).source == "simulated"


def test_refused_preserve_env_blocks_every_experiment(upy, project, user_env):
    """A rule without SETENV: sudo refuses --preserve-env, so every experiment would fail to start."""
    with throwaway_user(rule=f"ALL=(ALL) NOPASSWD: /usr/bin/env, {sys.executable}") as u:
        for p in [project, *project.rglob("*")]:
            os.chmod(p, os.stat(p).st_mode | 0o055)
        home = Path(project).parent
        os.chmod(home, 0o755)
        env = dict(user_env, HOME=u.home, USER=u.name, LOGNAME=u.name)
        data = doctor_as(u, upy, project, env, "sudo --preserve-env=HF_HOME")
        p = u.run(["sudo", "-n", "--preserve-env=HF_HOME", "/usr/bin/env"], env=env)
    assert p.returncode != 0 and "not allowed to set the following environment variables" in p.stderr
    f = by_id(data)["env.sudo.refused"]
    assert f["status"] == "fail" and "not allowed to set" in f["title"]
    assert data["experiments"][0]["blocked_by"] == ["env.sudo.refused"]
    assert data["launch"]["source"] == "simulated"


def test_invoking_environment_is_what_the_shell_handed_to_sudo(user, upy, project):
    """Under sudo, the doctor reads the environment the shell passed to sudo, including variables
    exported after the shell started (absent from the shell's own /proc environ)."""
    late = ("import os, subprocess, sys; os.environ['HF_HUB_OFFLINE'] = '1'; "
            "sys.exit(subprocess.call(sys.argv[1:]))")
    code = "import json; from core.launch import invoking_environment as f; print(json.dumps(f()))"
    env = user.env(**upy[1], HF_HOME="/data/hf")
    p = user.run([upy[0], "-c", late, "sudo", "-n", sys.executable, "-c", code], env=env, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["HF_HUB_OFFLINE"] == "1" and got["HF_HOME"] == "/data/hf" and got["HOME"] == user.home
    # and the doctor itself, started with sudo, reports what was lost against it
    argv = [upy[0], "-c", late, "sudo", "-n", sys.executable, "-m", "doctor.cli", "-ec", "s.json", "--models-config",
            "models.json", "--project-root", str(project), "--only", "env", "--json"]
    p = user.run(argv, env=env, cwd=str(project), timeout=120)
    data = json.loads(p.stdout)
    assert data["launch"]["source"] == "self" and data["launch"]["invoking_user"] == user.name
    dropped = by_id(data)["env.dropped"]
    assert dropped["title"] == "sudo dropped HF_HOME, HF_HUB_OFFLINE"


def test_caches_are_inspected_as_the_launch_user(user, upy, tmp_path):
    """A need only root may read: a user's doctor looks through `sudo -n` where it needs no password,
    and says which command would look where it cannot."""
    locked = Path("/var/tmp") / f"mpf-locked-{user.name}"
    data_dir = locked / "dataset"
    data_dir.mkdir(parents=True)
    (data_dir / "train.csv").write_text("x,y\n1,2\n")
    locked.chmod(0o700)
    root = user.mkdir("proj2")
    reg = {"models": {"r": {"path": "r", "train_script": "./train.sh", "models": ["m"], "supported_hyperparams": {},
                            "requires": {"m": [{"path": str(data_dir), "kind": "dataset"}]}}}}
    (root / "models.json").write_text(json.dumps(reg))
    (root / "s.json").write_text(json.dumps({"experiments": [{"mode": "default", "repo": "r", "model": "m",
                                                              "hyperparameters": {}}]}))
    try:
        env = user.env(**upy[1])
        data = doctor_as(user, upy, root, env, "sudo")
        assert by_id(data)["cache.path.present"]["status"] == "ok"  # seen as root, through sudo -n
        assert by_id(data)["env.sudo.inspected-as"]["title"].startswith("the caches were inspected as root (sudo -n)")
        with throwaway_user(rule="ALL=(ALL) ALL") as other:  # sudo wants a password: cannot look
            os.chmod(user.home, 0o755)
            env2 = dict(env, HOME=other.home, USER=other.name, LOGNAME=other.name)
            data = doctor_as(other, upy, root, env2, "sudo")
        f = by_id(data)["cache.unreadable"]
        # a warning, not a block; and since nothing it needs could be looked for, not "pass" either
        assert f["status"] == "warn" and data["experiments"][0]["verdict"] == "unverified"
        assert any(x.startswith("sudo /") and "mutation-doctor" in x for x in f["fix"])
        assert data["launch"]["source"] == "simulated" and "password" in " ".join(data["launch"]["notes"])
        assert "sudo -n cannot run commands here" in by_id(data)["env.sudo.not-inspected-as"]["title"]
    finally:
        shutil.rmtree(locked, ignore_errors=True)


def test_sudoers_fix_line_passes_visudo(tmp_path):
    from checks.env import sudoers_fix

    fix = sudoers_fix(["HF_HOME", "HF_HUB_OFFLINE", "TORCH_HOME"])
    line = fix.split("printf '%s\\n' ", 1)[1].split(" > ", 1)[0]
    text = shlex.split(line)[0]
    assert text == 'Defaults env_keep += "HF_HOME HF_HUB_OFFLINE TORCH_HOME"'
    path = tmp_path / "check"
    path.write_text(text + "\n")
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    p = subprocess.run([visudo, "-cf", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    path.write_text(text[:-1] + "\n")  # a broken line is caught by the same check
    assert subprocess.run([visudo, "-cf", str(path)], capture_output=True).returncode != 0
    assert install_sudoers  # the helper installs only what visudo accepted (used by the fixtures)
