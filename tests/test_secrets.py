"""Secrets never appear in output: names that hold secrets, and credentials inside URLs."""
import json
import subprocess
import sys
from pathlib import Path

from core.secrets import is_secret_name, mask, mask_env, mask_text

ROOT = Path(__file__).resolve().parents[1]


def test_secret_names():
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "DB_PASSWORD", "KEY"):
        assert is_secret_name(name), name
    for name in ("HOME", "HF_HOME", "KEYBOARD", "PATH", "HF_HUB_OFFLINE"):
        assert not is_secret_name(name), name


def test_mask_values_and_proxy_credentials():
    assert mask("HF_TOKEN", "hf_abcdefghijklmnopqrstu") == "***"
    assert mask("HTTPS_PROXY", "http://alice:s3cr3t@proxy.lab:3128") == "http://***@proxy.lab:3128"
    assert mask("HOME", "/home/alice") == "/home/alice"
    env = mask_env({"HF_TOKEN": "hf_abcdefghijklmnopqrstu", "https_proxy": "socks5://bob:pw@10.0.0.1:1080"})
    assert "abcdefghijklmnop" not in json.dumps(env) and "pw@" not in json.dumps(env)


def test_mask_text_hides_literal_secret_values():
    env = {"MY_SERVICE_TOKEN": "tok-1234567890"}
    text = "auth failed with tok-1234567890 via https://u:p@h/x and hf_ABCDEFGHIJKLMNOPQRST"
    out = mask_text(text, env)
    assert "tok-1234567890" not in out and "u:p@" not in out and "hf_ABCDEFGHIJKLMNOPQRST" not in out


def test_doctor_json_never_prints_secrets(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_TOKEN": "hf_supersecretvalue123456",
           "HTTPS_PROXY": "http://carol:hunter2hunter2@127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "doctor.cli", "-ec", "settings/demo.json", "--only", "settings,cache,env",
                        "--json", "--needs-lock", str(tmp_path / "needs.lock.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1, 3), p.stderr  # 3: nothing blocked, some experiment unverified
    out = p.stdout + p.stderr
    assert "supersecretvalue" not in out and "hunter2" not in out
    data = json.loads(p.stdout)
    assert data["launch"]["env"]["HF_TOKEN"] == "***"
    assert data["launch"]["env"]["HTTPS_PROXY"] == "http://***@127.0.0.1:9"
