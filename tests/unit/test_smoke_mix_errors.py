"""Bad mix files and traces: one UsageError line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

from model.errors import UsageError
from smoke import mix as mixmod, workload as wl
from tests.strategies import toml_documents

GOOD = """
[mix]
name = "t"
[classes.chat]
weight = 1
endpoint = "chat"
prompt_tokens = [4, 8]
output_tokens = 4
"""


def _load(tmp_path: Path, text: str):
    p = tmp_path / "m.toml"
    p.write_text(text)
    return mixmod.load(p)


def test_minimal_mix_loads(tmp_path: Path):
    m = _load(tmp_path, GOOD)
    assert m.classes[0].output_tokens.lo == 4 and m.arrival.process == "poisson"


@pytest.mark.parametrize("edit, expect", [
    # A typo is named before the key it leaves missing.
    (GOOD.replace("weight = 1", "wieght = 1"), "classes.chat.wieght: unknown key (did you mean 'weight'?)"),
    (GOOD.replace("weight = 1\n", ""), "classes.chat.weight: expected a positive number (missing)"),
    (GOOD.replace("weight = 1", "weight = true"), "classes.chat.weight: expected a positive number, got True"),
    (GOOD + "slo = { min_success = 1.5 }\n", "classes.chat.slo.min_success: expected a fraction in (0, 1], got 1.5"),
    (GOOD + "turns = { count = 2, tool_result_tokens = [1, 2], think_s = -1 }\n",
     "classes.chat.turns.think_s: expected a non-negative number or a range [low, high], got -1"),
    (GOOD + "reader = { bytes_per_s = [100, 0] }\n", "classes.chat.reader.bytes_per_s: item 1: expected a positive integer, got 0"),
    (GOOD + "reader = { bytes_per_s = \"fast\" }\n", "classes.chat.reader.bytes_per_s: expected a positive integer or a list of them, got 'fast'"),
    (GOOD + "[arrival]\npath = \"a.jsonl\"\n", "arrival.path: only used with process = \"trace\", not 'poisson'"),
    (GOOD.replace('name = "t"', 'name = ""'), "mix.name: expected a non-empty string, got ''"),
    ('[classes]\nchat = 3\n', "classes.chat: expected a table, got 3"),
    (GOOD + "prompt_tokns = 3\n", "classes.chat.prompt_tokns: unknown key (did you mean 'prompt_tokens'?)"),
    (GOOD.replace('"chat"\n', '"chats"\n', 1).replace('endpoint = "chats"', 'endpoint = "chatt"'),
     "classes.chat.endpoint: expected one of chat, completions, got 'chatt' (did you mean 'chat'?)"),
    (GOOD.replace("[4, 8]", "[8, 4]"), "classes.chat.prompt_tokens: expected a positive integer or a range"),
    (GOOD + "slo = { percentile = 42 }\n", "classes.chat.slo.percentile: expected one of 50, 90, 95, 99"),
    (GOOD + "[arrival]\nprocess = \"poison\"\n", "arrival.process: expected one of poisson, gamma, trace, got 'poison'"
                                                  " (did you mean 'poisson'?)"),
    (GOOD + "[arrival]\nprocess = \"trace\"\n", "arrival.path: expected the path of an arrival trace"),
    ('[mix]\nname = "x"\n', "classes: expected at least one [classes.NAME] table"),
    (GOOD + "[gate]\n", "gate: unknown key (did you mean 'gates'?)"),
    ("[mix\n", "not valid TOML"),
])
def test_bad_mix_is_one_line_naming_file_and_key(tmp_path: Path, edit: str, expect: str):
    with pytest.raises(UsageError) as exc:
        _load(tmp_path, edit)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "m.toml")) and expect in msg, msg


def test_unknown_mix_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'default'"):
        mixmod.load("defualt")


def test_bad_arrival_trace_line(tmp_path: Path):
    (tmp_path / "arr.jsonl").write_text('{"t": 0}\n{"t": "soon"}\n')
    m = _load(tmp_path, GOOD + '[arrival]\nprocess = "trace"\npath = "arr.jsonl"\n')
    with pytest.raises(UsageError, match=r"arr.jsonl:2: t: expected"):
        wl.generate(m, 0)
    (tmp_path / "arr.jsonl").write_text('{"t": 0, "class": "chta"}\n')
    with pytest.raises(UsageError, match=r"unknown class 'chta' \(did you mean 'chat'\?\)"):
        wl.generate(m, 0)


def test_bad_trace_file(tmp_path: Path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"kind": "header"}\n{"id": "a"}\n')
    with pytest.raises(UsageError, match=r"t.jsonl:2: expected a trace request line"):
        wl.read(p)
    with pytest.raises(UsageError, match="no such trace file"):
        wl.read(tmp_path / "missing.jsonl")


_docs = toml_documents(["mix", "arrival", "gates", "classes", "chat", "name", "duration_s", "max_concurrency",
                        "process", "rate_rps", "path", "weight", "endpoint", "prompt_tokens", "output_tokens", "slo",
                        "percentile", "min_success", "turns", "count", "think_s", "reader", "bytes_per_s"],
                       ["chat", "trace", "poisson", "a.jsonl"])


@settings(max_examples=300, deadline=None)
@given(doc=_docs)
def test_fuzzed_mixes_give_usage_errors_only(doc):
    """Any structure: a Mix or one UsageError line; never another exception."""
    try:
        mixmod.parse(doc, "fuzz.toml", Path("."))
    except UsageError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc)
