"""mutation-run's pure parts: plan expansion, command lines, log reading, the results format."""
import csv
import os
import json
import math
import random
from pathlib import Path

import pytest

from core.model import Experiment, Side
from core.registry import load_registry
from runner.command import build_argv, format_value
from runner.expand import expand, sample_value
from runner.logtail import classify, error_excerpt, extract_metrics
from runner.results import Journal, journal_state, summary_columns, write_summary

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(str(ROOT / "settings" / "models_config.json"), str(ROOT))


def _exp(i, repo, model, mode="mutation", mutate=("all",), hp=None):
    spec = REGISTRY.repos[repo]
    names = tuple(spec.hyperparams) if "all" in mutate else tuple(mutate)
    return Experiment(id=f"{repo}_{model}_{i:03d}", mode=mode,
                      foreground=Side(repo=repo, model=model, hyperparameters=hp or {}, mutate=names if mode != "default" else ()))


# -- expansion ----------------------------------------------------------------------------------
def test_mutation_is_reproducible_in_range_distinct_and_never_the_defaults():
    exps = [_exp(i, "Person_reID_baseline_pytorch", "hrnet18") for i in range(1, 41)]
    a = expand(exps, REGISTRY, seed=7)
    b = expand(exps, REGISTRY, seed=7)
    c = expand(exps, REGISTRY, seed=8)
    assert [j.foreground.hyperparameters for j in a] == [j.foreground.hyperparameters for j in b]
    assert [j.foreground.hyperparameters for j in a] != [j.foreground.hyperparameters for j in c]
    spec = REGISTRY.repos["Person_reID_baseline_pytorch"]
    combos = set()
    for j in a:
        hp = j.foreground.hyperparameters
        assert set(hp) == set(spec.hyperparams)
        for name, v in hp.items():
            h = spec.hyperparams[name]
            assert h.range[0] <= v <= h.range[1]
            assert isinstance(v, int) if h.type == "int" else isinstance(v, float)
        assert hp != {n: h.default for n, h in spec.hyperparams.items()}
        combos.add(tuple(sorted(hp.items())))
    assert len(combos) == len(a)


def test_single_small_int_range_gives_distinct_values_and_skips_the_default():
    # kfold: int in [2, 10], default 10 -> at most 8 distinct non-default draws
    exps = [_exp(i, "bug-localization-by-dnn-and-rvsm", "default", mutate=("kfold",)) for i in range(1, 9)]
    jobs = expand(exps, REGISTRY, seed=1)
    values = [j.foreground.hyperparameters["kfold"] for j in jobs]
    assert sorted(values) == list(range(2, 10))
    assert all(not j.warnings for j in jobs)
    # a ninth cannot be new: it is drawn anyway and says so
    more = expand(exps + [_exp(9, "bug-localization-by-dnn-and-rvsm", "default", mutate=("kfold",))], REGISTRY, seed=1)
    assert more[-1].warnings and "could not draw" in more[-1].warnings[0]


def test_log_uniform_draws_spread_over_decades():
    from core.registry import Hyperparam

    h = Hyperparam("wd", "--wd", "float", 0.0, (1e-5, 1e-3), "log_uniform")
    rng = random.Random(3)
    xs = [sample_value(h, rng) for _ in range(4000)]
    assert all(1e-5 <= x <= 1e-3 for x in xs)
    below_1e4 = sum(x < 1e-4 for x in xs) / len(xs)
    assert 0.45 < below_1e4 < 0.55  # uniform would put ~9% there
    hi = Hyperparam("it", "--it", "int", 10000, (1000, 20000), "log_uniform")
    ys = [sample_value(hi, rng) for _ in range(200)]
    assert all(isinstance(y, int) and 1000 <= y <= 20000 for y in ys)
    assert math.isclose(sorted(ys)[100], math.sqrt(1000 * 20000), rel_tol=0.35)


def test_default_mode_keeps_given_values_and_parallel_background_is_fixed():
    fg = Side(repo="demo", model="scratch_mlp", hyperparameters={"epochs": 2}, mutate=("learning_rate",))
    bg = Side(repo="examples", model="mnist", hyperparameters={"epochs": 1})
    par = Experiment(id="demo_scratch_mlp_001_parallel", mode="parallel", foreground=fg, background=bg)
    dflt = _exp(2, "demo", "scratch_mlp", mode="default", hp={"epochs": 4, "learning_rate": 0.1})
    jobs = expand([par, dflt], REGISTRY, seed=0)
    assert list(jobs[0].foreground.hyperparameters) == ["learning_rate"]  # a mutated side runs only what it mutates
    assert jobs[0].foreground.hyperparameters["learning_rate"] != 0.05
    assert jobs[0].background.hyperparameters == {"epochs": 1}
    assert jobs[1].foreground.hyperparameters == {"epochs": 4, "learning_rate": 0.1}
    assert jobs[0].to_dict()["background"]["repo"] == "examples"


# -- command lines --------------------------------------------------------------------------------
def test_argv_like_mutation_py():
    spec = REGISTRY.repos["VulBERTa"]
    argv = build_argv(spec, "mlp", {"learning_rate": 3e-05, "epochs": 12.0, "seed": 42})
    assert argv == ["./train.sh", "-n", "mlp", "-d", "d2a", "--learning_rate", "0.000030", "--epochs", "12",
                    "--seed", "42"]  # the order of the values given
    assert build_argv(REGISTRY.repos["MRT-OAST"], "default", {}) == ["./train.sh"]
    assert format_value("float", 0.1) == "0.100000" and format_value("int", 7.6) == "7"  # int(), as mutation.py


def test_a_train_script_that_lost_its_executable_bit_runs_through_its_interpreter(tmp_path):
    import dataclasses

    from runner.command import side_command
    from runner.expand import SideRun

    spec = dataclasses.replace(REGISTRY.repos["MRT-OAST"], path=str(tmp_path))
    reg = dataclasses.replace(REGISTRY, repos={**REGISTRY.repos, "MRT-OAST": spec})
    side = SideRun("MRT-OAST", "default", {})
    (tmp_path / "train.sh").write_text("#!/bin/bash\n")
    assert side_command(reg, side) == (["bash", "./train.sh"], str(tmp_path))  # a copy that lost chmod +x
    (tmp_path / "train.sh").chmod(0o755)
    assert side_command(reg, side) == (["./train.sh"], str(tmp_path))


# -- log reading ----------------------------------------------------------------------------------
SSL_UNDER_CACHE_MISS = """\
Loading model hrnet_w18
Traceback (most recent call last):
  File "/x/httpx/_transports/default.py", line 101, in map_httpcore_exceptions
    yield
httpcore.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1017)

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/huggingface_hub/file_download.py", line 1533, in _get_metadata_or_catch_error
    metadata = get_hf_file_metadata(
               ^^^^^^^^^^^^^^^^^^^^^
httpx.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1017)

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "train.py", line 10, in <module>
    model = timm.create_model('hrnet_w18', pretrained=True)
huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local cache. Please check your connection and try again or make sure your Internet connection is on.
Training FAILED
"""

CONNECT_TIMEOUT = """\
epoch 1
Traceback (most recent call last):
  File "download.py", line 3, in <module>
    fetch()
httpx.ConnectTimeout: _ssl.c:1000: The handshake operation timed out
"""


def test_excerpt_is_the_real_exception_chain_and_a_cache_miss_is_not_retried():
    lines = SSL_UNDER_CACHE_MISS.splitlines()
    ex = error_excerpt(lines)
    assert ex[0].startswith("httpcore.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert ex[-1].startswith("huggingface_hub.errors.LocalEntryNotFoundError: An error happened")
    assert not any(x.strip().startswith(("File ", "^")) for x in ex)
    transient, reason = classify(lines, 1, None, False)
    assert not transient and "cache" in reason


@pytest.mark.parametrize("text, transient", [
    (CONNECT_TIMEOUT, True),
    ("Traceback (most recent call last):\n  File \"a\", line 1\nhttpx.ConnectError: [Errno 104] Connection reset by peer\n", True),
    ("Traceback (most recent call last):\n  File \"a\", line 1\nModuleNotFoundError: No module named 'scipy'\n", False),
    ("Traceback (most recent call last):\n  File \"a\", line 1\nFileNotFoundError: [Errno 2] No such file or directory: 'data/x.csv'\n", False),
    ("Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'repo'\n", False),
    ("Traceback (most recent call last):\n  File \"a\", line 1\nRuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 9.77 GiB total capacity; 8.10 GiB already allocated; ...)\n", False),
    ("ERROR: Python not found at /home/u/miniconda3/envs/reid/bin/python\n", False),
    ("usage: train.py [-h]\ntrain.py: error: unrecognized arguments: --bogus 1\n", False),
])
def test_transient_failures_are_told_apart(text, transient):
    assert classify(text.splitlines(), 1, None, False)[0] is transient


def test_killed_and_timed_out_are_transient_but_a_kill_we_sent_is_not_a_reason():
    assert classify(["step 3"], None, "SIGKILL", False) == (True, "killed by SIGKILL")
    assert classify(["step 3"], None, "SIGKILL", True) == (True, "timeout")
    assert classify(["step 3", "Killed"], 137, None, False)[0] is True


def test_metrics_last_match_wins(tmp_path):
    log = tmp_path / "training.log"
    log.write_text("Rank@1: 0.5\nRank@1: 0.84\nmAP: 0.63\nRank@5: n/a\n")
    pats = REGISTRY.repos["Person_reID_baseline_pytorch"].log_patterns
    assert extract_metrics(str(log), pats) == {"rank1": 0.84, "map": 0.63}


# -- results format -------------------------------------------------------------------------------
def test_summary_header_is_mutation_py_s_on_their_own_records(corpus, tmp_path):
    run = corpus / "user-results" / "run_20260106_220807"
    records = [json.loads(p.read_text()) for p in sorted(run.glob("*/experiment.json"))]
    with open(run / "summary.csv", newline="") as f:
        theirs = next(csv.reader(f))
    for r in records:
        r["status"] = "passed" if (r.get("foreground") or r)["training_success"] else "failed"
    assert summary_columns(records) == theirs + ["status"]
    out = tmp_path / "summary.csv"
    write_summary(str(out), records)
    with open(out, newline="") as f:
        rows = {r["experiment_id"]: r for r in csv.DictReader(f)}
    with open(run / "summary.csv", newline="") as f:
        their_rows = {r["experiment_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(their_rows)
    for eid, row in their_rows.items():
        ours = rows[eid]
        for col in theirs:
            if col == "timestamp":
                continue  # mutation.py takes the summary timestamp a few microseconds after the record's
            a, b = ours[col], row[col]
            if a and b and col not in ("experiment_id", "repository", "model", "training_success"):
                assert math.isclose(float(a), float(b), rel_tol=1e-9), (eid, col, a, b)
            else:
                assert a == b, (eid, col, a, b)


def test_journal_survives_a_torn_last_line_and_tells_what_finished(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(str(path))
    j.write("experiment-start", experiment_id="a")
    j.write("attempt-start", experiment_id="a", attempt=1, log="training.log", started="2025-01-01T00:00:00+00:00")
    j.write("attempt-end", experiment_id="a", record={"attempt": 1, "exit_code": 0})
    j.write("experiment-end", experiment_id="a", status="passed")
    j.write("experiment-start", experiment_id="b")
    j.write("attempt-start", experiment_id="b", attempt=1, log="training.log", started="2025-01-01T00:00:01+00:00")
    j.close()
    with open(path, "a") as f:
        f.write('{"event": "attempt-end", "experiment_id": "b", "rec')  # cut by kill -9
    st = journal_state(Journal.read(str(path)))
    assert st["a"]["status"] == "passed" and st["a"]["open_attempt"] is None
    assert st["b"]["status"] is None and st["b"]["open_attempt"]["attempt"] == 1


# -- ownership ------------------------------------------------------------------------------------
@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_give_back_chowns_what_the_run_created_and_nothing_else(tmp_path):
    import time

    from core.ownership import give_back, snapshot

    uid, gid = 54321, 54321
    home = tmp_path / "home"
    home.mkdir()
    old = home / "old_root_file"
    old.write_text("was root's before the run")
    hub = home / ".cache" / "huggingface" / "hub"
    before = snapshot([home])
    since = time.time()
    hub.mkdir(parents=True)
    (hub / "models--x" / "blobs").mkdir(parents=True)
    (hub / "models--x" / "blobs" / "abc").write_text("w")
    target = tmp_path / "root_file_outside"  # a link out of the roots (not a system file: a broken
    target.write_text("root's")               # give_back must not chown the machine's files)
    (hub / "link").symlink_to(target)
    mine = hub / "already_theirs"
    mine.write_text("x")
    os.chown(mine, 1000, 1000)

    assert len(give_back([hub], uid, gid, since=since + 3600, within=str(home))) == 0  # nothing that recent

    res = give_back([hub], uid, gid, since=since, before=before, within=str(home))
    changed = set(res.changed)
    assert {str(home / ".cache"), str(home / ".cache" / "huggingface"), str(hub),
            str(hub / "models--x" / "blobs" / "abc"), str(hub / "link")} <= changed
    assert os.lstat(hub / "link").st_uid == uid and target.stat().st_uid == 0  # the link, not its target
    assert mine.stat().st_uid == 1000 and str(mine) not in changed  # only root's files
    assert home.stat().st_uid == 0 and old.stat().st_uid == 0  # outside the roots / there before
    res = give_back([home], uid, gid, before=before)
    assert str(old) not in res.changed and old.stat().st_uid == 0
    assert give_back([tmp_path / "missing"], uid, gid).changed == ()
