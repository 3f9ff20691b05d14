"""mutation-run --dry-run with use_deduplication: what history pushed away, said before anything runs."""
import json
import os
import subprocess
import sys

from tests.test_dedup import ROOT, project, write_csv


def _runner(tmp_path, env, *args):
    return subprocess.run([sys.executable, "-m", "runner.cli", "--project-root", str(tmp_path), "--models-config",
                           str(tmp_path / "mutation" / "models_config.json"), "-ec", str(tmp_path / "settings" / "s.json"),
                           "--only", "settings", "--probe-timeout", "1", "--dry-run", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_dry_run_counts_candidates_drawn_again_because_history_had_them(tmp_path, clean_env):
    write_csv(tmp_path / "data" / "raw.csv", [
        {"experiment_id": f"r_m_00{v}", "repository": "r", "model": "m", "hyperparam_epochs": str(v)} for v in (1, 2)])
    write_csv(tmp_path / "results" / "run_20260101_000000" / "summary.csv",
              [{"experiment_id": "r_m_009", "repository": "r", "model": "m", "hyperparam_epochs": "4"}])
    project(tmp_path, [{"repo": "r", "model": "m", "mutate": ["epochs"], "runs_per_config": 3}],
            use_deduplication=True, historical_csvs=["data/raw.csv", "data/gone.csv"])
    env = dict(clean_env, PATH=os.path.dirname(sys.executable) + os.pathsep + clean_env.get("PATH", "/usr/bin:/bin"))
    p = _runner(tmp_path, env, "--json", "--seed", "3")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    dedup = data["dedup"]
    assert dedup["redrawn"]["history"] > 0 and dedup["history_runs"] == 3
    assert [s["problem"] for s in dedup["history"]] == ["", "file not found", ""]
    epochs = [e["argv"][e["argv"].index("--epochs") + 1] for e in data["experiments"]]
    assert sorted(epochs[:2]) == ["5", "6"] and dedup["short"] == [data["experiments"][2]["id"]]
    text = _runner(tmp_path, env, "--seed", "3").stderr  # status lines, before anything runs
    assert f"{dedup['redrawn']['history']} of {dedup['drawn']} candidate(s) drawn again because history had them" in text
    assert "gone.csv: file not found" in text and "1 experiment(s) repeat a combination" in text
