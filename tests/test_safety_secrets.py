"""Secrets in free text are masked by name and by shape, in linear time, in every output of
explain (terminal, --json, --markdown), whatever the record had already masked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.secrets import LINE_CAP, MASK, is_secret_name, mask_text

ROOT = Path(__file__).resolve().parents[1]
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SECRETS = (AWS, "short1", "hunter2", "hf_abcdefghijklmnopqrstuv", "ghp_abcdefghijklmnopqrstuvwxyz0123",
           "AKIAIOSFODNN7EXAMPLE", "sk-proj-abcdefghijklmnopqrstuv", "pw4proxy")
LOG = f"""Epoch 1: loss=0.31 acc: 0.90
export AWS_SECRET_ACCESS_KEY={AWS}
HF_TOKEN=short1 python train.py --lr 0.1 --max_tokens=512
{{"db_password": "hunter2"}} token hf_abcdefghijklmnopqrstuv and ghp_abcdefghijklmnopqrstuvwxyz0123
key AKIAIOSFODNN7EXAMPLE api sk-proj-abcdefghijklmnopqrstuv via http://bob:pw4proxy@proxy.lab:3128/
Traceback (most recent call last):
  File "train.py", line 3, in <module>
huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local cache.
"""


def test_assignments_by_name_and_tokens_by_shape():
    out = mask_text(LOG)
    for s in SECRETS:
        assert s not in out, s
    assert "AWS_SECRET_ACCESS_KEY=***" in out and "HF_TOKEN=***" in out and "http://***@proxy.lab:3128/" in out
    assert "loss=0.31 acc: 0.90" in out and "--max_tokens=512" in out and "--lr 0.1" in out  # not secrets
    for name in ("GITHUB_TOKEN", "hf_token", "MY_API_KEY", "db_password", "AUTH", "DB_PASSWD", "client-secret"):
        assert is_secret_name(name), name
    for name in ("max_tokens", "tokenizer", "TOKENIZERS_PARALLELISM", "KEYBOARD", "HF_HOME", "AUTHOR"):
        assert not is_secret_name(name), name
    assert mask_text("x=***") == "x=***" and mask_text(12) == "12"


def test_long_lines_are_cut_and_never_shown_unscanned():
    line = "a" * (3 * LINE_CAP) + " HF_TOKEN=abcdef hf_abcdefghijklmnopqrstuv"
    out = mask_text("head\n" + line + "\ntail")
    assert "abcdef" not in out and "hf_abc" not in out
    assert out.startswith("head\n" + "a" * LINE_CAP + " [... ") and out.endswith("more characters not shown]\ntail")


def test_pathological_text_is_masked_without_hanging():
    """The old pattern took 10.5 s on 80 kB of letters and minutes on a 300 kB line."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from core.secrets import mask_text, mask_value\n"
            "for unit in ('a', 'a://', '://', 'a=', '_', 'hf_', '\"a\": \"'):\n"
            "    text = unit * (300000 // len(unit))\n"
            "    mask_text(text); mask_value(text); mask_text('\\n'.join([unit * 19000] * 16))\n"
            "print('done')")
    p = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "done", p.stderr[-2000:]


def _exp(run: Path, eid: str) -> None:
    d = run / eid
    d.mkdir(parents=True)
    (d / "experiment.json").write_text(json.dumps({
        "experiment_id": eid, "timestamp": "2026-01-07T01:52:45", "repository": "Person_reID_baseline_pytorch",
        "model": "hrnet18", "hyperparameters": {"epochs": 1, "note": f"AWS_SECRET_ACCESS_KEY={AWS}"},
        "duration_seconds": 50.0, "energy_metrics": {}, "performance_metrics": {}, "training_success": False,
        "retries": 0, "error_message": "HF_TOKEN=short1 failed; proxy http://bob:pw4proxy@proxy.lab:3128"}))
    head = LOG.split("huggingface_hub.errors")[0]
    (d / "training.log").write_text(head + f"OSError: login failed: HF_TOKEN=short1 AWS_SECRET_ACCESS_KEY={AWS} "
                                          "db_password=hunter2 via http://bob:pw4proxy@proxy.lab:3128\n")


def test_explain_masks_every_output(tmp_path):
    run = tmp_path / "results" / "run_20260107_015245"
    _exp(run, "Person_reID_baseline_pytorch_hrnet18_001")
    md = tmp_path / "report.md"
    outs = []
    for extra in ([], ["--json"], ["--markdown", str(md)], ["-v"]):
        p = subprocess.run([sys.executable, "-m", "doctor.explain", str(run), *extra], cwd=str(ROOT),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode in (0, 1), p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        outs.append(p.stdout + p.stderr)
    outs.append(md.read_text())
    assert all("OSError: login failed" in o for o in outs[:3])  # the failing line is quoted
    for out in outs:
        for s in SECRETS:
            assert s not in out, (s, out[:3000])
    assert MASK in "".join(outs)


def test_records_and_journal_events_are_masked_leaf_by_leaf(tmp_path):
    from core.secrets import mask_data
    from runner.results import Journal

    data = {"argv": ["./train.sh", "--api-key", "sk-abcdefghijklmnopqrstuvwx12", "--note", "HF_TOKEN=short1"],
            "env": {"HF_TOKEN": "x", "HOME": "/h"}, "n": 3, "ok": None, "nested": [{"db_password": "hunter2"}]}
    masked = mask_data(data)
    assert masked["argv"][:2] == ["./train.sh", "--api-key"] and masked["argv"][2] == MASK
    assert masked["argv"][4] == "HF_TOKEN=***" and masked["env"] == {"HF_TOKEN": MASK, "HOME": "/h"}
    assert masked["n"] == 3 and masked["ok"] is None and masked["nested"] == [{"db_password": MASK}]
    j = Journal(str(tmp_path / "journal.jsonl"))
    j.write("experiment-start", experiment_id="a", **data)
    j.close()
    text = (tmp_path / "journal.jsonl").read_text()
    assert "sk-abc" not in text and "short1" not in text and "hunter2" not in text
    assert Journal.read(str(tmp_path / "journal.jsonl"))[0]["argv"][0] == "./train.sh"
