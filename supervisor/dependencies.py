"""A project's own dependencies, as Cortex installed them: `dependencies.sh`, then `requirements.txt`.

Cortex ran the project folder's `dependencies.sh` with bash, then `pip install -r requirements.txt`, at each
replica's start, before the predictor was imported (`conda-packages.txt` with conda). Here both run once per
content: the packages go into an environment of the project's own, `STATE/project/<key>/`, keyed by a hash
of the two files, the interpreter and the replica's own installed packages, and a start with the same files
finds it complete and installs nothing. The replica's virtualenv is never modified.

That environment is layered under the replica's: workers put it on `sys.path` after their own site-packages
(REPLICA_PROJECT_PACKAGES), so a package the replica pins always wins, and pip resolves the project's
requirements against those pins (a constraints file of the replica's installed versions). A requirement
that would replace one of them is refused before anything runs, naming the conflict.

`dependencies.sh` runs as the replica's user: under the hardened systemd unit that is not root and the
system is read-only, so a script that installs system packages is run at install time instead, as root,
with `replica prepare SPEC` (the same steps, then the service finds them done).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from replica.spec import ApiSpec

REQUIREMENTS, SCRIPT, CONDA = "requirements.txt", "dependencies.sh", "conda-packages.txt"
ENV_VAR = "REPLICA_PROJECT_PACKAGES"  # what a worker adds to sys.path
# Where project environments are kept, when not in the state directory: an image prepares its project at build
# time, outside the state volume that is mounted over /var/lib/replica at run time.
DIR_VAR = "REPLICA_PACKAGES_DIR"
DONE = ".complete"
TAIL_LINES = 15
STEP_TIMEOUT = 1800.0  # a script or an install that runs longer than this is stopped


class DependencyError(Exception):
    """A project dependency cannot be set up; the message says which file, why, and the output's last lines."""


def _project(api: ApiSpec) -> Path:
    return api.spec_file.parent


@functools.lru_cache(maxsize=1)
def _replica_packages() -> dict[str, str]:
    """The distributions installed where the replica runs: canonical name -> version (read once per process:
    the checks, the key and the constraints all ask, and nothing here installs into this environment)."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def problems(api: ApiSpec) -> list[str]:
    """What stops the project's dependencies from being set up, found without installing anything: a
    requirement that would replace one of the replica's own packages, a conda file without conda."""
    folder, found = _project(api), []
    if (folder / CONDA).is_file() and shutil.which("conda") is None:
        found.append(f"{folder / CONDA}: conda is not installed here, so its packages cannot be installed; "
                     f"install them with pip through {REQUIREMENTS}, or run the replica where conda is")
    reqs = folder / REQUIREMENTS
    if reqs.is_file():
        pinned = _replica_packages()
        for line in _requirement_lines(reqs):
            if line.startswith("-"):
                continue  # pip's own options (-r, --index-url, ...): pip checks them
            try:
                req = Requirement(line)
            except InvalidRequirement as e:
                found.append(f"{reqs}: '{line}' is not a requirement ({e}); write it as pip would take it")
                continue
            have = pinned.get(canonicalize_name(req.name))
            if have is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
                found.append(f"{reqs}: '{line}' would replace the replica's own {req.name} {have}, which it needs; "
                             f"remove the pin or allow {req.name} {have}")
    return found


def key(api: ApiSpec) -> str | None:
    """The project environment's key: what its content depends on. None when the project has neither file."""
    folder = _project(api)
    parts = [(name, folder / name) for name in (SCRIPT, REQUIREMENTS) if (folder / name).is_file()]
    if not parts:
        return None
    h = hashlib.sha256(sys.version.encode())
    for name, path in parts:
        h.update(f"\0{name}\0".encode() + path.read_bytes())
    for name, version in sorted(_replica_packages().items()):
        h.update(f"\0{name}=={version}".encode())
    return h.hexdigest()[:16]


def packages_dir(api: ApiSpec, state_dir: Path) -> Path | None:
    """Where the project's environment for its current files lives (whether or not it is set up yet):
    REPLICA_PACKAGES_DIR/<key> when that is set, else STATE/project/<key>."""
    k = key(api)
    if k is None:
        return None
    return Path(os.environ.get(DIR_VAR) or Path(state_dir) / "project") / k


def prepared(api: ApiSpec, state_dir: Path) -> Path | None:
    """The project's environment when it is set up for the current files, else None."""
    d = packages_dir(api, state_dir)
    return d if d is not None and (d / DONE).is_file() else None


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DependencyError(f"{what} did not finish within {STEP_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").rstrip().splitlines()[-TAIL_LINES:]
        raise DependencyError(f"{what} failed (exit status {proc.returncode}); its last lines:\n  "
                              + "\n  ".join(tail or ["(no output)"]))


def prepare(api: ApiSpec, state_dir: Path, log=print) -> Path | None:
    """Set up the project's environment unless it is already set up for these files; its folder, or None when
    the project has no dependency files. DependencyError (with the output's last lines) when a step fails."""
    found = problems(api)
    if found:
        raise DependencyError("; ".join(found))
    target = packages_dir(api, state_dir)
    if target is None:
        return None
    if (target / DONE).is_file():
        log(f"project dependencies are up to date ({target})")
        return target
    folder = _project(api)
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if (folder / SCRIPT).is_file():
        log(f"running {folder / SCRIPT}")
        _run(["bash", str(folder / SCRIPT)], folder, str(folder / SCRIPT))
    if (folder / CONDA).is_file():
        log(f"installing {folder / CONDA} with conda")
        _run(["conda", "install", "--yes", "--file", str(folder / CONDA)], folder, f"conda install of {CONDA}")
    if (folder / REQUIREMENTS).is_file():
        constraints = work / "replica-constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(_replica_packages().items())
                                       if n not in ("model-replica", "pip", "setuptools", "wheel")))
        log(f"installing {folder / REQUIREMENTS} into {target}")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
              "--target", str(work / "site"), "-r", str(folder / REQUIREMENTS), "-c", str(constraints)],
             folder, f"pip install -r {folder / REQUIREMENTS}")
    (work / "site").mkdir(exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    (target / DONE).write_text("")
    return target


def site_dir(packages: Path) -> Path:
    """The folder a worker adds to `sys.path` for a project environment."""
    return packages / "site"
