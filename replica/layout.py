"""Model layouts: turn one upstream listing into models, versions, fingerprints and validity.

Everything here is pure: the same listing always gives the same result, whether it came from S3 or a local
directory, so the watcher, `replica validate` and the tests share one definition of what a model is.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from typing import NamedTuple

from replica.disktree import UnsafeName, safe_relpath
from replica.spec import MODEL_NAME_RE

VERSION_RE = re.compile(r"^[0-9]+\Z")  # \Z, not $: "$" also matches before a final newline
MAX_VERSION = 2**63 - 1  # the state feed keeps versions as SQLite integers (64-bit, signed)
MAX_NAME_BYTES = 255  # a model name is a folder name on the state disk: NAME_MAX on Linux filesystems


class ObjectInfo(NamedTuple):
    """One upstream file: its path relative to the model (or version) root, size, and change tag.

    The tag is the ETag on S3 and the modification time in nanoseconds for a local file. A named tuple, not a
    dataclass: a large catalogue keeps one per upstream file, and a tuple is the smallest immutable record.
    """

    key: str
    size: int
    tag: str


@dataclass(frozen=True, slots=True)
class VersionListing:
    version: int
    files: tuple[ObjectInfo, ...]  # keys relative to the version root
    fingerprint: str
    error: str | None = None  # why this version cannot be loaded; None when valid
    prefix: str = ""  # where the version's files start, relative to the model root ("3/" or "")


@dataclass(slots=True)
class ModelListing:
    """A model as listed. Its versions are kept as a tuple, in version order: a large catalogue keeps one listing
    per model, mostly of one version, and a tuple of one costs a fraction of a dict; `versions` maps them."""

    name: str
    error: str | None = None  # a model-level problem (unsafe name, mixed layout); its versions are then empty
    all_versions: tuple[VersionListing, ...] = ()

    @property
    def versions(self) -> dict[int, VersionListing]:
        return {v.version: v for v in self.all_versions}


def fingerprint(files: tuple[ObjectInfo, ...]) -> str:
    """A digest of relative paths, sizes and tags: equal fingerprints mean the same content upstream."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.key):
        h.update(f"{f.key}\0{f.size}\0{f.tag}\n".encode())
    return h.hexdigest()[:32]


def _ignored(key: str) -> bool:
    """Dotfiles (at any depth) and S3 folder markers are not part of a model.

    "." and ".." segments are not dotfiles: a key holding them could escape the folder it is written to, so it
    is kept and refused by `unsafe_keys` with an error, never silently dropped."""
    if key.endswith("/"):
        return True
    if not key.startswith(".") and "/." not in key:  # no segment starts with a dot: the common case, cheaply
        return False
    return any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))


def unsafe_keys(keys) -> list[str]:
    """The keys that are not plain relative paths (absolute, empty, '.' or '..' segments, backslashes, NUL):
    written under a folder they could land outside it."""
    bad = []
    for key in keys:
        try:
            safe_relpath(key)
        except UnsafeName:
            bad.append(key)
    return sorted(bad)


def _unsafe_error(bad: list[str]) -> str:
    shown = ", ".join(repr(k) for k in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (f"unsafe file key(s) {shown}: a key must be a relative path without '.', '..' or empty segments, "
            "so it cannot escape the model folder; nothing of it is downloaded")


def validate_version(predictor_type: str, files: tuple[ObjectInfo, ...], allow_inferentia: bool = False) -> str | None:
    """Return why a version's files are not a loadable model of this type, or None when they are."""
    keys = {f.key for f in files}
    if not keys:
        return "the version holds no files"
    bad = unsafe_keys(keys)
    if bad:
        return _unsafe_error(bad)
    clashes = sorted(k for k in keys if any(other.startswith(k + "/") for other in keys))
    if clashes:
        return (f"{clashes[0]!r} is both a file and a folder upstream (a key {clashes[0] + '/...'!r} exists too); "
                "remove one of them")
    if predictor_type == "tensorflow":
        if "saved_model.pb" not in keys:
            return "not a TensorFlow SavedModel: saved_model.pb is missing"
        if allow_inferentia and keys == {"saved_model.pb"}:
            return None
        if "variables/variables.index" not in keys:
            return "incomplete SavedModel: variables/variables.index is missing"
        if not any(k.startswith("variables/variables.data-") for k in keys):
            return "incomplete SavedModel: no variables/variables.data-* file"
    elif predictor_type == "onnx":
        onnx_files = [k for k in keys if "/" not in k and k.endswith(".onnx")]
        if len(onnx_files) != 1:
            found = ", ".join(sorted(onnx_files)) or "none"
            nested = sorted(k for k in keys if "/" in k and k.endswith(".onnx"))
            hint = ""
            if not onnx_files and nested:
                hint = (f"; {', '.join(nested[:5])} {'is' if len(nested) == 1 else 'are'} in a sub-folder: version "
                        "folders must be named by integers (1/, 2/, ...)")
            return f"an ONNX model needs exactly one .onnx file at its root (found: {found}){hint}"
    return None


def build_model(name: str, predictor_type: str, objects: list[ObjectInfo], allow_inferentia: bool = False) -> ModelListing:
    """Group one model's objects (keys relative to the model root) into versions.

    Versioned when every child is an integer-named folder; unversioned (version 1) when none is; a mix is an
    error for the whole model (typically a restructure in progress), so nothing of it is replaced.
    """
    model = ModelListing(name=name)
    if not MODEL_NAME_RE.match(name):
        model.error = f"unsafe model name {name!r}: use letters, digits, '_' and '-'"
        return model
    if len(name.encode()) > MAX_NAME_BYTES:
        model.error = (f"model name of {len(name.encode())} characters: the filesystem holds names of at most "
                       f"{MAX_NAME_BYTES}; use a shorter name")
        return model
    objects = [o for o in objects if not _ignored(o.key)]
    if not objects:
        model.error = "no model files upstream"
        return model
    versioned = [o for o in objects if "/" in o.key and VERSION_RE.match(o.key.split("/", 1)[0])]
    top_unsafe = unsafe_keys(o.key for o in objects if o not in versioned)
    if top_unsafe:
        model.error = _unsafe_error(top_unsafe)
        return model
    if versioned and len(versioned) != len(objects):
        others = sorted({o.key.split("/", 1)[0] + ("" if "/" in o.key else " (a file)")
                         for o in objects if o not in versioned})
        model.error = (
            "mixes integer version folders with other entries ("
            + ", ".join(others[:5])
            + "); use only version folders or none"
        )
        return model
    too_big = sorted({o.key.split("/", 1)[0] for o in versioned if int(o.key.split("/", 1)[0]) > MAX_VERSION})
    if too_big:
        model.error = (f"version folder {too_big[0]!r} is over 2^63-1, the largest version number served; "
                       "number versions from 1 (or by a timestamp in seconds)")
        return model
    groups: dict[int, tuple[str, list[ObjectInfo]]] = {}
    if versioned:
        for o in versioned:
            head, rest = o.key.split("/", 1)
            prefix, files = groups.setdefault(int(head), (f"{head}/", []))
            if prefix != f"{head}/":
                model.error = f"version folders {prefix!r} and {head + '/'!r} name the same version {int(head)}"
                return model
            files.append(ObjectInfo(sys.intern(rest), o.size, o.tag))
    else:
        groups[1] = ("", objects)
    versions = []
    for version, (prefix, files) in sorted(groups.items()):
        ftuple = tuple(sorted(files, key=lambda f: f.key))
        versions.append(VersionListing(
            version=version,
            files=ftuple,
            fingerprint=fingerprint(ftuple),
            error=validate_version(predictor_type, ftuple, allow_inferentia),
            prefix=prefix,
        ))
    model.all_versions = tuple(versions)
    return model


def group_models_dir(objects: list[ObjectInfo]) -> dict[str, list[ObjectInfo]]:
    """Group a `models.dir` listing by child model, keys as listed (relative to the root, not yet to the child):
    a model whose objects did not change since the last listing is recognised from these alone."""
    children: dict[str, list[ObjectInfo]] = {}
    for o in objects:
        head, sep, _ = o.key.partition("/")
        if not sep or _ignored(o.key):
            continue  # a loose file beside the model folders is not a model
        children.setdefault(head, []).append(o)
    return children


def relative_to(prefix: str, objects: list[ObjectInfo]) -> list[ObjectInfo]:
    """The objects under `prefix` ("child/"), keys made relative to it."""
    cut = len(prefix)
    # Models of one catalogue mostly hold the same file names ("1/model.onnx"): one string each, shared.
    return [ObjectInfo(sys.intern(o.key[cut:]), o.size, o.tag) for o in objects]


def parse_version(value: object) -> int | None:
    """`model_version` as users pass it: None or "latest" mean the highest version (None here).

    Raises ValueError with a message for anything that is not a non-negative integer.
    """
    if value is None or value == "latest":
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid model version {value!r}: use 'latest' or a non-negative integer")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid model version {value}: versions are non-negative integers")
        return value
    if isinstance(value, str) and VERSION_RE.match(value.strip()):
        return int(value.strip())
    raise ValueError(f"invalid model version {value!r}: use 'latest' or a non-negative integer")
