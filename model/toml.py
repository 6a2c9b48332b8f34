"""The one way a TOML file a user edits is read and checked: pydantic models as the schema, and every
fault as one line: `<file>: <key.path>: expected <what>, got <value> (did you mean …?)`.

What a key expects is said by the schema itself: a field's (or an Annotated type's) `description`
(`Field(description="a glob over cell ids")`) names it for every fault of that value, unions included;
without one, pydantic's error type is put in TOML's words. A validator's `ValueError("expected …")`
is printed verbatim; `Fault(key, text)` from a model validator blames one key of the table.
"""

from __future__ import annotations

import json

import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from model.errors import UsageError, did_you_mean

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every user-edited table: unknown keys are errors, and no silent coercion
    (`"3"` is not an int, `1` is not `true`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Fault(ValueError):
    """Raised by a model validator: `Fault("path", "expected …")` names the key inside the table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


PositiveInt = Annotated[int, Field(gt=0, description="a positive integer")]
NonNegativeInt = Annotated[int, Field(ge=0, description="a non-negative integer")]
PositiveNumber = Annotated[float, Field(gt=0, description="a positive number")]
NonNegativeNumber = Annotated[float, Field(ge=0, description="a non-negative number")]
NonEmptyStr = Annotated[str, Field(min_length=1, description="a non-empty string")]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid TOML: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None


# --- following an error's location through the schema ------------------------------------------

def _unwrap(tp: Any, desc: str | None) -> tuple[Any, str | None]:
    """Annotated[X, Field(description=…)] → X and its description; X | None → X (TOML has no null)."""
    while True:
        if get_origin(tp) is Annotated:
            infos = [m for m in tp.__metadata__ if isinstance(m, FieldInfo) and m.description]
            desc = desc or (infos[-1].description if infos else None)
            tp = tp.__origin__
        elif _is_union(tp) and len(members := _members(tp)) == 1:
            tp = members[0]
        else:
            return tp, desc


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _members(tp: Any) -> list[Any]:
    return [a for a in get_args(tp) if a is not type(None)]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key the file writes (a field's alias, e.g. a TOML key with a dash)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[Any], Any, str | None]:
    """The key path the user wrote (pydantic's union-member tags and '[key]' marks dropped), the
    type found there and its description."""
    keys: list[Any] = []
    tp, desc = _unwrap(model, None)
    for i, p in enumerate(loc):
        origin, args = get_origin(tp), get_args(tp)
        if p == "[key]":  # the key before it was the fault, not its value
            continue
        if _is_model(tp):
            keys.append(p)
            info = _fields(tp).get(p) if isinstance(p, str) else None
            tp, desc = _unwrap(info.annotation, info.description) if info else (Any, None)
        elif _is_union(tp):  # p names the member pydantic tried; the union's description stays
            tp = next((m for m in _members(tp) if getattr(m, "__name__", None) == p), tp)
        elif origin is dict and len(args) == 2:
            keys.append(p)
            tp, desc = _unwrap(args[0 if loc[i + 1:i + 2] == ("[key]",) else 1], None)
        elif origin in (list, tuple) and isinstance(p, int) and args:
            keys.append(p)
            tp, desc = _unwrap(args[min(p, len(args) - 1)] if args[-1] is not Ellipsis else args[0], None)
        else:
            keys.append(p)
            tp, desc = Any, None
    return keys, tp, desc


def _literals(tp: Any) -> list[Any]:
    """The allowed values of a Literal, also inside unions and Annotated."""
    tp, _ = _unwrap(tp, None)
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return [v for m in (_members(tp) if _is_union(tp) else ()) for v in _literals(m)]


# --- one line per fault ------------------------------------------------------------------------

_WHAT = {
    "string_type": "a string", "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list", "dict_type": "a table",
    "model_type": "a table", "model_attributes_type": "a table", "dataclass_type": "a table",
}


def _what(err: dict[str, Any], tp: Any) -> str:
    """What pydantic's error says was expected, in TOML's words."""
    kind, ctx = err["type"], err.get("ctx", {})
    if kind in _WHAT:
        return _WHAT[kind]
    if kind == "literal_error":
        return "one of " + (", ".join(map(str, _literals(tp))) or ctx.get("expected", "?"))
    if kind in ("too_short", "too_long"):
        return f"at {'least' if kind == 'too_short' else 'most'} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
    # The rest: "Input should be X" → "X", "String should match pattern P" → "a value matching pattern P".
    m = re.match(r"\w+ should (be|have|match) (.*)", err["msg"])
    return err["msg"] if not m else {"be": "", "have": "a value with ", "match": "a value matching "}[m[1]] + m[2]


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(keys: list[Any], prefix: str) -> str:
    """a.b[0].c; a list item that is itself the fault reads `a.b: item 0`."""
    out = prefix
    for i, p in enumerate(keys):
        if isinstance(p, int):
            out += f": item {p}" if i == len(keys) - 1 else f"[{p}]"
        else:
            # A key that is not a plain word (a line break, a dot, a space) is quoted as TOML would.
            p = str(p) if str(p).replace("_", "").replace("-", "").isalnum() else json.dumps(str(p))
            out += f".{p}" if out else p
    return out or "(top level)"


def one_line(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    # An unknown key usually explains the "missing" one beside it (a typo), so it is named first.
    errs = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errs[0]
    keys, tp, desc = _walk(model, tuple(err["loc"]))
    head = f"{source}: " if source else ""
    got = err.get("input")
    fault = err.get("ctx", {}).get("error")
    if isinstance(fault, Fault):
        return f"{head}{_key([*keys, *fault.key.split('.')], prefix)}: {fault}"
    key = _key(keys, prefix)
    if err["type"] == "extra_forbidden":
        _, table, _ = _walk(model, tuple(err["loc"])[:-1])
        known = list(_fields(table)) if _is_model(table) else []
        hint = did_you_mean(str(keys[-1]), known) or (f" (known: {', '.join(known)})" if known else "")
        return f"{head}{key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{head}{key}: " + (f"expected {desc} (missing)" if desc else "missing (required)")
    if err["type"] in ("value_error", "assertion_error"):  # a validator's own words, verbatim
        text = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{head}{key}: {text}" + (f", got {_got(got)}" if text.startswith("expected") else "")
    if desc:
        what = desc
    else:  # a union without a description: every member pydantic tried, at this key
        same = [e for e in errs if _walk(model, tuple(e["loc"]))[0] == keys and e["type"] != "extra_forbidden"]
        what = " or ".join(dict.fromkeys(_what(e, _walk(model, tuple(e["loc"]))[1]) for e in same))
    choices = [str(v) for v in _literals(tp)]
    hint = did_you_mean(got, choices) if isinstance(got, str) and choices else ""
    return f"{head}{key}: expected {what}, got {_got(got)}{hint}"


def validate(model: type[M], data: Any, source: str, prefix: str = "") -> M:
    """`model` from parsed TOML, or UsageError with the first fault as one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(one_line(exc, model, source, prefix)) from None


def load(model: type[M], path: Path) -> M:
    return validate(model, read_toml(path), str(path))
