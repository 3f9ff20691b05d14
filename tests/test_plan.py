"""Settings files read the way mutation.py reads them, and linted for what it ignores or crashes on."""
import json
from pathlib import Path

import pytest

from core.plan import load_plan, registry_plan, safe_id
from core.registry import SettingsError, load_registry

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "user-project"


@pytest.fixture(scope="module")
def registry():
    return load_registry(str(ROOT / "settings" / "models_config.json"), str(ROOT))


def write(tmp_path, data, name="s.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(p)


def ids(plan):
    return {f.id for f in plan.findings}


def test_modes_runs_per_config_precedence_and_parallel(tmp_path, registry):
    path = write(tmp_path, {"runs_per_config": 2, "experiments": [
        {"mode": "default", "repo": "demo", "model": "scratch_mlp", "hyperparameters": {"epochs": 1}},
        {"mode": "mutation", "repo": "demo", "model": "scratch_mlp", "mutate": ["learning_rate"], "runs_per_config": 3},
        {"repo": "demo", "model": "scratch_mlp"},
        {"mode": "parallel", "foreground": {"repo": "demo", "model": "tv_resnet18", "mode": "default",
                                             "hyperparameters": {"epochs": 1}, "runs_per_config": 4},
         "background": {"repo": "demo", "model": "scratch_mlp", "hyperparameters": {"epochs": 1}}},
        {"mode": "parallel", "runs_per_config": 1,
         "foreground": {"repo": "demo", "model": "scratch_mlp", "mutate": ["all"], "runs_per_config": 5},
         "background": {"repo": "demo", "model": "scratch_mlp"}},
    ]})
    plan = load_plan(path, registry)
    modes = [e.mode for e in plan.experiments]
    assert modes == ["default"] * 2 + ["mutation"] * 3 + ["mutation"] * 2 + ["parallel"] * 4 + ["parallel"]
    first_default = plan.experiments[0]
    assert first_default.foreground.hyperparameters == {"epochs": 1} and first_default.foreground.mutate == ()
    assert plan.experiments[2].foreground.mutate == ("learning_rate",)
    # no "mutate" means mutation.py's default ["all"]: every registry hyperparameter
    assert set(plan.experiments[5].foreground.mutate) == {"epochs", "learning_rate", "batch_size", "seed"}
    par = plan.experiments[7]
    assert par.background.model == "scratch_mlp" and par.id.endswith("_parallel")
    assert par.foreground.mutate == () and par.foreground.hyperparameters == {"epochs": 1}
    # a parallel experiment needs what both sides need
    assert {n.kind for n in par.needs} == {"torchvision", "path"}
    assert len({e.id for e in plan.experiments}) == len(plan.experiments)
    assert plan.findings == ()


def test_lint_names_file_path_and_fix(tmp_path, registry):
    path = write(tmp_path, {"experiments": [
        {"mode": "mutation", "repo": "demo", "model": "scratch_mlp", "mutate_params": {"epochs": [1, 2]}},
        {"mode": "default", "repository": "demo", "model": "scratch_mlp"},
        {"mode": "default", "repo": "nope", "model": "x"},
        {"mode": "default", "repo": "demo", "model": "resnet9000"},
        {"mode": "default", "repo": "demo", "model": "scratch_mlp", "hyperparameters": {"dropout": 0.1}},
        {"mode": "nonparallel", "repo": "demo", "model": "scratch_mlp"},
        {"mode": "parallel", "foreground": {"model": "scratch_mlp"}, "background": {"repo": "demo", "model": "scratch_mlp"}},
        {"comment": "=== part two ==="},
    ]})
    plan = load_plan(path, registry)
    by_id = {f.id: f for f in plan.findings}
    assert {"settings.ignored-key", "settings.repository-key", "settings.unknown-repo", "settings.unknown-model",
            "settings.unknown-hyperparameter", "settings.unknown-mode", "settings.missing-key",
            "settings.not-an-experiment"} <= set(by_id)
    ignored = by_id["settings.ignored-key"]
    assert "did you mean \"mutate\"" in ignored.title and "ALL parameters" in ignored.title
    assert f"{path}: experiments[0].mutate_params" in ignored.detail
    assert by_id["settings.missing-key"].detail.endswith("experiments[6].foreground")
    # "repository" is understood (the experiment exists) but blocked until renamed, with the fix
    rep = by_id["settings.repository-key"]
    assert rep.status == "fail" and rep.experiments == ("demo_scratch_mlp_002",)
    assert any("rename \"repository\" to \"repo\"" in f for f in rep.fix)
    assert by_id["settings.unknown-model"].status == "fail"
    assert "scratch_mlp" in by_id["settings.unknown-model"].fix[0]
    assert by_id["settings.unknown-hyperparameter"].status == "warn"
    # unknown repo/model entries cannot be experiments; the others can
    assert [e.entry_index for e in plan.experiments] == [0, 1, 4, 5]


def test_top_level_list_loads_with_a_warning(tmp_path, registry):
    plan = load_plan(write(tmp_path, [{"mode": "default", "repo": "demo", "model": "scratch_mlp"}]), registry)
    assert len(plan.experiments) == 1 and "settings.top-level-list" in ids(plan)


@pytest.mark.parametrize("content, where", [
    ("{\"experiments\": [", "line 1"),
    ("{\"experiments\": 3}", "experiments"),
    ("\"just a string\"", "$"),
])
def test_unreadable_settings_raise_one_line_error(tmp_path, registry, content, where):
    with pytest.raises(SettingsError) as e:
        load_plan(write(tmp_path, content), registry)
    assert where in str(e.value) and "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_registry_errors_name_the_json_path(tmp_path):
    bad = {"models": {"r": {"path": "x", "train_script": "./t.sh", "models": ["m"],
                            "requires": {"m": [{"timm": "a", "torchvision": "b"}]}}}}
    with pytest.raises(SettingsError, match=r"models\.r\.requires\.m\[0\]: expected exactly one of"):
        load_registry(write(tmp_path, bad), str(tmp_path))
    bad["models"]["r"]["requires"] = {"m": [{"python": "relative/python"}]}
    with pytest.raises(SettingsError, match="absolute interpreter path"):
        load_registry(write(tmp_path, bad), str(tmp_path))


def test_registry_needs_and_pseudo_plan(registry):
    needs = registry.needs_for("demo", "timm_resnet18")
    assert [n.kind for n in needs] == ["path", "timm"]
    assert needs[0].resolved_path == str(ROOT / "examples" / "demo" / "data" / "blobs.csv")
    plan = registry_plan(registry)
    assert "Person_reID_baseline_pytorch_hrnet18" in {e.id for e in plan.experiments}
    assert len(plan.experiments) == sum(len(r.models) for r in registry.repos.values())


def test_required_args_dict_is_split_like_mutation_py(registry):
    assert registry.repos["VulBERTa"].required_args == ("-d", "d2a")


def test_safe_id_never_escapes_the_results_folder():
    assert "/" not in safe_id("../../etc/passwd") and safe_id("../..") == "experiment"
    assert safe_id("repo x_model/1") == "repo_x_model_1"


@pytest.fixture(scope="module")
def corpus_files():
    if not CORPUS.is_dir():
        pytest.skip(f"the user's corpus is not at {CORPUS}")
    files = sorted((CORPUS / "settings").rglob("*.json"))
    assert len(files) >= 70
    return files


def test_every_corpus_settings_file_loads_or_lints_cleanly(corpus_files):
    reg = load_registry(str(CORPUS / "mutation" / "models_config.json"), str(CORPUS))
    loaded = 0
    for f in corpus_files:
        plan = load_plan(str(f), reg)  # must not raise
        loaded += bool(plan.experiments)
        for finding in plan.findings:
            assert finding.group == "settings" and finding.detail.startswith(str(f))
    assert loaded >= 70


def test_the_incident_batch_is_22_experiments(corpus_files):
    reg = load_registry(str(ROOT / "settings" / "models_config.json"), str(CORPUS))
    plan = load_plan(str(CORPUS / "settings" / "archived" / "11_models_quick_validation_1epoch.json"), reg)
    assert len(plan.experiments) == 22
    assert sum(e.mode == "parallel" for e in plan.experiments) == 11
    hrnet = [e for e in plan.experiments if "hrnet18" in (e.model, e.background and e.background.model)]
    assert hrnet and all(any(n.kind == "timm" for n in e.needs) for e in hrnet)


def test_entry_mode_falls_back_to_the_files_mode_like_mutation_py(tmp_path, registry):
    path = write(tmp_path, {"mode": "default", "experiments": [
        {"repo": "demo", "model": "scratch_mlp", "hyperparameters": {"epochs": 2}},
        {"mode": "mutation", "repo": "demo", "model": "scratch_mlp", "mutate": ["seed"]},
    ]})
    plan = load_plan(path, registry)
    assert [e.mode for e in plan.experiments] == ["default", "mutation"]
    assert plan.experiments[0].foreground.hyperparameters == {"epochs": 2}
    assert plan.experiments[0].foreground.mutate == ()
    assert plan.findings == ()
    # an unknown file-level mode is mutation to mutation.py, and the warning points at the top-level key
    plan = load_plan(write(tmp_path, {"mode": "batch", "experiments": [
        {"repo": "demo", "model": "scratch_mlp", "mutate": ["seed"]}]}, "b.json"), registry)
    assert [e.mode for e in plan.experiments] == ["mutation"]
    (warn,) = [f for f in plan.findings if f.id == "settings.unknown-mode"]
    assert warn.data["paths"] == ["mode"]
    # a file-level "parallel" makes an entry without mode a parallel one
    plan = load_plan(write(tmp_path, {"mode": "parallel", "experiments": [
        {"foreground": {"repo": "demo", "model": "scratch_mlp", "mode": "default"},
         "background": {"repo": "demo", "model": "scratch_mlp"}}]}, "p.json"), registry)
    assert [e.mode for e in plan.experiments] == ["parallel"] and plan.findings == ()


def test_parallel_foreground_of_another_mode_runs_its_fixed_hyperparameters(tmp_path, registry):
    path = write(tmp_path, {"experiments": [
        {"mode": "parallel",
         "foreground": {"repo": "demo", "model": "scratch_mlp", "mode": "fixed", "hyperparameters": {"epochs": 3}},
         "background": {"repo": "demo", "model": "scratch_mlp"}},
        {"mode": "parallel", "foreground": {"repo": "demo", "model": "scratch_mlp", "mutate": ["seed"]},
         "background": {"repo": "demo", "model": "scratch_mlp"}},
    ]})
    fixed, mutated = load_plan(path, registry).experiments
    assert fixed.foreground.mutate == () and fixed.foreground.hyperparameters == {"epochs": 3}
    assert mutated.foreground.mutate == ("seed",)


def test_hyperparameters_on_a_mutation_entry_are_named_as_ignored(tmp_path, registry):
    path = write(tmp_path, {"experiments": [
        {"repo": "demo", "model": "scratch_mlp", "mutate": ["seed"], "hyperparameters": {"epochs": 2}},
        {"mode": "default", "repo": "demo", "model": "scratch_mlp", "hyperparameters": {"epochs": 2}},
        {"mode": "parallel",
         "foreground": {"repo": "demo", "model": "scratch_mlp", "mutate": ["seed"], "hyperparameters": {"epochs": 2}},
         "background": {"repo": "demo", "model": "scratch_mlp", "hyperparameters": {"epochs": 2}}},
    ]})
    plan = load_plan(path, registry)
    (f,) = [f for f in plan.findings if f.id == "settings.ignored-hyperparameters"]
    assert f.status == "warn" and f.group == "settings"
    assert f.data["paths"] == ["experiments[0].hyperparameters", "experiments[2].foreground.hyperparameters"]
    assert "\"mode\": \"default\"" in f.fix[0] and "remove" in f.fix[0]


def test_corpus_optimized_mutation_v1_hyperparameters_are_ignored(corpus_files):
    reg = load_registry(str(CORPUS / "mutation" / "models_config.json"), str(CORPUS))
    path = CORPUS / "settings" / "archived" / "optimized_mutation_v1.json"
    if not path.is_file():
        pytest.skip(f"{path} is not in the corpus")
    plan = load_plan(str(path), reg)
    (f,) = [f for f in plan.findings if f.id == "settings.ignored-hyperparameters"]
    assert len(f.data["paths"]) >= 20
