"""`mutation-doctor explain` on the user's real result folders (../shared/corpus/user-results).

Their failed experiments kept only experiment.json (no logs), so every failure here must come out
with a confidence of 0.5 or less, and the right cause: the four hrnet18 failures as a Hub cache
miss of a timm model, the two CUDA OOMs, the false success, and the successes whose logs hold a
harmless `ModuleNotFoundError: No module named 'scipy'`.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from doctor.explain import explain_path, main

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
RESULTS = CORPUS / "user-results"
RUN = RESULTS / "run_20260106_220807"
ARCHIVED = RESULTS / "archives" / "data_snapshots" / "archived"
SNAP = RESULTS / "archives" / "data_snapshots" / "mutation_2x_20251122_175401"
VUL = RESULTS / "archives" / "runs" / "run_20251210_224430" / "VulBERTa_cnn_002_parallel"

HRNET_FAILURES = [
    ARCHIVED / "run_20251117_182512" / "Person_reID_baseline_pytorch_hrnet18_006",
    ARCHIVED / "run_20251117_182512" / "Person_reID_baseline_pytorch_hrnet18_023",
    ARCHIVED / "run_20251118_155526" / "Person_reID_baseline_pytorch_hrnet18_006",
    ARCHIVED / "run_20251118_155526" / "Person_reID_baseline_pytorch_hrnet18_017_parallel",
]


@pytest.fixture(scope="module")
def corpus_report():
    if not RESULTS.is_dir():
        pytest.skip(f"corpus not available at {RESULTS}")
    t0 = time.perf_counter()
    report = explain_path(str(RESULTS))
    return report, time.perf_counter() - t0


def _by_path(report):
    report = report[0]
    return {e.path: e for e in report.explanations}


def test_the_four_hrnet18_failures(corpus_report):
    got = _by_path(corpus_report)
    for p in HRNET_FAILURES:
        e = got[str(p)]
        assert e.status == "failed"
        assert e.cause.id == "hub.cache-miss", (p, e.cause)
        assert 0.2 <= e.cause.confidence <= 0.5
        text = " ".join(e.chain)
        assert "No log was kept" in text and "inference" in text
        assert "timm/hrnet_w18.ms_aug_in1k" in text
        assert any(v.file == "experiment.json" and v.line and "Training.*FAILED" in v.text for v in e.evidence)
    par = got[str(HRNET_FAILURES[3])]
    assert par.mode == "parallel" and par.background["model"] == "mnist_rnn"


def test_the_oom_failures(corpus_report):
    got = _by_path(corpus_report)
    pcb = got[str(SNAP / "Person_reID_baseline_pytorch_pcb_145")]
    assert (pcb.status, pcb.cause.id) == ("failed", "cuda.oom") and pcb.cause.confidence <= 0.5
    ff = got[str(SNAP / "examples_mnist_ff_001")]
    # The GPU drew >= 175 W from the first sample, unlike its sibling's 4.8 W idle start.
    assert (ff.status, ff.cause.id) == ("failed", "cuda.oom.foreign-process") and ff.cause.confidence <= 0.5
    assert any("gpu_power_min_watts" in v.text for v in ff.evidence)
    assert any("CUDA out of memory" in v.text for v in ff.evidence)


def test_the_false_success(corpus_report):
    e = _by_path(corpus_report)[str(VUL)]
    assert (e.status, e.cause.id) == ("suspicious", "false-success")
    assert e.cause.confidence <= 0.5
    assert any('"performance_metrics": {}' in v.text for v in e.evidence)


def test_benign_traceback_success(corpus_report):
    e = _by_path(corpus_report)[str(RUN / "Person_reID_baseline_pytorch_hrnet18_004")]
    assert e.status == "succeeded" and e.cause is None
    tb = [v for v in e.evidence if "ModuleNotFoundError" in v.text]
    assert tb and tb[0].file == "terminal_output.txt" and tb[0].line == 39329
    with open(RUN / "Person_reID_baseline_pytorch_hrnet18_004" / "terminal_output.txt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if i == 39329:
                assert line.strip() == "ModuleNotFoundError: No module named 'scipy'"
                break
    assert any("noise" in s and "terminal_output.txt:39329 (STDOUT section)" in s for s in e.chain)


def test_whole_corpus(corpus_report):
    r, wall = corpus_report
    assert r.count("failed") == 6 and r.count("suspicious") == 1 and r.count("blocked") == 0
    assert r.count("succeeded") == len(r.explanations) - 7
    for e in r.explanations:
        if e.status != "succeeded":
            assert e.cause.confidence <= 0.5, (e.path, e.cause)  # no logs: never guessed high
    assert r.causes == {"hub.cache-miss": 4, "cuda.oom": 1, "cuda.oom.foreign-process": 1, "false-success": 1}
    assert wall < 5


def test_run_with_only_successes_exits_0(capsys):
    if not RUN.is_dir():
        pytest.skip("corpus not available")
    assert main([str(RUN), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["causes"] == {} and all(x["status"] == "succeeded" for x in data["experiments"])


def test_corpus_cli_markdown_and_rerun(tmp_path, capsys):
    if not RESULTS.is_dir():
        pytest.skip("corpus not available")
    md = tmp_path / "postmortem.md"
    assert main([str(RESULTS), "--markdown", str(md)]) == 1
    text = md.read_text()
    assert "### `hub.cache-miss`" in text and "Person_reID_baseline_pytorch_hrnet18_017_parallel" in text
    assert "Person_reID_baseline_pytorch/densenet121" in text  # why the others succeeded
    assert "Tracebacks that were not causes" in text and "scipy" in text
    rerun = json.loads((tmp_path / "postmortem.rerun.json").read_text())
    assert len(rerun["experiments"]) == 6
    par = [x for x in rerun["experiments"] if x["mode"] == "parallel"]
    assert len(par) == 1 and par[0]["foreground"]["model"] == "hrnet18"
    assert par[0]["foreground"]["hyperparameters"] == {"epochs": 1, "learning_rate": 0.05, "dropout": 0.5, "seed": 1334}
    assert par[0]["background"] == {"repo": "examples", "model": "mnist_rnn",
                                    "hyperparameters": {"epochs": 1, "learning_rate": 0.01, "batch_size": 32, "seed": 1}}


def test_siblings_raise_confidence_but_not_above_half(tmp_path):
    """All hrnet18 runs failing while densenet121/pcb of the same run succeed is more evidence."""
    if not RESULTS.is_dir():
        pytest.skip("corpus not available")
    run = tmp_path / "run_20251117_182512"
    for p in HRNET_FAILURES[:2]:
        shutil.copytree(p, run / p.name)
    for name in ("Person_reID_baseline_pytorch_densenet121_041_parallel", "Person_reID_baseline_pytorch_pcb_008"):
        shutil.copytree(RUN / name, run / name)
    r = explain_path(str(run))
    hr = [e for e in r.explanations if e.model == "hrnet18"]
    assert all(e.cause.id == "hub.cache-miss" and 0.4 <= e.cause.confidence <= 0.5 for e in hr)
    text = " ".join(hr[0].chain)
    assert "2 experiments of other models succeeded" in text and "densenet121" in text
    # One experiment folder given alone still sees its run's siblings.
    one = explain_path(str(run / HRNET_FAILURES[0].name))
    assert one.explanations[0].cause.confidence == hr[0].cause.confidence


def test_real_runs_whose_patterns_failed_are_successes_with_metrics_not_extracted(tmp_path):
    """The user's real successes with their metrics removed and their registry's patterns broken (the
    history's 'metrics not extracted' failure kind): each is a success whose metrics were not extracted,
    never a false success; the failures stay failures, the VulBERTa_cnn run stays suspicious."""
    registry = CORPUS / "user-project" / "mutation" / "models_config.json"
    if not RESULTS.is_dir() or not registry.is_file():
        pytest.skip("corpus not available")
    root = tmp_path / "results"
    shutil.copytree(RESULTS, root)
    reg = json.loads(registry.read_text())
    for spec in reg["models"].values():
        lp = spec.get("performance_metrics", {}).get("log_patterns", {})
        for k in lp:
            lp[k] = "NOT-PRINTED " + lp[k]
    (tmp_path / "models_config.json").write_text(json.dumps(reg))
    stripped = set()
    for rec_path in root.rglob("experiment.json"):
        rec = json.loads(rec_path.read_text())
        body = rec.get("foreground", rec)
        if body.get("training_success") and body.get("performance_metrics"):
            body["performance_metrics"] = {}
            rec_path.write_text(json.dumps(rec, indent=2))
            stripped.add(str(rec_path.parent))
    assert len(stripped) >= 100
    r = explain_path(str(root), registry=str(tmp_path / "models_config.json"))
    got = {e.path: e for e in r.explanations}
    for p in stripped:
        e = got[p]
        assert (e.status, e.cause_id) == ("succeeded", "metrics.not-extracted"), (p, e.chain)
    reid = [got[p] for p in stripped if "Person_reID" in p and (Path(p) / "terminal_output.txt").is_file()]
    assert reid and all(e.cause.confidence > 0.5 for e in reid)
    assert any("Rank@1" in v.text for e in reid for v in e.evidence)
    assert any("Rank@1" in f for f in reid[0].fix), reid[0].fix
    assert r.count("failed") == 6 and r.count("suspicious") == 1
    assert got[str(root / VUL.relative_to(RESULTS))].cause_id == "false-success"
