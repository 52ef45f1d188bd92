"""Model layouts (DESIGN.md section 5): pure functions over an upstream listing."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from replica.layout import (
    ObjectInfo,
    build_model,
    fingerprint,
    parse_version,
    group_models_dir,
    relative_to,
    validate_version,
)


def objs(*keys: str, size: int = 10, tag: str = "t") -> list[ObjectInfo]:
    return [ObjectInfo(k, size, tag) for k in keys]


TF_FILES = ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001")


# -- versioned vs unversioned ------------------------------------------------------------------------------

def test_unversioned_model_is_version_1():
    m = build_model("m", "python", objs("model.pkl", "sub/extra.bin"))
    assert m.error is None
    assert list(m.versions) == [1]
    v = m.versions[1]
    assert v.version == 1 and v.prefix == "" and v.error is None
    assert [f.key for f in v.files] == ["model.pkl", "sub/extra.bin"]


def test_versioned_model_groups_by_integer_folder():
    m = build_model("m", "python", objs("2/b.bin", "1/a.bin", "10/x/y.bin", "1/c.bin"))
    assert m.error is None
    assert sorted(m.versions) == [1, 2, 10]
    assert [f.key for f in m.versions[1].files] == ["a.bin", "c.bin"]  # relative to the version root
    assert m.versions[1].prefix == "1/"
    assert [f.key for f in m.versions[10].files] == ["x/y.bin"]
    assert m.versions[10].prefix == "10/"
    assert max(m.versions) == 10  # latest is the highest integer, not the last in text order


def test_version_folder_with_leading_zeros_keeps_its_prefix():
    m = build_model("m", "python", objs("007/model.bin"))
    assert list(m.versions) == [7]
    assert m.versions[7].prefix == "007/"  # files are fetched from where they are


def test_two_folders_naming_the_same_version_is_a_model_error():
    m = build_model("m", "python", objs("7/a", "007/a"))
    assert m.error and "same version 7" in m.error
    assert m.versions == {}


def test_version_zero_is_a_version():
    assert list(build_model("m", "python", objs("0/a")).versions) == [0]


def test_top_level_file_with_integer_name_is_unversioned():
    m = build_model("m", "python", objs("1", "2"))
    assert m.error is None and list(m.versions) == [1]
    assert [f.key for f in m.versions[1].files] == ["1", "2"]


def test_non_integer_folders_are_unversioned():
    m = build_model("m", "python", objs("v1/a", "1.5/b", "latest/c"))
    assert m.error is None and list(m.versions) == [1]
    assert m.versions[1].prefix == ""


# -- ignored entries ----------------------------------------------------------------------------------------

def test_dotfiles_and_folder_markers_are_ignored():
    m = build_model("m", "python", objs(
        "1/", "1/model.bin", "2/", ".DS_Store", "1/.hidden", ".git/config", "1/.cache/x", "3/",
    ))
    assert m.error is None
    assert list(m.versions) == [1]  # "2/" and "3/" are empty version folders (markers only): ignored
    assert [f.key for f in m.versions[1].files] == ["model.bin"]


def test_dotfiles_do_not_make_a_versioned_model_mixed():
    m = build_model("m", "python", objs(".keep", "1/a", "2/.keep", "2/b"))
    assert m.error is None and sorted(m.versions) == [1, 2]


def test_version_folder_with_only_dotfiles_is_ignored():
    m = build_model("m", "python", objs("1/a", "2/.keep"))
    assert m.error is None and list(m.versions) == [1]


def test_nothing_but_ignored_entries_is_a_model_error():
    m = build_model("m", "python", objs(".keep", "1/", "x/"))
    assert m.error == "no model files upstream"
    assert m.versions == {}


def test_empty_listing_is_a_model_error():
    m = build_model("m", "python", [])
    assert m.error and m.versions == {}


# -- mixed layout, unsafe names ----------------------------------------------------------------------------

def test_mixed_layout_is_a_model_error_naming_the_intruders():
    m = build_model("m", "python", objs("1/a", "2/b", "model.bin", "extra/c"))
    assert m.versions == {}
    assert "mixes integer version folders" in m.error
    assert "model.bin" in m.error and "extra" in m.error


@pytest.mark.parametrize("name", ["bad name", "a/b", "..", "a.b", "", "a\n"])
def test_unsafe_model_name_is_a_model_error(name):
    m = build_model(name, "python", objs("a"))
    assert m.error and "unsafe model name" in m.error
    assert m.versions == {}


# -- per-type validity --------------------------------------------------------------------------------------

def test_python_accepts_anything_non_empty():
    assert validate_version("python", tuple(objs("whatever.txt"))) is None
    assert validate_version("python", ()) == "the version holds no files"


def test_tensorflow_complete_savedmodel_is_valid():
    assert validate_version("tensorflow", tuple(objs(*TF_FILES))) is None
    assert validate_version("tensorflow", tuple(objs(*TF_FILES, "assets/vocab.txt",
                                                       "variables/variables.data-00001-of-00002"))) is None


@pytest.mark.parametrize("missing, fragment", [
    ("saved_model.pb", "saved_model.pb is missing"),
    ("variables/variables.index", "variables/variables.index is missing"),
    ("variables/variables.data-00000-of-00001", "variables.data-"),
])
def test_tensorflow_missing_part_is_invalid(missing, fragment):
    files = tuple(objs(*[k for k in TF_FILES if k != missing]))
    err = validate_version("tensorflow", files)
    assert err and fragment in err


def test_tensorflow_files_must_be_at_the_version_root():
    err = validate_version("tensorflow", tuple(objs(*["nested/" + k for k in TF_FILES])))
    assert err and "saved_model.pb" in err


def test_tensorflow_lone_saved_model_only_when_inferentia_asked():
    files = tuple(objs("saved_model.pb"))
    assert validate_version("tensorflow", files) is not None
    assert validate_version("tensorflow", files, allow_inferentia=True) is None
    m = build_model("m", "tensorflow", objs("saved_model.pb"), allow_inferentia=True)
    assert m.versions[1].error is None


def test_onnx_needs_exactly_one_onnx_at_root():
    assert validate_version("onnx", tuple(objs("model.onnx"))) is None
    assert validate_version("onnx", tuple(objs("model.onnx", "labels.json", "sub/other.onnx"))) is None
    none = validate_version("onnx", tuple(objs("model.bin")))
    assert none and "exactly one .onnx" in none and "none" in none
    nested = validate_version("onnx", tuple(objs("sub/model.onnx")))
    assert nested and "exactly one .onnx" in nested
    two = validate_version("onnx", tuple(objs("a.onnx", "b.onnx")))
    assert two and "a.onnx" in two and "b.onnx" in two


def test_invalid_version_keeps_its_reason_and_valid_ones_stay_valid():
    m = build_model("m", "onnx", objs("1/model.onnx", "2/a.onnx", "2/b.onnx", "3/readme.txt"))
    assert m.error is None
    assert m.versions[1].error is None
    assert "exactly one .onnx" in m.versions[2].error
    assert "exactly one .onnx" in m.versions[3].error


def test_tensorflow_versioned_model():
    m = build_model("m", "tensorflow", objs(*["1/" + k for k in TF_FILES], "2/saved_model.pb"))
    assert m.versions[1].error is None
    assert "variables.index" in m.versions[2].error


# -- models.dir -----------------------------------------------------------------------------------------

def test_models_dir_children_and_their_relative_keys():
    children = group_models_dir(objs("a/1/m.onnx", "a/2/m.onnx", "b/m.onnx", "loose.txt", "a/", ".git/x",
                                     "c/.keep", "bad name/m.onnx"))
    assert sorted(children) == ["a", "b", "bad name"]
    assert [o.key for o in relative_to("a/", children["a"])] == ["1/m.onnx", "2/m.onnx"]
    assert [o.key for o in relative_to("b/", children["b"])] == ["m.onnx"]
    # the unsafe name is kept here so that build_model can report it
    assert build_model("bad name", "onnx", relative_to("bad name/", children["bad name"])).error.startswith(
        "unsafe model name")


def test_models_dir_keeps_size_and_tag():
    (o,) = relative_to("a/", group_models_dir([ObjectInfo("a/x", 42, "etag")])["a"])
    assert o == ObjectInfo("x", 42, "etag")


# -- fingerprint ------------------------------------------------------------------------------------------

def test_fingerprint_stable_and_order_independent():
    a, b = ObjectInfo("a", 1, "t1"), ObjectInfo("b", 2, "t2")
    assert fingerprint((a, b)) == fingerprint((b, a)) == fingerprint((a, b))
    assert isinstance(fingerprint((a,)), str) and len(fingerprint((a,))) == 32


@pytest.mark.parametrize("changed", [
    ObjectInfo("a", 1, "t1-new"),  # tag (ETag / mtime)
    ObjectInfo("a", 3, "t1"),  # size
    ObjectInfo("c", 1, "t1"),  # path
])
def test_fingerprint_changes_with_tag_size_path(changed):
    b = ObjectInfo("b", 2, "t2")
    assert fingerprint((ObjectInfo("a", 1, "t1"), b)) != fingerprint((changed, b))


def test_fingerprint_changes_when_a_file_is_added_or_removed():
    a, b = ObjectInfo("a", 1, "t"), ObjectInfo("b", 1, "t")
    assert fingerprint((a,)) != fingerprint((a, b))


def test_version_fingerprint_is_relative_to_the_version():
    # moving a version to another number does not change its content fingerprint; changing a file does
    m = build_model("m", "python", objs("1/a", "2/a"))
    assert m.versions[1].fingerprint == m.versions[2].fingerprint
    m2 = build_model("m", "python", [ObjectInfo("1/a", 10, "t"), ObjectInfo("2/a", 10, "other")])
    assert m2.versions[1].fingerprint != m2.versions[2].fingerprint


def test_build_model_fingerprint_independent_of_listing_order():
    keys = ["1/b", "1/a", "1/c/d"]
    assert (build_model("m", "python", objs(*keys)).versions[1].fingerprint
            == build_model("m", "python", objs(*reversed(keys))).versions[1].fingerprint)


# -- parse_version ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, None), ("latest", None), (0, 0), (3, 3), ("3", 3), ("007", 7), (" 12 ", 12), (10**12, 10**12),
])
def test_parse_version_good(value, expected):
    assert parse_version(value) == expected


@pytest.mark.parametrize("value", [-1, "-1", "1.5", 1.5, "", "v1", "Latest", "LATEST", True, False, [1], "1e3",
                                   "３", "1\n2"])
def test_parse_version_bad(value):
    with pytest.raises(ValueError) as exc:
        parse_version(value)
    assert "invalid model version" in str(exc.value)


@given(st.text(alphabet="./a_", max_size=12))
def test_ignored_keys_are_those_with_a_dotfile_segment_or_a_trailing_slash(key):
    from replica.layout import _ignored

    dotfile = any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))
    assert _ignored(key) == (key.endswith("/") or dotfile)
