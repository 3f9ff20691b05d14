"""Launch-script discovery: each construct on a small script written here, positive and negative."""
from __future__ import annotations

import os
import stat
import textwrap

from core.discover.script import script_facts
from core.discover.shell import parse_script


def facts(text: str, model: str = "m", flag: str = "-n", home: str = "/home/u", path_env: str = "/nonexistent"):
    script = parse_script("/repo/train.sh", textwrap.dedent(text))
    return script_facts(script, model, flag, home, path_env)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line)


REID_LIKE = """\
    #!/bin/bash
    MODEL_NAME=""
    DATA_DIR="./Market/pytorch"
    USE_HR=""
    USE_DENSE=""
    PCB=""
    CONDA_ENV="reid"
    PYTHON_PATH="/opt/conda/envs/$CONDA_ENV/bin/python"
    usage() {
        cat << EOF
    Don't forget: -n NAME (it's required)
    EOF
    }
    configure_model() {
        case "$MODEL_NAME" in
            "hrnet18")
                USE_HR="--use_hr"
                ;;
            "densenet121"|"dense")
                USE_DENSE="--use_dense"
                ;;
            "pcb")
                PCB="--PCB"
                ;;
            *)
                usage
                ;;
        esac
    }
    while [[ $# -gt 0 ]]; do
        case $1 in
            -n) MODEL_NAME="$2"; shift 2 ;;
            --data_dir) DATA_DIR="$2"; shift 2 ;;  # comment with a ' quote
            *) usage ;;
        esac
    done
    configure_model
    build() {
        local cmd="$PYTHON_PATH train.py"
        cmd="$cmd --data_dir $DATA_DIR"
        [ -n "$USE_HR" ] && cmd="$cmd $USE_HR"
        [ -n "$USE_DENSE" ] && cmd="$cmd $USE_DENSE"
        [ -n "$PCB" ] && cmd="$cmd $PCB"
        echo "$cmd"
    }
    eval "$(build)"
"""


def test_interpreter_through_variables_with_its_line():
    f = facts(REID_LIKE, "hrnet18")
    assert f.interpreter.path == "/opt/conda/envs/reid/bin/python"
    assert f.interpreter.how == "literal"
    assert f.interpreter.line == line_of(REID_LIKE, "PYTHON_PATH=")
    assert f.entry == "train.py"
    assert f.unresolved == ()


def test_model_flags_follow_the_model_case_and_the_argument_loop():
    assert "--use_hr" in facts(REID_LIKE, "hrnet18").argv
    assert "--use_dense" not in facts(REID_LIKE, "hrnet18").argv
    dense = facts(REID_LIKE, "densenet121")
    assert "--use_dense" in dense.argv and "--use_hr" not in dense.argv
    assert dense.model_line == line_of(REID_LIKE, 'case "$MODEL_NAME"')
    # a model the case does not name gets no model flag
    assert not {"--use_hr", "--use_dense"} & set(facts(REID_LIKE, "resnet50").argv)
    # without the registry's model flag the script's default (empty) model applies
    assert not {"--use_hr", "--use_dense"} & set(facts(REID_LIKE, "hrnet18", flag=None).argv)


def test_data_path_assigned_in_the_script_and_passed_on():
    f = facts(REID_LIKE, "hrnet18")
    assert f.data == (("DATA_DIR", "./Market/pytorch", line_of(REID_LIKE, 'DATA_DIR="')),)
    assert "--data_dir" in f.argv and "./Market/pytorch" in f.argv


def test_getopts_model_flag():
    text = """\
        NAME=resnet20
        while getopts "n:e:" opt; do
            case $opt in
                n) NAME=$OPTARG ;;
                e) EPOCHS=$OPTARG ;;
            esac
        done
        case $NAME in
            big) EXTRA="--wide" ;;
        esac
        PY=${PY_BIN:-/usr/local/envs/x/bin/python3}
        $PY -u main.py --arch $NAME $EXTRA
    """
    f = facts(text, "big")
    assert f.interpreter.path == "/usr/local/envs/x/bin/python3"
    assert f.entry == "main.py"
    assert "--wide" in f.argv and "big" in f.argv
    assert "--wide" not in facts(text, "small").argv


def test_home_and_tilde_expand_with_the_launched_home():
    text = """\
        BASE=~/miniconda3
        PYTHON="$BASE/envs/a/bin/python"
        DATA_ROOT="$HOME/data/cifar"
        "$PYTHON" run.py
    """
    f = facts(text, home="/root")
    assert f.interpreter.path == "/root/miniconda3/envs/a/bin/python"
    assert f.data == (("DATA_ROOT", "/root/data/cifar", 3),)
    assert facts(text, home="/home/alice").interpreter.path == "/home/alice/miniconda3/envs/a/bin/python"


def test_source_activate_then_bare_python():
    text = """\
        CMD="python main_batch.py --data origindata/x.csv"
        source /home/g/miniconda3/bin/activate mrt-oast
        eval $CMD
    """
    f = facts(text)
    assert f.interpreter.path == "/home/g/miniconda3/envs/mrt-oast/bin/python"
    assert f.interpreter.how == "activate" and f.interpreter.line == 2
    assert f.entry == "main_batch.py"


def test_conda_activate_needs_a_named_base():
    text = """\
        conda activate reid
        python train.py
    """
    f = facts(text)
    assert f.interpreter is None
    assert [(u.where, "base folder" in u.why) for u in f.unresolved] == [("train.sh:1", True)]
    named = facts("source /opt/mc/etc/profile.d/conda.sh\n" + textwrap.dedent(text))
    assert named.interpreter.path == "/opt/mc/envs/reid/bin/python"


def test_bare_python_on_the_launched_path(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    py = bindir / "python3"
    py.write_text("#!/bin/sh\n")
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    f = facts("python3 train.py\n", path_env=f"/nonexistent:{bindir}")
    assert f.interpreter.path == str(py) and f.interpreter.how == "path"
    missing = facts("python3 train.py\n", path_env="/nonexistent")
    assert missing.interpreter is None
    assert "not on the launched process's PATH" in missing.unresolved[0].why


def test_fallback_loop_candidates(tmp_path):
    for env in ("a", "b"):
        p = tmp_path / "envs" / env / "bin"
        p.mkdir(parents=True)
        (p / "python").write_text("")
    text = f"""\
        CONDA_BASE="{tmp_path}"
        PYTHON_PATH="${{CONDA_BASE}}/envs/vulberta/bin/python"
        if [ ! -f "$PYTHON_PATH" ]; then
            for env_path in "${{CONDA_BASE}}/envs/"*/bin/python; do
                if [ -f "$env_path" ]; then
                    PYTHON_PATH="$env_path"
                    break
                fi
            done
        fi
        "$PYTHON_PATH" train_vulberta.py "$@"
    """
    f = facts(text)
    assert f.interpreter.path == f"{tmp_path}/envs/vulberta/bin/python"  # the reassignment in the if is not taken
    assert f.interpreter.fallbacks == (f"{tmp_path}/envs/a/bin/python", f"{tmp_path}/envs/b/bin/python")
    assert f.interpreter.fallback_line == 4
    assert f.passes_args


def test_run_time_interpreter_is_reported_not_guessed():
    text = """\
        PYTHON_PATH=$(which python3)
        $PYTHON_PATH train.py
    """
    f = facts(text)
    assert f.interpreter is None
    assert f.unresolved and f.unresolved[0].where == "train.sh:2" and "run time" in f.unresolved[0].why


def test_commented_and_echoed_commands_are_not_the_entry():
    text = """\
        PY=/opt/py/bin/python
        # $PY old_train.py
        echo "$PY train.py"
        $PY real.py
    """
    f = facts(text)
    assert f.entry == "real.py"
    assert os.path.basename(f.interpreter.path) == "python"


def test_assignments_under_a_test_are_not_taken():
    text = """\
        PY=/opt/a/bin/python
        if [ -n "$X" ]; then PY=/opt/b/bin/python; fi
        [ -f /x ] && PY=/opt/c/bin/python
        $PY t.py
    """
    assert facts(text).interpreter.path == "/opt/a/bin/python"
