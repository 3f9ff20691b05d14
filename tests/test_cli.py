"""The doctor's command line: help without torch, exit codes, one-line errors, the JSON contract."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def doctor(*args, env=None, cwd=ROOT, timeout=180):
    return subprocess.run([sys.executable, "-m", "doctor.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_does_not_import_torch():
    code = ("import sys; sys.argv=['mutation-doctor','--help']\n"
            "from doctor.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('torch','timm','torchvision','huggingface_hub') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "usage: mutation-doctor" in p.stdout
    assert "HEAVY []" in p.stdout


@pytest.mark.parametrize("args, needle", [
    (["-ec", "does/not/exist.json"], "file not found"),
    (["--only", "cache,bogus"], "unknown group bogus"),
    (["--launch", "doas"], "expected current, sudo"),
    (["--project-root", "/nonexistent/dir"], "not a folder"),
    (["--probe-timeout", "0"], "--probe-timeout must be a positive number of seconds"),
    (["--only", "settings", "--markdown", "/nonexistent/dir/report.md"], "/nonexistent does not exist"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    p = doctor(*args)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_probe_timeout_is_the_option_and_timeout_a_deprecated_alias():
    from runner.cli import build_parser as runner_parser

    help_text = doctor("--help").stdout
    assert "--probe-timeout" in help_text and "--timeout" not in help_text.replace("--probe-timeout", "")
    new = doctor("--only", "settings", "--probe-timeout", "1.5", "--json")
    old = doctor("--only", "settings", "--timeout", "1.5", "--json")
    assert new.returncode == old.returncode == 0 and json.loads(old.stdout)["summary"]["exit_code"] == 0
    assert "deprecated" not in new.stderr
    assert old.stderr.strip() == "mutation-doctor: --timeout is deprecated, use --probe-timeout"
    bad = doctor("--only", "settings", "--timeout", "-1")
    assert bad.returncode == 2 and "--probe-timeout must be a positive" in bad.stderr
    run = runner_parser().parse_args(["-ec", "x.json", "--timeout", "60", "--probe-timeout", "2"])
    assert (run.timeout, run.probe_timeout) == (60.0, 2.0)  # the runner's --timeout is the attempt's


def test_bad_json_names_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"experiments": [ {"repo": "demo",, } ]}')
    p = doctor("-ec", str(bad))
    assert p.returncode == 2 and str(bad) in p.stderr and "line 1 column" in p.stderr
    assert "Traceback" not in p.stderr


def test_json_contract_and_exit_code_on_demo(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    p = doctor("-ec", "settings/demo.json", "--only", "settings,cache", "--json",
               "--needs-lock", str(tmp_path / "needs.lock.json"), env=env)
    data = json.loads(p.stdout)
    assert data["format_version"] == 1
    assert set(data) >= {"launch", "findings", "experiments", "summary"}
    for f in data["findings"]:
        assert set(f) >= {"id", "group", "status", "title", "detail", "fix", "experiments"}
        assert f["status"] in ("ok", "warn", "fail", "error")
    verdicts = {e["id"]: e["verdict"] for e in data["experiments"]}
    # an empty HOME: the from-scratch model passes, the two weight-needing ones are blocked
    assert verdicts == {"demo_scratch_mlp_001": "pass", "demo_tv_resnet18_002": "blocked",
                        "demo_timm_resnet18_003": "blocked"}
    blocked = {e["id"]: e["blocked_by"] for e in data["experiments"]}
    assert blocked["demo_timm_resnet18_003"] == ["cache.hub.missing"]
    assert data["launch"]["hf_cache"] == str(tmp_path / ".cache" / "huggingface" / "hub")
    assert data["summary"]["blocked"] == 2 and p.returncode == 1
    missing = next(f for f in data["findings"] if f["id"] == "cache.hub.missing")
    assert any("prefetch" in x for x in missing["fix"])


def _with_crashing_check(*args):
    code = ("import sys\n"
            "import checks\n"
            "from checks import Check\n"
            "checks.CHECKS = checks.CHECKS + (Check('settings', 'boom', 'Boom', 'os.path:__nonexistent__'),)\n"
            "import doctor.engine as e; e.CHECKS = checks.CHECKS\n"
            "from doctor.cli import main\n"
            f"sys.exit(main(['-ec', 'settings/demo.json', '--only', 'settings', *{list(args)!r}]))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_crashing_check_is_reported_not_fatal(tmp_path):
    p = _with_crashing_check("--json")
    data = json.loads(p.stdout)
    crashed = [f for f in data["findings"] if f["id"] == "settings.boom.crashed"]
    assert crashed and crashed[0]["status"] == "error" and p.returncode == 1
    assert "Traceback (most recent call last)" in crashed[0]["data"]["traceback"]  # --json carries it
    assert crashed[0]["data"]["exception"].startswith("AttributeError: module ")


def test_a_crashing_check_is_one_terminal_line_and_its_traceback_only_under_v():
    out = _with_crashing_check().stdout.splitlines()
    i = next(i for i, x in enumerate(out) if "settings.boom.crashed" in x)
    assert '"Boom" (settings.boom) crashed: AttributeError: module ' in out[i] and "__nonexistent__" in out[i]
    assert not out[i + 1].startswith("      ")  # no detail, fix or traceback lines below it
    assert "Traceback" not in "\n".join(out)
    verbose = _with_crashing_check("-v").stdout
    assert "Traceback (most recent call last)" in verbose and "--only settings -v" in verbose


def test_markdown_report_and_piped_table_keep_whole_ids(tmp_path):
    md = tmp_path / "report.md"
    p = doctor("-ec", "settings/demo.json", "--only", "settings,cache", "--markdown", str(md),
               "--needs-lock", str(tmp_path / "needs.lock.json"),
               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 1
    assert "demo_timm_resnet18_003 " in p.stdout and "…" not in p.stdout  # piped: no cropping
    text = md.read_text()
    assert text.startswith("# mutation-doctor report") and "| demo_timm_resnet18_003 | default | blocked | cache.hub.missing |" in text


def test_markdown_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    md = tmp_path / "report.md"
    md.symlink_to(victim)
    p = doctor("--only", "settings", "--markdown", str(md), "--needs-lock", str(tmp_path / "needs.lock.json"),
               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode in (0, 3), p.stderr
    assert victim.read_text() == "keep me\n"
    assert not md.is_symlink() and md.read_text().startswith("# mutation-doctor report")
