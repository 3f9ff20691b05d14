"""Command lines and draws as mutation.py makes them: flag order, value format, sampling rules.

The expected command lines come from a table of the rules (below), written from what mutation.py
is documented to do, and are compared with what the runner builds from the same settings file.
"""
import json
import random
import shutil
from collections import Counter

import pytest

from core.plan import load_plan
from core.registry import Hyperparam, load_registry
from runner.command import build_argv, format_value
from runner.expand import MAX_DRAWS, expand, expand_with_stats, sample_value

REGISTRY_JSON = {"models": {
    "r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m", "default"], "model_flag": "-n",
          "required_args": {"dataset": "-d d2a"},
          "supported_hyperparams": {
              "epochs": {"flag": "--epochs", "type": "int", "default": 10, "range": [5, 15]},
              "learning_rate": {"flag": "--lr", "type": "float", "default": 0.01, "range": [0.001, 0.1],
                                "distribution": "log_uniform"},
              "seed": {"flag": "--seed", "type": "int", "default": 1, "range": [0, 9999]},
              "weight_decay": {"flag": "--wd", "type": "float", "default": 0.0, "range": [1e-5, 1e-3],
                               "distribution": "log_uniform", "zero_probability": 0.3}}},
    "plain": {"path": "repos/plain", "train_script": "./run.sh", "models": ["default"],
              "supported_hyperparams": {"kfold": {"flag": "--kfold", "type": "int", "default": 10, "range": [2, 10]},
                                        "alpha": {"flag": "--alpha", "type": "float", "default": 1e-5,
                                                  "range": [5e-6, 2e-5], "distribution": "log_uniform"}}}}}


# -- the rule table --------------------------------------------------------------------------------
def rule_mode(entry, top):
    """The entry's kind as mutation.py reads it: its own mode, else the file's, else mutation."""
    mode = entry.get("mode", top.get("mode", "mutation"))
    return mode if mode in ("default", "parallel") else "mutation"


def rule_names(side, supported, mutated):
    """The flag order: a fixed side in the file's order, a mutated one in the mutate list's
    (`all`: the registry's order), names the registry does not know dropped."""
    if not mutated:
        return [n for n in (side.get("hyperparameters") or {}) if n in supported]
    mutate = side.get("mutate", ["all"])
    if isinstance(mutate, str):
        mutate = [mutate]
    return list(supported) if "all" in mutate else [n for n in mutate if n in supported]


def rule_prefix(spec, model):
    out = [spec["train_script"]]
    if spec.get("model_flag") and model != "default":
        out += [spec["model_flag"], model]
    for value in (spec.get("required_args") or {}).values():
        out += value.split()
    return out


def rule_sides(entry, top):
    """(side dict, mutated?) per side of an entry, foreground first."""
    if rule_mode(entry, top) == "parallel":
        fg = entry["foreground"]
        return [(fg, fg.get("mode", "mutation") == "mutation"), (entry["background"], False)]
    return [(entry, rule_mode(entry, top) == "mutation")]


def check_side(argv, side, mutated, registry_json):
    """argv against the rules; returns the number of flags checked."""
    repo = side.get("repo") or side.get("repository")
    spec = registry_json["models"][repo]
    supported = spec["supported_hyperparams"]
    prefix = rule_prefix(spec, side["model"])
    assert argv[:len(prefix)] == prefix
    names = rule_names(side, supported, mutated)
    rest = argv[len(prefix):]
    assert rest[0::2] == [supported[n]["flag"] for n in names], (side, rest)
    for n, token in zip(names, rest[1::2]):
        kind = supported[n]["type"]
        if not mutated:
            given = side["hyperparameters"][n]
            assert token == (str(int(given)) if kind == "int" else "%.6f" % given if kind == "float" else str(given))
        elif kind == "int":
            assert token.lstrip("-").isdigit(), token
        else:
            assert "." in token and len(token.split(".")[1]) == 6, token
    return len(names)


def compare_file(path, registry, registry_json):
    """Every default-mode and parallel experiment of one settings file against the rule table."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    top = raw if isinstance(raw, dict) else {}
    entries = raw["experiments"] if isinstance(raw, dict) else raw
    plan = load_plan(str(path), registry)
    jobs = expand(plan.experiments, registry, seed=3)
    checked = Counter()
    for job in jobs:
        entry = entries[job.experiment.entry_index]
        sides = rule_sides(entry, top)
        runs = [job.foreground] + ([job.background] if job.background else [])
        assert len(runs) == len(sides)
        for run, (side, mutated) in zip(runs, sides):
            argv = build_argv(registry.repos[run.repo], run.model, run.hyperparameters)
            checked["flags"] += check_side(argv, side, mutated, registry_json)
        checked[rule_mode(entry, top)] += 1
    return checked


def test_every_corpus_settings_file_gives_the_command_lines_of_the_rule_table(corpus, tmp_path):
    src = corpus / "user-project"
    if not (src / "mutation" / "models_config.json").is_file():
        pytest.skip("no user-project registry in the corpus")
    shutil.copytree(src / "settings", tmp_path / "settings")
    shutil.copytree(src / "mutation", tmp_path / "mutation")
    registry_json = json.loads((tmp_path / "mutation" / "models_config.json").read_text())
    registry = load_registry(str(tmp_path / "mutation" / "models_config.json"), str(tmp_path))
    total, files = Counter(), 0
    for path in sorted((tmp_path / "settings").rglob("*.json")):
        total += compare_file(path, registry, registry_json)
        files += 1
    assert files >= 70 and total["default"] >= 250 and total["parallel"] >= 500 and total["flags"] > 2000, total


# -- small fixtures of each rule --------------------------------------------------------------------
@pytest.fixture
def project(tmp_path):
    (tmp_path / "mutation").mkdir()
    (tmp_path / "mutation" / "models_config.json").write_text(json.dumps(REGISTRY_JSON))
    return tmp_path


def _settings(project, experiments, **top):
    path = project / "settings.json"
    path.write_text(json.dumps(dict(top, experiments=experiments)))
    registry = load_registry(str(project / "mutation" / "models_config.json"), str(project))
    return load_plan(str(path), registry), registry


def _argvs(plan, registry, seed=0):
    out = []
    for job in expand(plan.experiments, registry, seed):
        sides = [job.foreground] + ([job.background] if job.background else [])
        out.append([build_argv(registry.repos[s.repo], s.model, s.hyperparameters) for s in sides])
    return out


def test_fixed_values_keep_the_file_order_and_unknown_names_are_dropped(project):
    plan, reg = _settings(project, [
        {"mode": "default", "repo": "r", "model": "m",
         "hyperparameters": {"seed": 7, "nope": 1, "learning_rate": 0.05, "epochs": 12.9}},
        {"mode": "default", "repo": "plain", "model": "default", "hyperparameters": {"alpha": 1e-5, "kfold": 3}}])
    (a,), (b,) = _argvs(plan, reg)
    assert a == ["./train.sh", "-n", "m", "-d", "d2a", "--seed", "7", "--lr", "0.050000", "--epochs", "12"]
    assert b == ["./run.sh", "--alpha", "0.000010", "--kfold", "3"]  # no model flag for "default"


def test_a_mutated_run_carries_only_its_mutated_names_in_the_mutate_order(project):
    plan, reg = _settings(project, [
        {"mode": "mutation", "repo": "r", "model": "m", "mutate": ["seed", "nope", "epochs"],
         "hyperparameters": {"learning_rate": 0.05}},
        {"repo": "r", "model": "default", "mutate": ["all"]}])
    (a,), (b,) = _argvs(plan, reg)
    assert a[5::2] == ["--seed", "--epochs"] and "--lr" not in a
    assert b[:3] == ["./train.sh", "-d", "d2a"] and b[3::2] == ["--epochs", "--lr", "--seed", "--wd"]


def test_parallel_foreground_mutated_or_fixed_and_background_in_its_file_order(project):
    bg = {"repo": "plain", "model": "default", "hyperparameters": {"kfold": 4, "alpha": 1e-5}}
    plan, reg = _settings(project, [
        {"mode": "parallel", "foreground": {"repo": "r", "model": "m", "mutate": ["learning_rate", "epochs"]},
         "background": bg},
        {"mode": "parallel", "foreground": {"repo": "r", "model": "m", "mode": "default",
                                            "hyperparameters": {"epochs": 3, "seed": 2}}, "background": bg}])
    (fg1, bg1), (fg2, bg2) = _argvs(plan, reg)
    assert fg1[5::2] == ["--lr", "--epochs"]
    assert fg2[5:] == ["--epochs", "3", "--seed", "2"]
    assert bg1 == bg2 == ["./run.sh", "--kfold", "4", "--alpha", "0.000010"]
    assert [e.id for e in plan.experiments] == ["r_m_001_parallel", "r_m_002_parallel"]


def test_values_print_like_mutation_py():
    assert format_value("float", 3e-05) == "0.000030" and format_value("float", 1) == "1.000000"
    assert format_value("int", 12.9) == "12" and format_value("int", "7") == "7" and format_value("int", True) == "1"
    assert format_value("str", "adam") == "adam" and format_value("", 0.5) == "0.500000"


# -- sampling ----------------------------------------------------------------------------------------
def test_zero_probability_gives_zero_that_often_and_the_distribution_otherwise():
    h = Hyperparam("wd", "--wd", "float", 0.0, (1e-5, 1e-3), "log_uniform", zero_probability=0.3)
    rng = random.Random(11)
    xs = [sample_value(h, rng) for _ in range(4000)]
    zeros = sum(x == 0.0 for x in xs) / len(xs)
    assert 0.26 < zeros < 0.34
    assert all(x == 0.0 or 1e-5 <= x <= 1e-3 for x in xs)
    i = Hyperparam("e", "--e", "int", 10, (5, 15), "uniform", zero_probability=1.0)
    assert {sample_value(i, rng) for _ in range(20)} == {0} and isinstance(sample_value(i, rng), int)


def test_draws_use_the_generator_as_mutation_py_does():
    """Same seed, same calls: random.random() for zero_probability first, then uniform/randint."""
    h = Hyperparam("wd", "--wd", "float", 0.0, (1e-5, 1e-3), "log_uniform", zero_probability=0.5)
    k = Hyperparam("k", "--k", "int", 10, (2, 10), "uniform")
    ours, ref = random.Random(5), random.Random(5)
    for _ in range(50):
        v = sample_value(h, ours)
        import math
        want = 0.0 if ref.random() < 0.5 else max(1e-5, min(1e-3, math.exp(ref.uniform(math.log(1e-5), math.log(1e-3)))))
        assert v == want
        assert sample_value(k, ours) == ref.randint(2, 10)


def test_a_seeded_expansion_is_reproducible_and_another_seed_differs(project):
    plan, reg = _settings(project, [{"repo": "r", "model": "m", "runs_per_config": 6}])
    a, b, c = (_argvs(plan, reg, seed) for seed in (4, 4, 5))
    assert a == b and a != c


def test_an_exhausted_range_is_named_before_the_batch_with_its_experiment(project):
    # kfold in [2, 10] without its default 10: eight new values for nine runs
    plan, reg = _settings(project, [{"repo": "plain", "model": "default", "mutate": ["kfold"], "runs_per_config": 10}])
    jobs, stats = expand_with_stats(plan.experiments, reg, seed=2)
    values = [j.foreground.hyperparameters["kfold"] for j in jobs]
    assert sorted(values[:8]) == list(range(2, 10)) and all(2 <= v <= 10 for v in values[8:])
    assert stats.short == (jobs[-2].id, jobs[-1].id) and "could not draw" in jobs[-1].warnings[0]
    assert stats.drawn <= MAX_DRAWS and stats.redrawn_default > 0 and stats.redrawn_batch > 0
    assert any("repeat a combination" in line for line in stats.lines())
