"""What an engine's server accepts, read from its own --help, and knob intents -> its flags.

Two help styles are read: argparse's (vLLM: option lines indented, `--flag VALUE` or `-x, --flag`)
and llama.cpp's (option lines at column 0, `-np,   --parallel N`). Every long and short option named
at the head of an option line counts. No Docker here: parsing and translation only.
"""

from __future__ import annotations

import re
from typing import Any

from model.errors import UsageError, did_you_mean

from engines.spec import EngineSpec

_OPT = re.compile(r"(?:^|[,\s])(--?[A-Za-z0-9][\w.-]*)")


def parse_help(text: str) -> frozenset[str]:
    """Every option an engine's --help text defines (the head of each line that starts with a dash)."""
    flags: set[str] = set()
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped.startswith("-") or len(line) - len(stripped) > 6:  # deeper: a wrapped description
            continue
        # llama.cpp pads after a short option's comma (`-a,    --alias`): one space there, then the head
        # ends at the first run of two or more spaces (the description column).
        head = re.split(r"\s{2,}", re.sub(r",\s+", ", ", stripped), maxsplit=1)[0]
        flags.update(f.rstrip(".,") for f in _OPT.findall(head))
    return frozenset(flags)


def translate(spec: EngineSpec, knobs: dict[str, Any], accepted: frozenset[str], version: str = "") -> list[str]:
    """Intents -> this engine's CLI args; UsageError (one line) on a knob it lacks or a bad value."""
    label = f"{spec.name} {version}".strip()
    args: list[str] = []
    for name, value in knobs.items():
        knob = spec.knobs.get(name)
        if knob is None:
            raise UsageError(f"engines/{spec.name}.toml: knobs.{name}: {label} has no knob for this intent"
                             f"{did_you_mean(name, spec.knobs)} (known: {', '.join(sorted(spec.knobs))})")
        flag = next((f for f in knob.flags if f in accepted), None)
        if flag is None:
            raise UsageError(f"knob {name}: {label} does not accept {' or '.join(knob.flags)} (read from its --help)")
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[knob.type]
        if not ok:
            raise UsageError(f"knob {name}: expected a {knob.type} value, got {value!r}")
        if knob.type == "bool":
            if value:
                args.append(flag)
            elif flag.startswith("--") and "--no-" + flag[2:] in accepted:
                args.append("--no-" + flag[2:])
            else:
                raise UsageError(f"knob {name} = false: {label} accepts {flag} but no way to turn it off")
        else:
            args += [flag, str(value)]
    return args


def unaccepted(command: list[str], help_command: list[str], accepted: frozenset[str]) -> list[str]:
    """The options of `command` its server does not accept. The program part (what the command shares
    with the help command, e.g. `python -m vllm.entrypoints.openai.api_server`) is not checked."""
    n = 0
    while n < min(len(command), len(help_command)) and command[n] == help_command[n]:
        n += 1
    return [a.split("=", 1)[0] for a in command[n:] if a.startswith("-") and a.split("=", 1)[0] not in accepted]
