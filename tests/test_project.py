"""The project folder (replica/project.py): the worker's working directory, `.env`, `predictor.env` and
`predictor.log_level`, as Cortex set a predictor up from its project root."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from replica.project import ProjectError, enter_project, project_environment, read_dotenv
from replica.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def project(folder: Path, dotenv: str | None = None, **predictor) -> Path:
    """A spec folder with a python predictor; `dotenv` is the text of its .env file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
                                         "    def predict(self, payload):\n        return payload\n")
    if dotenv is not None:
        (folder / ".env").write_text(textwrap.dedent(dotenv).lstrip())
    spec = folder / "api.yaml"
    spec.write_text(yaml.safe_dump({"name": "api", "predictor": {"type": "python", "path": "predictor.py",
                                                                  **predictor}}))
    return spec


def test_dotenv_syntax_that_bash_source_accepted(tmp_path, monkeypatch):
    # Cortex ran `set -a; source .env`: comments, quotes, `export` and ${VAR} expansion all worked.
    monkeypatch.setenv("FROM_OUTSIDE", "outer")
    project(tmp_path, """
        # a comment
        PLAIN=value
        QUOTED="two words"
        SINGLE='a $literal'
        export EXPORTED=yes
        EXPANDED=${PLAIN}-${FROM_OUTSIDE}
        EMPTY=
    """)
    assert read_dotenv(tmp_path) == {"PLAIN": "value", "QUOTED": "two words", "SINGLE": "a $literal",
                                     "EXPORTED": "yes", "EXPANDED": "value-outer", "EMPTY": ""}


def test_no_dotenv_is_no_variables(tmp_path):
    assert read_dotenv(tmp_path) == {}


def test_predictor_env_is_applied_after_dotenv(tmp_path):
    spec = project(tmp_path, "A=from-dotenv\nB=from-dotenv\n", env={"B": "from-spec", "C": 3})
    assert project_environment(load_spec(spec)) == {"A": "from-dotenv", "B": "from-spec", "C": "3"}


@pytest.mark.parametrize("line, fragments", [
    ("CORTEX_PROVIDER=local", ["'CORTEX_PROVIDER' is reserved", "rename"]),
    ("REPLICA_STATE_DIR=/tmp/x", ["'REPLICA_STATE_DIR' is reserved"]),
    ("JUST_A_NAME", ["'JUST_A_NAME' has no value", "JUST_A_NAME=value"]),
])
def test_bad_dotenv_names_the_file_and_the_fix(tmp_path, line, fragments):
    project(tmp_path, f"OK=1\n{line}\n")
    with pytest.raises(ProjectError) as e:
        read_dotenv(tmp_path)
    assert str(tmp_path / ".env") in str(e.value)
    for f in fragments:
        assert f in str(e.value)


@pytest.fixture
def root_logger():
    """The root logger at WARNING for the test, then back at its level."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    yield root
    root.setLevel(before)


def test_enter_project_sets_cwd_environment_and_log_level(tmp_path, monkeypatch, root_logger):
    spec = project(tmp_path / "proj", "PROJECT_VAR=hello\n", env={"SPEC_VAR": "x"}, log_level="debug")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # restored afterwards, as the variables and the level are
    for name in ("PROJECT_VAR", "SPEC_VAR"):
        monkeypatch.setenv(name, "before")
    enter_project(load_spec(spec))
    assert Path.cwd() == (tmp_path / "proj").resolve()
    assert os.environ["PROJECT_VAR"] == "hello" and os.environ["SPEC_VAR"] == "x"
    assert root_logger.level == logging.DEBUG


def test_without_log_level_the_replicas_level_stays(tmp_path, monkeypatch, root_logger):
    spec = project(tmp_path)
    monkeypatch.chdir(tmp_path)
    enter_project(load_spec(spec))
    assert root_logger.level == logging.WARNING


@pytest.mark.parametrize("dotenv, predictor, fragments", [
    ("CORTEX_X=1\n", {}, [".env: 'CORTEX_X' is reserved"]),
    (None, {"env": {"CORTEX_X": "1"}}, ["predictor.env.CORTEX_X: environment variables starting with CORTEX_"]),
    (None, {"log_level": "verbose"}, ["predictor.log_level: must be one of debug, info, warning, error"]),
], ids=["dotenv-reserved", "env-reserved", "log-level"])
def test_cli_refuses_at_start_up_with_exit_2(tmp_path, dotenv, predictor, fragments):
    spec = project(tmp_path, dotenv, **predictor)
    for command in (["validate", str(spec)], ["serve", str(spec), "--port", "1", "--state-dir", str(tmp_path / "s")]):
        proc = subprocess.run([sys.executable, "-m", "supervisor.cli", *command], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: invalid API spec"), proc.stderr
        for f in fragments:
            assert f in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()
