"""Bad input, fuzzed: the classifier's rules.toml loader, the log classifier, the trace JSONL reader
(smoke/workload.py `read`) and the request-records reader (smoke/records.py `read`).

The contract: malformed input gives ONE UsageError line that names the file; no other exception, ever.
The inputs that fuzzing found breaking it (non-UTF-8 files, huge numbers, lists as ids, JSON arrays as
lines, deep nesting, NaN times) are kept as named cases below.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from images.classify import RULES, Classification, Rules, _fill, classify_text, load_rules
from model.errors import UsageError
from smoke import records, workload

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


def _contract(read, path: Path):
    """read(path) returns, or raises UsageError as one line naming the file; anything else fails the test."""
    try:
        return read(path)
    except UsageError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(path) in msg, msg
        return exc


# --- rules.toml ------------------------------------------------------------------------------

REAL = tomllib.loads(RULES.read_text())
toml_scalars = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
                | st.sampled_from(["(", "[a-", "*", "(?P<x>", "fatal", "warning", "success", "error", "x", "{", "{0}", "{a.b}"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3), max_leaves=8)


def _paths(doc, prefix=()):
    """Every key path in a parsed TOML document (tables, arrays of tables, their values)."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


PATHS = _paths(REAL)


def _mutate(doc, path, value, delete):
    import copy
    doc = copy.deepcopy(doc)
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


@FUZZ
@given(path=st.sampled_from(PATHS), value=toml_values, delete=st.booleans())
def test_rules_loader_mutated_real_file(tmp_path, path, value, delete):
    """The real rules.toml with one key removed or given another value: loads, or one UsageError line."""
    f = tmp_path / "rules.toml"
    f.write_text(tomli_w.dumps(_mutate(REAL, path, value, delete)))
    _loads_and_classifies(f)


KEYS = ["id", "category", "severity", "patterns", "remediation", "before", "name", "crashed", "fatal", "exception",
        "priority", "note"]


def _at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


TABLES = [()] + [path for path in PATHS if isinstance(_at(REAL, path), dict)]


@FUZZ
@given(i=st.integers(0, len(REAL["rule"]) - 1), text=st.text(alphabet="{}ab_0.[]:!r ", max_size=10))
def test_rules_loader_any_remediation(tmp_path, i, text):
    """Remediations are templates ({group} from the pattern): a broken one fails at load, not mid-classify."""
    f = tmp_path / "rules.toml"
    f.write_text(tomli_w.dumps(_mutate(REAL, ("rule", i, "remediation"), text, False)))
    _loads_and_classifies(f)


# Any key TOML can write (surrogates cannot be UTF-8); line breaks have their own test below.
printable_keys = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=6)


@FUZZ
@given(table=st.sampled_from(TABLES), key=st.sampled_from(KEYS) | printable_keys, value=toml_values)
def test_rules_loader_added_key(tmp_path, table, key, value):
    """A key added to any table of the real file (a known key in the wrong table, or an unknown one)."""
    import copy
    doc = copy.deepcopy(REAL)
    _at(doc, table)[key] = value
    f = tmp_path / "rules.toml"
    f.write_text(tomli_w.dumps(doc))
    _loads_and_classifies(f)


def _loads_and_classifies(f: Path) -> None:
    """A rules file that loads must also classify: a bad one may only fail at load, as one line."""
    got = _contract(load_rules, f)
    assert isinstance(got, (Rules, UsageError))
    if isinstance(got, Rules):
        for text in ("", "Traceback (most recent call last):\nValueError: x\n", "Application startup complete"):
            assert isinstance(classify_text(text, got), Classification)
        for rule in got.rules:  # what classify does with the remediation of a rule that matched
            assert isinstance(_fill(rule.remediation, None), str)


def test_rules_loader_key_with_a_line_break(tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text(RULES.read_text() + '"\\n" = 1\n')
    _contract(load_rules, f)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_rules_loader_arbitrary_bytes(tmp_path, raw):
    f = tmp_path / "rules.toml"
    f.write_bytes(raw)
    assert isinstance(_contract(load_rules, f), UsageError)  # nothing this short is a whole rules file


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["outcome", "kind", "rule", "ruel"]), toml_values, max_size=3))
def test_rules_loader_arbitrary_tables(tmp_path, doc):
    f = tmp_path / "rules.toml"
    f.write_text(tomli_w.dumps(doc))
    assert isinstance(_contract(load_rules, f), UsageError)


def test_rules_loader_refuses_a_pattern_nested_too_deep(tmp_path):
    """Found by fuzzing: re's parser raised RecursionError through the loader."""
    f = tmp_path / "rules.toml"
    f.write_text(tomli_w.dumps(_mutate(REAL, ("rule", 0, "patterns", 0), "(" * 1000 + ")" * 999, False)))
    got = _contract(load_rules, f)
    assert isinstance(got, UsageError) and "rule[0].patterns: item 0: not a valid regex: nested too deep" in str(got)


# --- the classifier on any text --------------------------------------------------------------

LOG_LINES = st.sampled_from([
    "Traceback (most recent call last):", "ValueError: bad", "# exit 1 after 2.0s", "# exit 0 after 2.0s",
    "INFO:     Application startup complete.", "WARNING libtcmalloc is not found in LD_PRELOAD.",
    "Killed", "FAILED: x.o", "No space left on device", "ERROR 12-06 [core.py:1] EngineCore failed to start.",
    "# captured: x | exit: 1", "(EngineCore_DP0 pid=1) RuntimeError: x", "llama_server: listening on http://x",
]) | st.text(max_size=80)


@FUZZ
@given(lines=st.lists(LOG_LINES, max_size=30))
def test_classifier_never_raises_and_a_death_is_never_unknown(lines):
    text = "\n".join(lines)
    c = classify_text(text)
    assert isinstance(c, Classification) and c.category
    assert c.category not in load_rules().categories("warning")
    if c.severity in ("crashed", "fatal"):
        assert c.category not in ("unknown", "success")


# --- trace JSONL (smoke/workload.py read) ----------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                                    allow_infinity=False) | st.text(max_size=10)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
GOOD = {"id": "r1", "t": 0.5, "class": "interactive_chat", "endpoint": "chat", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]}
FIELDS = [*GOOD, "prompt", "session", "turn", "after", "think_s", "tool_result", "read_bytes_per_s",
          "recv_buffer_bytes", "extra", "kind"]
request_lines = st.builds(lambda changes, drop: {**{k: v for k, v in GOOD.items() if k not in drop}, **changes},
                          st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
                          st.sets(st.sampled_from(list(GOOD)), max_size=2))


@FUZZ
@given(lines=st.lists(request_lines | json_values, min_size=1, max_size=5))
def test_trace_reader_malformed_lines(tmp_path, lines):
    f = tmp_path / "trace.jsonl"
    f.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    got = _contract(workload.read, f)
    if isinstance(got, workload.Trace):
        assert all(isinstance(r, workload.TraceRequest) for r in got.requests)


@pytest.mark.parametrize("read", [workload.read, records.read], ids=["trace", "records"])
@FUZZ
@given(text=st.text(max_size=200))
def test_jsonl_readers_arbitrary_text(tmp_path, read, text):
    f = tmp_path / "in.jsonl"
    f.write_text(text)
    _contract(read, f)


def test_trace_reader_round_trips_a_real_trace(tmp_path):
    """The fuzzing above is against a reader that works: a generated trace reads back identical."""
    from smoke import mix
    t = workload.generate(mix.load("default"), 1)
    p = workload.write(t, tmp_path / "t.jsonl")
    assert workload.dumps(workload.read(p)) == p.read_text()


def _raises_other_than_usage_error(read, data: bytes, tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(data)
    _contract(read, f)


LINE = dict(GOOD)


@pytest.mark.parametrize("data", [
    pytest.param(b"\xff\xfe\n"),
    pytest.param((json.dumps({**LINE, "max_tokens": 1e400}) + "\n").encode()),
    pytest.param((json.dumps({**LINE, "id": [1]}) + "\n").encode()),
    pytest.param((json.dumps({**LINE, "after": [1]}) + "\n").encode()),
    pytest.param(b"[" * 100_000 + b"\n"),
], ids=["not-utf8", "max_tokens-1e400", "id-list", "after-list", "nested-100k"])
def test_trace_reader_malformed_files_are_usage_errors(tmp_path, data):
    """Inputs fuzzing found crashing the reader (a non-UTF-8 file, a huge number, lists as ids, deep nesting)."""
    _raises_other_than_usage_error(workload.read, data, tmp_path)


def test_trace_reader_refuses_a_non_finite_time(tmp_path):
    """t = NaN / Infinity (json allows both) would be a request that never leaves, or leaves at once."""
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({**LINE, "t": math.nan}) + "\n")
    got = _contract(workload.read, f)
    assert isinstance(got, UsageError) and "t: expected a finite time" in str(got)


# --- request records JSONL (smoke/records.py read) ----------------------------------------------

RECORD = {"id": "r1", "cls": "rag", "endpoint": "chat", "scheduled_s": 0.0, "sent_s": 0.0, "end_s": 1.0,
          "status": "ok"}


@FUZZ
@given(changes=st.lists(st.dictionaries(st.sampled_from([*RECORD, "itl_s", "ttft_s"]), json_values, max_size=3),
                        min_size=1, max_size=4))
def test_records_reader_malformed_records(tmp_path, changes):
    f = tmp_path / "records.jsonl"
    f.write_text("".join(json.dumps({**RECORD, **c}) + "\n" for c in changes))
    _contract(records.read, f)


@pytest.mark.parametrize("data", [
    pytest.param(b"\xff\xfe\n"),
    pytest.param(b"[1, 2]\n"),
    pytest.param(b"[" * 100_000 + b"\n"),
], ids=["not-utf8", "json-array-line", "nested-100k"])
def test_records_reader_malformed_files_are_usage_errors(tmp_path, data):
    _raises_other_than_usage_error(records.read, data, tmp_path)


@pytest.mark.parametrize("text", ["{_!0}", "{x!r}", "{x:>5}"])
def test_remediation_templates_take_plain_names_only(tmp_path, text):
    """Found by fuzzing: a conversion passed the loader and then failed in format_map."""
    from images.classify import load_rules
    f = tmp_path / "rules.toml"
    f.write_text(RULES.read_text().replace('remediation = ""', f'remediation = "{text}"', 1))
    got = _contract(load_rules, f)
    assert isinstance(got, UsageError) and "not a valid template" in str(got), got
