"""The project folder: what a predictor finds around it, as Cortex set it up from the project root.

Cortex started each predictor process in the project folder (the folder of `cortex.yaml`), with the project's
`.env` file exported into its environment, so a predictor opens its own files by relative path
(`open("labels.json")`) and reads its settings from `os.environ`. A worker enters the project the same way
before it imports the predictor: the spec file's folder becomes its working directory, `.env` and then
`predictor.env` are applied to its environment, and `predictor.log_level` sets its log level.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dotenv import dotenv_values

from replica.spec import RESERVED_ENV_PREFIXES, ApiSpec, reserved_env_name

DOTENV = ".env"


class ProjectError(Exception):
    """The project's `.env` cannot be applied; the message names the file and the fix."""


def read_dotenv(folder: Path) -> dict[str, str]:
    """The variables of `folder/.env` (none when there is no such file), in the syntax Cortex's `source`
    accepted for `VARIABLE=value` lines: comments, quotes, `export`, and `${OTHER}` expansion."""
    path = Path(folder) / DOTENV
    if not path.is_file():
        return {}
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProjectError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    except OSError as e:
        raise ProjectError(f"cannot read {path}: {e.strerror or e}") from None
    values = dotenv_values(path, encoding="utf-8")
    problems = []
    for name, value in values.items():
        if value is None:
            problems.append(f"'{name}' has no value; write {name}=value")
        elif reserved_env_name(name):
            problems.append(f"'{name}' is reserved (names starting with {' or '.join(RESERVED_ENV_PREFIXES)} are); "
                            "rename it")
    if problems:
        raise ProjectError(f"{path}: " + "; ".join(problems))
    return {name: value for name, value in values.items() if value is not None}


def project_environment(api: ApiSpec) -> dict[str, str]:
    """The variables a worker adds to its environment: `.env`, then `predictor.env` over it."""
    return {**read_dotenv(api.spec_file.parent), **api.predictor.env}


def apply_log_level(level: str | None) -> None:
    """`predictor.log_level` as the level of the process's root logger, which the predictor's loggers inherit.
    Unset, the level the process was started with stays."""
    if level is not None:
        logging.getLogger().setLevel(level.upper())


def enter_project(api: ApiSpec) -> None:
    """Make this process run the way Cortex ran a predictor: in the project folder, with the project's
    environment and log level. Called once per worker, before the predictor is imported."""
    env = project_environment(api)
    os.environ.update(env)
    os.chdir(api.spec_file.parent)
    apply_log_level(api.predictor.log_level)
    logging.getLogger(__name__).debug("entered the project folder %s (%d variable(s) from .env and predictor.env)",
                                      api.spec_file.parent, len(env))
