"""Seeded fuzzing of everything a user (or a hostile one) hands us: settings files and registries
through the validator, the doctor and the runner's dry run; Hugging Face and torch hub caches
through the cache inspection and the doctor; results folders (records, logs, journals) through
explain. A few thousand generated inputs, in process, each family under a time bound: no
traceback, no exit code outside 0/1/2/3, no hang, no file written outside the results tree, no
line of a file outside the explained tree in explain's output."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import threading
from pathlib import Path
from typing import Any, Callable, List

import pytest

SEED = 20261201
FAMILY_BOUND = 240  # seconds a whole family may take before it counts as a hang
SECRET = "FUZZ-SECRET-LINE-of-a-root-file"

REGISTRY = {"models": {"r": {
    "path": "repos/r", "train_script": "./train.sh", "models": ["m", "n"], "model_flag": "-n",
    "required_args": ["--data", "./d"],
    "supported_hyperparams": {
        "epochs": {"flag": "--epochs", "type": "int", "default": 3, "range": [1, 9], "distribution": "uniform"},
        "lr": {"flag": "--lr", "type": "float", "default": 0.1, "range": [0.01, 1.0], "distribution": "log_uniform"},
        "opt": {"flag": "--opt", "type": "str", "default": "sgd"}},
    "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}},
    "requires": {"m": [{"hf": "org/tiny", "files": ["model.safetensors"]}]}}}}
SETTINGS = {"experiment_name": "fuzz", "description": "d", "governor": "performance", "runs_per_config": 1,
            "max_retries": 2, "mode": "mutation", "use_deduplication": False, "historical_csvs": [],
            "experiments": [
                {"mode": "default", "repo": "r", "model": "m", "hyperparameters": {"epochs": 2, "lr": 0.5}},
                {"mode": "mutation", "repo": "r", "model": "n", "mutate": ["epochs", "lr"], "runs_per_config": 2},
                {"mode": "parallel", "foreground": {"repo": "r", "model": "m", "mode": "mutation", "mutate": ["lr"]},
                 "background": {"repo": "r", "model": "n", "hyperparameters": {"epochs": 1}}}]}
RECORD = {"experiment_id": "r_m_001", "timestamp": "2026-01-07T01:52:45.1", "repository": "r", "model": "m",
          "hyperparameters": {"epochs": 2}, "duration_seconds": 50.0, "energy_metrics": {},
          "performance_metrics": {"acc": 1.0}, "training_success": False, "retries": 0,
          "error_message": "Error pattern found: Training.*FAILED", "status": "failed", "exit_code": 1,
          "attempts": [{"attempt": 1, "log": "training.log", "exit_code": 1}], "log": "training.log"}
LOGS = [
    "Epoch 1: loss=0.3\nTraceback (most recent call last):\n  File \"t.py\", line 1, in <module>\n"
    "huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub\n",
    "RuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 9.77 GiB total capacity)\n",
    "httpx.ConnectTimeout: _ssl.c:1000: The handshake operation timed out\nHF_TOKEN=hf_abcdefghijklmnopqrstu\n",
    "Training completed successfully\nRank@1: 0.9 mAP: 0.8\n", ""]


def odd_values(rng: random.Random) -> Any:
    """One value a JSON file may hold where something else is expected."""
    return rng.choice([
        None, True, False, 0, -1, 1.5, -1e308, 2 ** 70, "", "x" * rng.choice([1, 100, 5000]), "\x00", "\ud800",
        "../../etc/passwd", "a b 'c", "$(touch /tmp/pwned)", [], {}, [1, None, {}], ["x"], {"a": {"b": [None]}},
        1000000000, float("nan"), float("inf"), [1.2, 1.8], ["all"], {"flag": None}, "默认", "ACC ((", "*"])


def mutate(rng: random.Random, obj: Any, n: int) -> Any:
    """`obj` with `n` random edits: a value replaced, a key removed or added, a list emptied or grown."""
    obj = copy.deepcopy(obj)
    for _ in range(n):
        parent, key = _pick(rng, obj)
        if parent is None:
            return odd_values(rng)
        op = rng.random()
        if op < 0.55:
            parent[key] = odd_values(rng)
        elif op < 0.7 and isinstance(parent, dict):
            parent.pop(key, None)
        elif op < 0.85 and isinstance(parent, dict):
            parent[rng.choice(["repository", "mutate_params", "timeout", "extra", "models", "mode", key + "_"])] = \
                odd_values(rng)
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(rng.choice(parent)) if parent else odd_values(rng))
        else:
            parent[key] = [parent[key]]
    return obj


def _pick(rng: random.Random, obj: Any):
    """A random (container, key) inside obj, or (None, None) for a scalar."""
    spots = []

    def walk(x):
        if isinstance(x, dict):
            for k in list(x):
                spots.append((x, k))
                walk(x[k])
        elif isinstance(x, list):
            for i in range(len(x)):
                spots.append((x, i))
                walk(x[i])

    walk(obj)
    return rng.choice(spots) if spots else (None, None)


def as_text(rng: random.Random, obj: Any) -> str:
    """JSON text, sometimes damaged: cut, a byte changed, deep nesting, a 5000-digit number."""
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    r = rng.random()
    if r < 0.06:
        return text[:rng.randrange(len(text) + 1)]
    if r < 0.1:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(["\x00", "}", "\"", "\\", "\udcff", "[" * 5000]) + text[i:]
    if r < 0.13:
        return "[" * 3000 + "]" * 3000
    if r < 0.15:
        return text.replace("1,", "1" + "7" * 5000 + ",", 1)
    return text


def write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))


def call(fn: Callable[[List[str]], int], argv: List[str]) -> tuple:
    """(exit code, stdout, stderr) of an in-process command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = fn(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def bounded(fn: Callable[[], None]) -> None:
    failure = []

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below with its input
            failure.append(e)
        failure.append(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(FAMILY_BOUND)
    assert failure, f"still running after {FAMILY_BOUND} s: a hang"
    if failure[0] is not None:
        raise failure[0]


def files_under(root: Path) -> set:
    out = set()
    for d, dirs, files in os.walk(root):
        out.update(os.path.join(d, n) for n in dirs + files)
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A project, a home and caches of our own; the environment points at them."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    proj = tmp_path / "proj"
    (proj / "repos" / "r").mkdir(parents=True)
    (proj / "repos" / "r" / "train.sh").write_text("#!/bin/sh\necho ACC 1.0\n")
    (proj / "repos" / "r" / "train.sh").chmod(0o755)
    (tmp_path / "outside").write_text(SECRET + "\n")
    for k in list(os.environ):
        if k.startswith(("HF_", "HUGGING", "TORCH_", "XDG_")) or k.lower().endswith("_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_clean_exit(what: str, code, err: str, files: str) -> None:
    """0 all clear, 1 something blocked or failed, 2 unusable input, 3 (the doctor) some unverified."""
    assert code in (0, 1, 2, 3), f"{what}: exit {code!r}; inputs: {files}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{what}: traceback; inputs: {files}\n{err[-3000:]}"


def test_settings_and_registries_through_validator_doctor_and_runner(sandbox):
    from core.validate import check_inputs
    from doctor.cli import main as doctor
    from runner.cli import main as runner

    rng = random.Random(SEED)
    proj = sandbox / "proj"
    allowed = (str(sandbox / "home"),)
    before = files_under(sandbox)

    def family():
        for i in range(300):
            s = mutate(rng, SETTINGS, rng.randint(0, 3)) if rng.random() < 0.8 else SETTINGS
            r = mutate(rng, REGISTRY, rng.randint(0, 3)) if rng.random() < 0.5 else REGISTRY
            sp, rp = proj / f"s{i % 7}.json", proj / f"m{i % 7}.json"
            write(sp, as_text(rng, s))
            write(rp, as_text(rng, r))
            shown = f"{sp} {rp} (input {i})"
            check_inputs(str(sp), str(rp))
            common = ["-ec", str(sp), "--models-config", str(rp), "--project-root", str(proj)]
            code, _out, err = call(doctor, common + ["--only", "settings,cache", "--json"])
            check_clean_exit("mutation-doctor", code, err, shown)
            if i % 2 == 0:
                code, _out, err = call(runner, common + ["--only", "settings", "--dry-run", "--json"])
                check_clean_exit("mutation-run --dry-run", code, err, shown)

    bounded(family)
    new = files_under(sandbox) - before
    assert {p for p in new if not p.startswith(allowed) and not p.startswith(str(proj / "s"))
            and not p.startswith(str(proj / "m"))} == set()


def fuzz_cache(rng: random.Random, hub: Path, outside: Path) -> None:
    """A models--org--tiny folder with refs, snapshot links, blobs and tree listings drawn at random."""
    import shutil

    shutil.rmtree(hub, ignore_errors=True)
    repo = hub / "models--org--tiny"
    commit = "a" * 40
    blob_name = rng.choice(["b" * 64, "etag123", "c" * 64])
    for d in ("refs", f"snapshots/{commit}", "blobs", "trees"):
        (repo / d).mkdir(parents=True)
    _place(rng, repo / "refs" / "main", [commit, commit + "\n", "", "zz", "../../x", "a" * 5000], outside)
    _place(rng, repo / "blobs" / blob_name, ["", "version https://git-lfs.github.com/spec/v1\n", "w" * 100], outside)
    snap = repo / "snapshots" / commit / "model.safetensors"
    kind = rng.choice(["link", "link", "dangling", "outside", "absolute", "file", "fifo", "dir", "none", "loop"])
    if kind == "link":
        snap.symlink_to(f"../../blobs/{blob_name}")
    elif kind == "dangling":
        snap.symlink_to("../../blobs/nothing")
    elif kind == "outside":
        snap.symlink_to(os.path.relpath(outside, snap.parent))
    elif kind == "absolute":
        snap.symlink_to(outside)
    elif kind == "loop":
        snap.symlink_to("model.safetensors")
    elif kind != "none":
        _place(rng, snap, ["w" * 10], outside, kind)
    _place(rng, repo / "trees" / f"{commit}.json",
           [json.dumps({"files": {"model.safetensors": rng.choice([{"size": 100}, {"size": "x"}, {}, None, []])}}),
            "[" * 2000, "{"], outside)


def _place(rng: random.Random, path: Path, contents: List[str], outside: Path, kind: str = "") -> None:
    kind = kind or rng.choice(["file"] * 6 + ["fifo", "dir", "none", "outside"])
    if kind == "file":
        path.write_text(rng.choice(contents))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "outside":
        path.symlink_to(outside)


def test_caches_through_inspection_and_the_doctor(sandbox):
    from core import hubcache
    from doctor.cli import main as doctor

    rng = random.Random(SEED + 1)
    hub = sandbox / "home" / "hub"
    outside = sandbox / "outside"
    proj = sandbox / "proj"
    write(proj / "s.json", json.dumps(SETTINGS))
    write(proj / "m.json", json.dumps(REGISTRY))
    statuses = {hubcache.PRESENT, hubcache.MISSING, hubcache.UNREADABLE, hubcache.BROKEN}

    def family():
        for i in range(900):
            fuzz_cache(rng, hub, outside)
            state = hubcache.inspect_hf_file(str(hub), "org/tiny", "model.safetensors", verify=rng.random() < 0.5,
                                             memo=hubcache.HashMemo(None))
            assert state.status in statuses, (i, state)
            assert not (state.status == hubcache.PRESENT and os.path.realpath(state.path) == str(outside)), (i, state)
            ck = hubcache.inspect_torch_checkpoint(str(hub / "models--org--tiny"), "refs", verify=True,
                                                   memo=hubcache.HashMemo(None))
            assert ck.status in statuses
            assert hubcache.inspect_path(str(hub / "models--org--tiny" / rng.choice(["refs/main", "blobs", "trees"]))
                                         ).status in statuses
            if i % 20 == 0:
                code, out, err = call(doctor, ["-ec", str(proj / "s.json"), "--models-config", str(proj / "m.json"),
                                               "--project-root", str(proj), "--only", "settings,cache", "--json"])
                check_clean_exit("mutation-doctor (cache)", code, err, f"cache drawn at input {i}")
                assert SECRET not in out + err

    bounded(family)


def fuzz_results(rng: random.Random, results: Path, outside: Path) -> Path:
    """A run folder with records, logs and a journal drawn at random."""
    run = results / f"run_20260107_0152{rng.randrange(100):02d}"
    run.mkdir(parents=True)
    for n in range(rng.randint(1, 3)):
        exp = run / f"r_m_{n + 1:03d}"
        exp.mkdir()
        rec = mutate(rng, RECORD, rng.randint(0, 4))
        if rng.random() < 0.2:
            rec = {"experiment_id": exp.name, "foreground": rec, "background": mutate(rng, RECORD, 2), "mode": "parallel"}
        if rng.random() < 0.2 and isinstance(rec, dict):
            rec["log"] = rng.choice([str(outside), "../../../outside", "/dev/zero", "training.log"])
        write(exp / "experiment.json", as_text(rng, rec))
        kind = rng.choice(["file"] * 6 + ["fifo", "dir", "outside", "none", "long", "binary"])
        log = exp / "training.log"
        if kind == "file":
            log.write_text("".join(rng.choice(LOGS) for _ in range(rng.randint(1, 3))))
        elif kind == "long":
            log.write_text("x" * 100_000 + "\nRuntimeError: " + "y" * 50_000)
        elif kind == "binary":
            log.write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
        elif kind != "none":
            _place(rng, log, [""], outside, kind)
    if rng.random() < 0.5:
        write(run / "journal.jsonl", "\n".join(as_text(rng, mutate(rng, {"event": "attempt-end", "experiment_id": "r_m_001",
                                                                           "record": {"attempt": 1}}, 2))
                                              for _ in range(3)))
    return run


def test_results_folders_through_explain(sandbox):
    import shutil

    from doctor.explain import main as explain

    rng = random.Random(SEED + 2)
    results = sandbox / "results"
    outside = sandbox / "outside"
    before = files_under(sandbox)

    def family():
        for i in range(200):
            shutil.rmtree(results, ignore_errors=True)
            run = fuzz_results(rng, results, outside)
            argv = [str(run)] + rng.choice([[], ["--json"], ["--markdown", str(results / "report.md")], ["-v"]])
            code, out, err = call(explain, argv)
            check_clean_exit("explain", code, err, f"results drawn at input {i}")
            assert SECRET not in out + err, f"explain quoted a file outside the tree (input {i})"
            if (results / "report.md").exists():
                assert SECRET not in (results / "report.md").read_text(errors="replace")

    bounded(family)
    new = files_under(sandbox) - before
    assert {p for p in new if not p.startswith((str(results), str(sandbox / "home")))} == set()
