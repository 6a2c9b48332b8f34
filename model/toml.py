"""The one way a TOML file a user edits is read and checked: pydantic models as the schema, and every
fault as one line: `<file>: <key.path>: <what was expected>, got <value> (did you mean …?)`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from model.errors import UsageError, did_you_mean

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every user-edited table: unknown keys are errors, and no silent coercion
    (`"3"` is not an int, `1` is not `true`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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


def _key(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The known keys of the table that holds loc's last key, for did-you-mean."""
    cur: Any = model
    for p in loc[:-1]:
        if isinstance(p, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            cur = _inner(cur)
            if isinstance(p, int):
                continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or p not in cur.model_fields:
            return []
        cur = cur.model_fields[p].annotation
    cur = _inner(cur)
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _inner(tp: Any) -> Any:
    """list[X] / dict[str, X] / X | None → X (the table type inside a container annotation)."""
    for arg in getattr(tp, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        found = _inner(arg)
        if found is not arg:
            return found
    return tp


def one_line(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    # An unknown key usually explains the "missing" one beside it (a typo), so it is named first.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = tuple(err["loc"])
    key = _key(loc, prefix)
    if err["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key{did_you_mean(str(loc[-1]), _fields_at(model, loc))}"
    if err["type"] == "missing":
        return f"{source}: {key}: missing (required)"
    got = err.get("input")
    hint = ""
    if err["type"] == "literal_error" and isinstance(got, str):
        choices = [c.strip(" '") for c in err.get("ctx", {}).get("expected", "").replace(" or ", ",").split(",")]
        hint = did_you_mean(got, [c for c in choices if c])
    msg = err["msg"][0].lower() + err["msg"][1:]
    msg = msg.replace("input should be", "expected").replace("value error, ", "")
    return f"{source}: {key}: {msg}, got {type(got).__name__} {got!r}{hint}"


def validate(model: type[M], data: Any, source: str, prefix: str = "") -> M:
    """`model` from parsed TOML, or UsageError with the first fault as one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(one_line(exc, model, source, prefix)) from None


def load(model: type[M], path: Path) -> M:
    return validate(model, read_toml(path), str(path))
