"""model.toml: every kind of fault is one line naming file, key, what was expected, what was got."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, field_validator, model_validator

from model.errors import UsageError
from model.toml import Fault, NonEmptyStr, PositiveInt, PositiveNumber, Strict, load, read_toml, validate


class Leaf(Strict):
    size: PositiveInt = 1
    tags: list[Literal["red", "green", "blue"]] = []


class Other(Strict):
    colour: str


class Doc(Strict):
    name: NonEmptyStr = "x"
    jobs: PositiveInt | Literal["auto"] = Field("auto", description='a positive integer or "auto"')
    either: int | str = 0                       # a union without a description
    ratio: Annotated[float, Field(gt=1)] = 2.0
    short: Annotated[list[int], Field(max_length=2)] = []
    code: Annotated[str, Field(pattern=r"^[a-z]+$")] = "a"
    leaves: list[Leaf] = []
    named: dict[Annotated[str, Field(pattern=r"^[a-z]+$", description="a lowercase name")], Leaf] = {}
    shape: Leaf | Other | None = None
    need: PositiveNumber = 1.0
    must: Annotated[str, Field(description="a glob")] = "*"
    odd: int = 1
    span: list[int] = [0, 1]
    mode: str = "a"
    path: str | None = None

    @field_validator("odd")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("expected an odd integer")
        return v

    @field_validator("span")
    @classmethod
    def _ordered(cls, v: list[int]) -> list[int]:
        if v != sorted(v):
            raise AssertionError("low before high")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v == "b":
            raise ValueError("mode b is retired; use a")
        return v

    @model_validator(mode="after")
    def _path(self) -> Doc:
        if self.mode == "c" and self.path is None:
            raise Fault("path", 'needed with mode = "c"')
        return self


class Bare(Strict):
    """Constraints without a description: pydantic's words, put as what was expected."""
    a: Annotated[int, Field(gt=0)] = 1
    b: Annotated[str, Field(min_length=3)] = "abc"
    c: Annotated[dict[str, int], Field(min_length=1)] = {"x": 1}


class Required(Strict):
    need: PositiveNumber
    must: str = Field(description="a glob")
    plain: str


def line(data: Any, model: type[Strict] = Doc, source: str = "f.toml", prefix: str = "") -> str:
    with pytest.raises(UsageError) as exc:
        validate(model, data, source, prefix)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("data, expected", [
    # unknown keys: the nearest known one, else the known ones
    ({"nmae": "y"}, "f.toml: nmae: unknown key (did you mean 'name'?)"),
    ({"leaves": [{"sise": 2}]}, "f.toml: leaves[0].sise: unknown key (did you mean 'size'?)"),
    ({"named": {"a": {"zzz": 1}}}, "f.toml: named.a.zzz: unknown key (known: size, tags)"),
    # a typo is named before the required key it leaves missing
    ({"needd": 1, "plain": "p"}, "f.toml: needd: unknown key (did you mean 'need'?)"),
    # a type fault in TOML's words, the value as written
    ({"name": 3}, "f.toml: name: expected a non-empty string, got 3"),
    ({"name": ""}, "f.toml: name: expected a non-empty string, got ''"),
    ({"leaves": {"size": 1}}, "f.toml: leaves: expected a list, got {'size': 1}"),
    ({"leaves": [3]}, "f.toml: leaves: item 0: expected a table, got 3"),
    ({"leaves": [{"size": True}]}, "f.toml: leaves[0].size: expected a positive integer, got True"),
    ({"need": "1"}, "f.toml: need: expected a positive number, got '1'"),
    ({"need": 0}, "f.toml: need: expected a positive number, got 0"),
    # choices: did you mean, also for list items and inside a described union
    ({"leaves": [{"tags": ["red", "gren"]}]},
     "f.toml: leaves[0].tags: item 1: expected one of red, green, blue, got 'gren' (did you mean 'green'?)"),
    ({"leaves": [{"tags": ["purple"]}]}, "f.toml: leaves[0].tags: item 0: expected one of red, green, blue, got 'purple'"),
    ({"jobs": "aut"}, "f.toml: jobs: expected a positive integer or \"auto\", got 'aut' (did you mean 'auto'?)"),
    ({"jobs": 0}, "f.toml: jobs: expected a positive integer or \"auto\", got 0"),
    ({"jobs": True}, "f.toml: jobs: expected a positive integer or \"auto\", got True"),
    # a union without a description names every member tried; no pydantic tag in the key
    ({"either": 1.5}, "f.toml: either: expected an integer or a string, got 1.5"),
    ({"shape": 3}, "f.toml: shape: expected a table, got 3"),
    # a dict key that breaks its pattern: the key, said by its description
    ({"named": {"Big": {}}}, "f.toml: named.Big: expected a lowercase name, got 'Big'"),
    # constraints without a description, from pydantic's own words
    ({"ratio": 1}, "f.toml: ratio: expected greater than 1, got 1"),
    ({"short": [1, 2, 3]}, "f.toml: short: expected at most 2 item(s), got [1, 2, 3]"),
    ({"code": "A"}, "f.toml: code: expected a value matching pattern '^[a-z]+$', got 'A'"),
    # a validator's own words, verbatim; with the value when they say what was expected
    ({"odd": 2}, "f.toml: odd: expected an odd integer, got 2"),
    ({"mode": "b"}, "f.toml: mode: mode b is retired; use a"),
    ({"span": [3, 1]}, "f.toml: span: low before high"),
    ({"mode": "c"}, 'f.toml: path: needed with mode = "c"'),
    # the top level
    ([1, 2], "f.toml: (top level): expected a table, got [1, 2]"),
    ({"name": "x" * 100}, None),
    ({"leaves": [{"tags": "x" * 100}]}, "got '" + "x" * 56 + "..."),
])
def test_every_fault_is_one_line(data, expected):
    if expected is None:  # valid
        validate(Doc, data, "f.toml")
        return
    msg = line(data)
    assert msg.startswith(expected) if expected.startswith("f.toml") else expected in msg, msg


def test_missing_keys_say_what_was_expected_when_the_schema_says_it():
    assert line({"must": "*", "plain": "p"}, Required) == "f.toml: need: expected a positive number (missing)"
    assert line({"need": 1, "plain": "p"}, Required) == "f.toml: must: expected a glob (missing)"
    assert line({"need": 1, "must": "*"}, Required) == "f.toml: plain: missing (required)"


def test_constraints_without_a_description():
    assert line({"a": 0}, Bare) == "f.toml: a: expected greater than 0, got 0"
    assert line({"b": "ab"}, Bare) == "f.toml: b: expected a value with at least 3 characters, got 'ab'"
    assert line({"c": {}}, Bare) == "f.toml: c: expected at least 1 item(s), got {}"


def test_prefix_and_no_source():
    assert line({"size": 0}, Leaf, prefix="pools.a") == "f.toml: pools.a.size: expected a positive integer, got 0"
    assert line({"size": 0}, Leaf, source="", prefix="x") == "x.size: expected a positive integer, got 0"
    assert line(3, Leaf, source="") == "(top level): expected a table, got 3"


def test_read_and_load(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text("size = 2\ntags = ['red']\n")
    assert load(Leaf, good) == Leaf(size=2, tags=["red"])
    bad = tmp_path / "bad.toml"
    bad.write_text("size = '2'\n")
    with pytest.raises(UsageError, match=r"bad.toml: size: expected a positive integer, got '2'$"):
        load(Leaf, bad)
    (tmp_path / "broken.toml").write_text("[size\n")
    with pytest.raises(UsageError, match=r"broken.toml: not valid TOML: "):
        read_toml(tmp_path / "broken.toml")
    (tmp_path / "latin.toml").write_bytes(b"a = '\xe9'\n")
    with pytest.raises(UsageError, match=r"latin.toml: not valid TOML: not UTF-8 text"):
        read_toml(tmp_path / "latin.toml")
    with pytest.raises(UsageError, match=r"missing.toml: cannot read: "):
        read_toml(tmp_path / "missing.toml")


def test_models_are_frozen_and_strict():
    leaf = validate(Leaf, {"size": 2}, "f.toml")
    with pytest.raises(Exception):
        leaf.size = 3  # type: ignore[misc]
    assert "expected a positive integer, got '2'" in line({"size": "2"}, Leaf)


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(list(Doc.model_fields) + ["size", "tags", "colour", "x",
                                                                                      "Big", "a"]),
                                            inner, max_size=4)),
    max_leaves=15)


@settings(max_examples=400, deadline=None)
@given(data=values)
def test_any_structure_is_a_model_or_one_line(data):
    """Whatever the structure, the result is the model or a UsageError line, never another exception."""
    try:
        validate(Doc, data, "fuzz.toml")
    except UsageError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc)
