"""One validator for the doctor and the runner: every hostile or malformed value is one line
(file, JSON path, what was expected), found before anything starts, never a traceback, never a
half-written run folder."""
import copy
import json
import os
import shutil

import pytest

from core.validate import check_inputs, load_json
from doctor.cli import main as doctor_main
from runner.cli import main as run_main

HP = {"epochs": {"flag": "--epochs", "type": "int", "default": 3, "range": [1, 9], "distribution": "uniform"},
      "lr": {"flag": "--lr", "type": "float", "default": 0.1, "range": [0.01, 1.0], "distribution": "log_uniform"}}
REG = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                        "supported_hyperparams": HP, "performance_metrics": {"log_patterns": {"acc": "ACC ([0-9.]+)"}}}}}
SET = {"experiment_name": "t", "experiments": [
    {"mode": "default", "repo": "r", "model": "m", "hyperparameters": {"epochs": 2, "lr": 0.5}},
    {"mode": "mutation", "repo": "r", "model": "m", "mutate": ["lr"]}]}


def reg(**repo):
    r = copy.deepcopy(REG)
    r["models"]["r"].update(repo)
    return json.dumps(r)


def entry(**kw):
    s = copy.deepcopy(SET)
    s["experiments"][0].update(kw)
    return json.dumps(s)


# (name, settings text, registry text, JSON path named in the one line)
CASES = [
    ("string for a number", entry(hyperparameters={"epochs": "abc"}), None, "experiments[0].hyperparameters.epochs"),
    ("object as a value", entry(hyperparameters={"epochs": {"a": 1}}), None, "experiments[0].hyperparameters.epochs"),
    ("list as a value", entry(hyperparameters={"lr": [1]}), None, "experiments[0].hyperparameters.lr"),
    ("NaN", json.dumps(SET).replace("0.5", "NaN"), None, "experiments[0].hyperparameters.lr"),
    ("Infinity", json.dumps(SET).replace("0.5", "-Infinity"), None, "experiments[0].hyperparameters.lr"),
    ("1e999", json.dumps(SET).replace("0.5", "1e999"), None, "experiments[0].hyperparameters.lr"),
    ("NUL", entry(hyperparameters={"lr": "0.1\u0000x"}), None, "experiments[0].hyperparameters.lr"),
    ("lone surrogate", json.dumps(SET).replace('"t"', '"\\ud800"'), None, "experiment_name"),
    ("5000-digit integer", json.dumps(SET).replace('"epochs": 2', '"epochs": ' + "9" * 5000), None,
     "experiments[0].hyperparameters.epochs"),
    ("non-string model_flag", None, reg(model_flag=5), "models.r.model_flag"),
    ("int range without an int", None, reg(supported_hyperparams={"epochs": dict(HP["epochs"], range=[1.2, 1.8])}),
     "models.r.supported_hyperparams.epochs.range"),
    ("infinite bound", None, reg().replace("1.0]", "1e999]"), "models.r.supported_hyperparams.lr.range[1]"),
    ("reversed range", None, reg(supported_hyperparams={"lr": dict(HP["lr"], range=[1.0, 0.1])}),
     "models.r.supported_hyperparams.lr.range"),
    ("mutate junk", json.dumps({"experiments": [{"mode": "mutation", "repo": "r", "model": "m", "mutate": [1, None, {}]}]}),
     None, "experiments[0].mutate"),
    ("mode a list", json.dumps({"experiments": [{"mode": ["x"], "repo": "r", "model": "m"}]}), None, "experiments[0].mode"),
    ("deep nesting", '{"experiments": [' + "[" * 100000 + "]" * 100000 + "]}", None, "$"),
    ("moderately deep nesting", '{"experiments": [' + "[" * 200 + "]" * 200 + "]}", None, "experiments[0]"),
    ("performance_metrics a list", None, reg(performance_metrics=[1, 2]), "models.r.performance_metrics"),
    ("unbalanced quote", None, reg(required_args="--data 'x"), "models.r.required_args"),
    ("unbalanced quote in a dict", None, reg(required_args={"dataset": "-d \"d2a"}), "models.r.required_args.dataset"),
    ("invalid regex", None, reg(performance_metrics={"log_patterns": {"acc": "ACC ([0-9.]+"}}),
     "models.r.performance_metrics.log_patterns.acc"),
    ("absurd plan", json.dumps(dict(SET, runs_per_config=1000000000)), None, "runs_per_config"),
    ("runs_per_config a string", json.dumps(dict(SET, runs_per_config="3")), None, "runs_per_config"),
]


def write_project(tmp_path, settings=None, registry=None):
    root = tmp_path / "proj"
    (root / "repos" / "r").mkdir(parents=True)
    script = root / "repos" / "r" / "train.sh"
    script.write_text('#!/bin/bash\necho "ACC 0.9"\ntouch ran\n')
    script.chmod(0o755)
    (root / "reg.json").write_text(registry or json.dumps(REG))
    (root / "set.json").write_text(settings or json.dumps(SET), encoding="utf-8", errors="surrogatepass")
    return root


def common(root, settings=None):
    return ["--project-root", str(root), "--models-config", str(root / "reg.json"),
            "-ec", settings or str(root / "set.json"), "--only", "settings"]


@pytest.mark.parametrize("name,settings,registry,path", CASES, ids=[c[0] for c in CASES])
def test_each_bad_value_is_one_line_naming_file_and_path(tmp_path, name, settings, registry, path):
    root = write_project(tmp_path, settings, registry)
    problems = check_inputs(str(root / "set.json"), str(root / "reg.json"))
    assert problems, name
    assert any(p.path == path or p.path.startswith(path + "[") for p in problems), [p.line() for p in problems]
    for p in problems:
        assert p.line().startswith(str(root)) and "\n" not in p.line()


def test_the_valid_files_and_the_users_registry_pass(tmp_path):
    root = write_project(tmp_path)
    assert check_inputs(str(root / "set.json"), str(root / "reg.json")) == []
    corpus = "/work/shared/corpus/user-project"
    if not os.path.isdir(corpus):
        pytest.skip("the user's corpus is not on this machine")
    reg_copy = tmp_path / "models_config.json"
    shutil.copy(f"{corpus}/mutation/models_config.json", reg_copy)
    settings = sorted(os.listdir(f"{corpus}/settings"))
    assert check_inputs(None, str(reg_copy)) == []
    for name in settings:
        if name.endswith(".json"):
            shutil.copy(f"{corpus}/settings/{name}", tmp_path / name)
            problems = check_inputs(str(tmp_path / name), str(reg_copy))
            assert [p for p in problems if p.fatal] == [], name


@pytest.mark.parametrize("name,settings,registry,path", [c for c in CASES if c[0] in (
    "string for a number", "NaN", "lone surrogate", "5000-digit integer", "mutate junk", "deep nesting",
    "performance_metrics a list", "unbalanced quote", "invalid regex", "absurd plan", "mode a list")],
    ids=lambda c: c if isinstance(c, str) and len(c) < 40 else "")
def test_the_runner_refuses_before_anything_starts(tmp_path, capsys, name, settings, registry, path):
    root = write_project(tmp_path, settings, registry)
    code = run_main(common(root) + ["--results-dir", str(root / "results"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f": {path}: " in err, err
    assert not (root / "results").exists() and not (root / "repos" / "r" / "ran").exists()


def test_the_doctor_blocks_an_entry_with_a_bad_value_and_refuses_files_it_cannot_load(tmp_path, capsys):
    root = write_project(tmp_path, entry(hyperparameters={"epochs": "abc"}))
    code = doctor_main(common(root) + ["--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    bad = [f for f in out["findings"] if f["id"] == "settings.bad-value"]
    assert bad and bad[0]["experiments"] == ["r_m_001"]
    verdicts = {e["id"]: e["verdict"] for e in out["experiments"]}
    assert verdicts["r_m_001"] == "blocked" and verdicts["r_m_002"] == "pass"
    root2 = write_project(tmp_path / "b", None, reg(required_args="--data 'x"))
    assert doctor_main(common(root2)) == 2
    err = capsys.readouterr().err
    assert "models.r.required_args: No closing quotation" in err and "Traceback" not in err


def test_a_device_or_fifo_as_the_settings_file_is_one_line_without_reading_it(tmp_path, capsys):
    root = write_project(tmp_path)
    fifo = tmp_path / "settings.fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        data, problems = load_json(path)
        assert data is None and "not a regular file" in problems[0].expected
        assert run_main(common(root, path) + ["--results-dir", str(root / "results")]) == 2
        assert doctor_main(common(root, path)) == 2
    err = capsys.readouterr().err
    assert err.count("not a regular file") == 4 and "Traceback" not in err


def test_the_experiment_limit_is_an_option(tmp_path, capsys):
    root = write_project(tmp_path, json.dumps(dict(SET, runs_per_config=30)))
    argv = common(root) + ["--results-dir", str(root / "results"), "--dry-run", "--json"]
    assert run_main(argv + ["--max-experiments", "50"]) == 2
    assert "the plan has 60 experiments, more than --max-experiments 50" in capsys.readouterr().err
    assert run_main(argv + ["--max-experiments", "60"]) == 0
    assert len(json.loads(capsys.readouterr().out)["experiments"]) == 60
    assert doctor_main(common(root) + ["--max-experiments", "50"]) == 2
    assert "more than --max-experiments 50" in capsys.readouterr().err
    assert doctor_main(common(root) + ["--max-experiments", "60"]) == 0


BAD_MANIFESTS = [
    ("a list", "[1, 2]", "$"),
    ("experiments not a list", '{"experiments": "x"}', "experiments"),
    ("an experiment without id", '{"experiments": [{"id": 5}]}', "experiments[0]"),
    ("timeout a string", '{"options": {"timeout": "abc"}, "experiments": []}', "options.timeout"),
    ("unknown backend", '{"options": {"backend": "k8s"}, "experiments": []}', "options.backend"),
    ("NaN seed", '{"seed": NaN, "experiments": []}', "seed"),
    ("hyperparameters a list", '{"experiments": [{"id": "r_m_001", "foreground": {"repo": "r", "model": "m", '
                               '"hyperparameters": [1]}}]}', "experiments[0].foreground.hyperparameters"),
    ("truncated", '{"experiments": [{"id": "r_m', "line 1 column 25"),
]


@pytest.mark.parametrize("name,text,path", BAD_MANIFESTS, ids=[m[0] for m in BAD_MANIFESTS])
def test_resume_of_a_malformed_run_json_is_one_line_per_problem(tmp_path, capsys, name, text, path):
    run_dir = tmp_path / "run_x"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(text)
    assert run_main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"run.json: {path}: " in err and "Traceback" not in err, err
    assert sorted(os.listdir(run_dir)) == ["run.json"]  # nothing written


def test_resume_survives_a_journal_with_garbage_lines(tmp_path, capsys):
    root = write_project(tmp_path)
    assert run_main(common(root) + ["--results-dir", str(root / "results"), "-q", "--seed", "1"]) == 0
    (run_dir,) = (root / "results").glob("run_*")
    journal = sorted(run_dir.glob("journal*.jsonl"))[-1]
    with open(journal, "a") as f:
        f.write('not json\n[1, 2]\n{"event": "experiment-end", "experiment_id": 5}\n'
                '{"event": "attempt-start", "experiment_id": "r_m_002", "attempt": "x"}\n'
                '{"event": "experiment-end", "experiment_id": "r_m_001", "status": ["passed"]}\n{"event": "exp')
    code = run_main(["--resume", str(run_dir), "-q"])
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err, err


def test_a_secret_in_a_bad_value_is_masked_in_the_message(tmp_path):
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    root = write_project(tmp_path, entry(hyperparameters={"epochs": token}))
    (p,) = check_inputs(str(root / "set.json"), str(root / "reg.json"))
    assert p.path == "experiments[0].hyperparameters.epochs" and token[:10] not in p.line()
