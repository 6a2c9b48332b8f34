"""The OpenAI contract, check by check, against any server: `invoke conform`.

Each check sends real requests over httpx and judges the answer; every body is parsed with the
official `openai` package's types (ChatCompletion, ChatCompletionChunk, Completion, Model,
ErrorObject), so the schema is OpenAI's, not ours. The checks, their order and which are required
are data (conform.toml). A result is one line: `<check> pass|fail|unsupported <evidence>`.
No request may hang: each has a deadline, and a timeout is a fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from openai.types import Completion, CompletionChoice, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject
from pydantic import ValidationError

from model.toml import Strict, load

CHECKS_FILE = Path(__file__).with_name("conform.toml")
PROMPT = "alpha beta gamma delta"  # any text: the test model's words are single tokens
TOOL = {"type": "function", "function": {"name": "lookup", "description": "look a word up",
                                         "parameters": {"type": "object", "properties": {},
                                                                        "additionalProperties": False}}}


class CompletionStreamChoice(CompletionChoice):
    # OpenAI streams completions as Completion objects whose finish_reason is null until the last
    # chunk (the SDK reads them unvalidated); the one relaxation of its type, for streamed chunks only.
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class CompletionChunk(Completion):
    choices: list[CompletionStreamChoice]


class CheckDef(Strict):
    required: bool
    what: str
    extension: str = ""


class CheckFile(Strict):
    checks: dict[str, CheckDef]


@dataclass(frozen=True)
class Result:
    check: str
    status: Literal["pass", "fail", "unsupported"]
    evidence: str
    required: bool = True

    def line(self) -> str:
        return f"{self.check} {self.status} {'' if self.required else '[optional] '}{self.evidence}"


class Failed(Exception):
    """A check's verdict: the contract was broken (the message is the evidence)."""


class Unsupported(Exception):
    """A check's verdict: the server does not offer this (not a failure of the contract)."""


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(map(str, e['loc']))}: {e['msg']}"


def parse(model_type, obj: Any, what: str):
    try:
        return model_type.model_validate(obj)
    except ValidationError as exc:
        raise Failed(f"{what} is not an openai {model_type.__name__}: {_first_error(exc)}") from None


@dataclass
class Stream:
    """A streamed answer as read off the wire."""
    status: int
    lines: list[str] = field(default_factory=list)      # every line, blank ones included
    payloads: list[str] = field(default_factory=list)   # the data of each `data:` line, in order
    body: str = ""                                      # non-200: the whole body


class Client:
    """httpx with the contract's defaults: one base URL, optional bearer key, a deadline per request."""

    def __init__(self, http: httpx.Client, model: str, timeout_s: float = 60.0) -> None:
        self.http = http
        self.model = model
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)

    def post(self, path: str, body: dict | None = None, content: bytes | None = None) -> httpx.Response:
        try:
            if content is not None:
                return self.http.post(path, content=content, headers={"Content-Type": "application/json"},
                                      timeout=self.timeout)
            return self.http.post(path, json=body, timeout=self.timeout)
        except httpx.TimeoutException:
            raise Failed(f"POST {path}: no answer within {self.timeout.read:g} s (a hang)") from None
        except httpx.HTTPError as exc:
            raise Failed(f"POST {path}: {exc.__class__.__name__}: {exc}") from None

    def ok_json(self, path: str, body: dict) -> dict:
        r = self.post(path, body)
        if r.status_code != 200:
            raise Failed(f"POST {path} answered {r.status_code}: {r.text[:200]}")
        try:
            return r.json()
        except ValueError:
            raise Failed(f"POST {path}: 200 but the body is not JSON: {r.text[:120]!r}") from None

    def stream(self, path: str, body: dict) -> Stream:
        try:
            with self.http.stream("POST", path, json=body, timeout=self.timeout) as r:
                if r.status_code != 200:
                    return Stream(r.status_code, body=r.read().decode(errors="replace"))
                s = Stream(200)
                for line in r.iter_lines():
                    s.lines.append(line)
                    if line.startswith("data:"):
                        s.payloads.append(line[5:].strip())
                return s
        except httpx.TimeoutException:
            raise Failed(f"POST {path} (stream): no event within {self.timeout.read:g} s (a hang)") from None
        except httpx.HTTPError as exc:
            raise Failed(f"POST {path} (stream): {exc.__class__.__name__}: {exc}") from None


def _framing(s: Stream, what: str) -> None:
    """SSE as OpenAI sends it: data lines, blank lines between events, [DONE] last."""
    if s.status != 200:
        raise Failed(f"{what}: HTTP {s.status}: {s.body[:200]}")
    other = [ln for ln in s.lines if ln and not ln.startswith(("data:", ":"))]
    if other:
        raise Failed(f"{what}: a line that is not `data:` ({other[0][:80]!r})")
    if not s.payloads or s.payloads[-1] != "[DONE]":
        last = s.payloads[-1][:60] if s.payloads else "nothing"
        raise Failed(f"{what}: the stream did not end with data: [DONE] (last event: {last!r})")
    if s.payloads.count("[DONE]") != 1:
        raise Failed(f"{what}: data: [DONE] came {s.payloads.count('[DONE]')} times")


def _chunks(s: Stream, chunk_type, what: str) -> list:
    _framing(s, what)
    out = []
    for n, p in enumerate(s.payloads[:-1], 1):
        try:
            obj = json.loads(p)
        except ValueError:
            raise Failed(f"{what}: event {n} is not JSON: {p[:80]!r}") from None
        if isinstance(obj, dict) and "error" in obj and not obj.get("choices"):
            raise Failed(f"{what}: event {n} is an error: {str(obj['error'])[:160]}")
        out.append(parse(chunk_type, obj, f"{what}: event {n}"))
    return out


def _text_of(chunks: Iterable) -> str:
    parts = []
    for c in chunks:
        for ch in c.choices:
            delta = getattr(ch, "delta", None)
            parts.append((delta.content or "") if delta is not None else (ch.text or ""))
    return "".join(parts)


def _last_finish(chunks: list) -> str | None:
    with_choices = [c for c in chunks if c.choices]
    return with_choices[-1].choices[-1].finish_reason if with_choices else None


def _refused(r: httpx.Response, what: str) -> str:
    """A 4xx with an OpenAI error object: the evidence line; anything else: Failed."""
    if r.status_code >= 500:
        raise Failed(f"{what}: answered {r.status_code} (a server error where a 4xx is due): {r.text[:160]}")
    if r.status_code < 400:
        raise Failed(f"{what}: answered {r.status_code} (accepted) where a 4xx is due")
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise Failed(f"{what}: {r.status_code} without an error object: {r.text[:160]!r}") from None
    if not isinstance(err, dict):
        raise Failed(f"{what}: {r.status_code} with error = {err!r}, not an object")
    note = ""
    try:
        ErrorObject.model_validate(err)
    except ValidationError as exc:
        bad = exc.errors()[0]
        if bad["loc"] != ("code",):  # message and type are what clients read; a numeric code is noted
            raise Failed(f"{what}: {r.status_code}, error is not an openai ErrorObject: {_first_error(exc)}") from None
        note = f" (error.code is {type(err.get('code')).__name__} {err.get('code')!r}; OpenAI's is a string)"
    return f"{r.status_code} {err.get('type', '')}: {str(err.get('message'))[:100]}{note}"


class Conformance:
    """The checks, each a method named after it (dashes as underscores); state shared between them."""

    def __init__(self, client: Client, extensions: Iterable[str] = (), context_tokens: int | None = None,
                 words: tuple[str, ...] = ()) -> None:
        self.c = client
        self.extensions = set(extensions)
        self.context_tokens = context_tokens
        self.words = words or tuple(PROMPT.split())
        self.seen: dict[str, Any] = {}

    # -- bodies -------------------------------------------------------------------------------
    def chat_body(self, content: str = PROMPT, **kw) -> dict:
        return {"model": self.c.model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **kw}

    def comp_body(self, prompt: str = PROMPT, **kw) -> dict:
        return {"model": self.c.model, "prompt": prompt, "max_tokens": 8, **kw}

    def streamed(self, body: dict) -> dict:
        return {**body, "stream": True, "stream_options": {"include_usage": True}}

    # -- checks -------------------------------------------------------------------------------
    def models(self) -> str:
        try:
            r = self.c.http.get("/v1/models", timeout=self.c.timeout)
        except httpx.HTTPError as exc:
            raise Failed(f"GET /v1/models: {exc.__class__.__name__}: {exc}") from None
        if r.status_code != 200:
            raise Failed(f"GET /v1/models answered {r.status_code}")
        body = r.json()
        if body.get("object") != "list" or not isinstance(body.get("data"), list):
            raise Failed(f"GET /v1/models: expected {{object: list, data: [...]}}, got keys {sorted(body)}")
        ids = [parse(Model, m, f"/v1/models data[{i}]").id for i, m in enumerate(body["data"])]
        if self.c.model not in ids:
            raise Failed(f"/v1/models lists {ids}, not the served model {self.c.model!r}")
        ctx = body["data"][ids.index(self.c.model)].get("max_model_len")
        if isinstance(ctx, int) and self.context_tokens is None:
            self.context_tokens = ctx
        return f"{len(ids)} model(s): {', '.join(ids)}" + (f" (max_model_len {ctx})" if ctx else "")

    def chat(self) -> str:
        cc = parse(ChatCompletion, self.c.ok_json("/v1/chat/completions", self.chat_body()), "the body")
        self.seen["chat"] = cc
        if not cc.choices or cc.choices[0].message.role != "assistant":
            raise Failed("no assistant message in choices")
        return f"id {cc.id}, {len(cc.choices[0].message.content or '')} chars, finish {cc.choices[0].finish_reason}"

    def _streamed(self, key: str, path: str, body: dict[str, Any], kind: type, what: str) -> list:
        """Stream `body` to `path`; keep the raw stream and its parsed chunks for the checks after."""
        s = self.c.stream(path, self.streamed(body))
        self.seen[f"{key}-raw"] = s
        chunks = self.seen[key] = _chunks(s, kind, what)
        return chunks

    def chat_stream(self) -> str:
        chunks = self._streamed("chat-stream", "/v1/chat/completions", self.chat_body(), ChatCompletionChunk,
                                "chat stream")
        ids = {c.id for c in chunks}
        if len(ids) != 1:
            raise Failed(f"chunks carry {len(ids)} different ids")
        return f"{len(chunks)} chunks, {len(_text_of(chunks))} chars, id {ids.pop()}"

    def completions(self) -> str:
        comp = parse(Completion, self.c.ok_json("/v1/completions", self.comp_body()), "the body")
        self.seen["completions"] = comp
        if not comp.choices:
            raise Failed("no choices")
        return f"id {comp.id}, {len(comp.choices[0].text)} chars, finish {comp.choices[0].finish_reason}"

    def completions_stream(self) -> str:
        chunks = self._streamed("completions-stream", "/v1/completions", self.comp_body(), CompletionChunk,
                                "completions stream")
        return f"{len(chunks)} chunks, {len(_text_of(chunks))} chars"

    def sse_framing(self) -> str:
        streams = [self.seen.get(k) for k in ("chat-stream-raw", "completions-stream-raw")]
        if not all(streams):
            raise Failed("no stream to judge (the streamed checks failed before reading one)")
        for s, what in zip(streams, ("chat", "completions")):
            _framing(s, what)
        blank_sep = all("" in s.lines for s in streams)
        return (f"data: lines only, [DONE] last in both ({sum(len(s.payloads) for s in streams)} events"
                f"{'' if blank_sep else ', no blank separator lines'})")

    def usage(self) -> str:
        out = []
        for key in ("chat", "completions"):
            obj = self.seen.get(key)
            if obj is None:
                raise Failed(f"no {key} body to judge")
            u = obj.usage
            if u is None:
                raise Failed(f"the {key} body has no usage")
            if u.total_tokens != u.prompt_tokens + u.completion_tokens:
                raise Failed(f"{key}: total_tokens {u.total_tokens} != prompt {u.prompt_tokens} + completion {u.completion_tokens}")
            out.append(f"{key} {u.prompt_tokens}+{u.completion_tokens}")
        return ", ".join(out)

    def stream_usage(self) -> str:
        out = []
        for key in ("chat-stream", "completions-stream"):
            chunks = self.seen.get(key)
            if chunks is None:
                raise Failed(f"no {key} to judge")
            with_usage = [c for c in chunks if c.usage is not None]
            if not with_usage:
                raise Failed(f"{key}: no usage chunk despite stream_options.include_usage")
            last = with_usage[-1]
            if last.choices:
                raise Failed(f"{key}: the usage chunk carries choices (expected choices: [])")
            if chunks[-1] is not last:
                raise Failed(f"{key}: the usage chunk is not the last before [DONE]")
            out.append(f"{key} completion_tokens {last.usage.completion_tokens}")
        return ", ".join(out)

    def finish_reason(self) -> str:
        out = []
        for key in ("chat", "completions", "chat-stream", "completions-stream"):
            obj = self.seen.get(key)
            if obj is None:
                raise Failed(f"no {key} answer to judge")
            reason = obj.choices[-1].finish_reason if hasattr(obj, "choices") else _last_finish(obj)
            usage = obj.usage if hasattr(obj, "usage") else next((c.usage for c in reversed(obj) if c.usage), None)
            if reason not in ("stop", "length"):
                raise Failed(f"{key}: finish_reason {reason!r} on the last choice (expected stop or length)")
            if usage is not None and reason == "length" and usage.completion_tokens != 8:
                raise Failed(f"{key}: finish_reason length after {usage.completion_tokens} of max_tokens 8")
            out.append(f"{key} {reason}")
        return ", ".join(out)

    def max_tokens(self) -> str:
        out = []
        for n in (1, 5, 17):
            cc = parse(ChatCompletion, self.c.ok_json("/v1/chat/completions", self.chat_body(max_tokens=n)), "the body")
            if cc.usage is None:
                raise Unsupported(f"no usage to count tokens by (max_tokens {n})")
            got = cc.usage.completion_tokens
            if got > n:
                raise Failed(f"max_tokens {n}: {got} completion tokens")
            if got < n and cc.choices[0].finish_reason != "stop":
                raise Failed(f"max_tokens {n}: {got} tokens with finish_reason {cc.choices[0].finish_reason!r}")
            out.append(f"{n}->{got}")
        return "max_tokens->completion_tokens " + " ".join(out)

    def stop_sequences(self) -> str:
        body = self.comp_body(max_tokens=24, temperature=0.0, seed=0)
        full = parse(Completion, self.c.ok_json("/v1/completions", body), "the body").choices[0].text
        if len(full.strip()) < 4:
            raise Unsupported(f"the model wrote only {full!r} at temperature 0: no text to stop inside")
        mid = len(full) // 2
        stop = full[mid:mid + 2] if full[mid:mid + 2].strip() else full[mid - 2:mid]
        cut = full[:full.index(stop)]
        got = parse(Completion, self.c.ok_json("/v1/completions", {**body, "stop": [stop]}), "the body").choices[0]
        if got.text != cut:
            raise Failed(f"stop {stop!r}: got {got.text!r}, expected the text before it {cut!r}")
        if got.finish_reason != "stop":
            raise Failed(f"stop {stop!r} reached but finish_reason {got.finish_reason!r}")
        return f"stop {stop!r}: {len(cut)} of {len(full)} chars, finish stop"

    def temperature_0(self) -> str:
        body = self.chat_body(max_tokens=16, temperature=0.0)
        a, b = (parse(ChatCompletion, self.c.ok_json("/v1/chat/completions", body), "the body").choices[0].message.content
                for _ in range(2))
        if a != b:
            raise Failed(f"two answers differ: {a!r} vs {b!r}")
        return f"identical twice ({len(a or '')} chars)"

    def n_choices(self) -> str:
        r = self.c.post("/v1/chat/completions", self.chat_body(n=2))
        if r.status_code == 200:
            cc = parse(ChatCompletion, r.json(), "the body")
            idx = sorted(ch.index for ch in cc.choices)
            if idx != [0, 1]:
                raise Failed(f"n=2 answered 200 with choice indices {idx}")
            return "n=2 served: choices 0 and 1"
        return "n=2 refused: " + _refused(r, "n=2")

    def tool_call(self) -> str:
        body = self.chat_body(max_tokens=128, tools=[TOOL], tool_choice="required")
        r = self.c.post("/v1/chat/completions", body)
        if r.status_code != 200:
            raise Unsupported(f"tool_choice required answered {r.status_code}: {r.text[:120]}")
        cc = parse(ChatCompletion, r.json(), "the body")
        calls = cc.choices[0].message.tool_calls or []
        if not calls:
            raise Failed(f"tool_choice required but no tool call (finish {cc.choices[0].finish_reason})")
        call = calls[0]
        try:
            json.loads(call.function.arguments)
        except ValueError:
            raise Failed(f"tool call arguments are not JSON: {call.function.arguments[:80]!r}") from None
        self.seen["tool-call"] = call
        return f"call id {call.id}, {call.function.name}({call.function.arguments})"

    def _tool_conversation(self, with_id: bool) -> dict:
        call = self.seen.get("tool-call")
        call_id = call.id if call is not None else "call_deploylab_0"
        assistant = {"role": "assistant", "content": "",
                     "tool_calls": [{"id": call_id, "type": "function",
                                     "function": {"name": "lookup", "arguments": "{}"}}]}
        tool = {"role": "tool", "content": "alpha means beta", **({"tool_call_id": call_id} if with_id else {})}
        # No `tools` in this request: a tool result in the history stands on its own (vLLM answers
        # 400 to `tools` with the default tool_choice auto unless started with a tool-call parser).
        return {**self.chat_body(), "messages": [{"role": "user", "content": PROMPT}, assistant, tool]}

    def tool_result(self) -> str:
        body = self._tool_conversation(with_id=True)
        cc = parse(ChatCompletion, self.c.ok_json("/v1/chat/completions", body), "the body")
        src = "the server's own call id" if "tool-call" in self.seen else "a call id of ours (the server made no call)"
        return f"answered after the tool result ({src}), finish {cc.choices[0].finish_reason}"

    def tool_result_without_id(self) -> str:
        return _refused(self.c.post("/v1/chat/completions", self._tool_conversation(with_id=False)), "no tool_call_id")

    def bad_json(self) -> str:
        return _refused(self.c.post("/v1/chat/completions", content=b'{"model": "x", "messages": [}'), "malformed JSON")

    def bad_type(self) -> str:
        return _refused(self.c.post("/v1/chat/completions", self.chat_body(max_tokens="ten")), "max_tokens \"ten\"")

    def unknown_model(self) -> str:
        return _refused(self.c.post("/v1/chat/completions", {**self.chat_body(), "model": "no-such-model-deploylab"}),
                        "unknown model")

    def over_context(self) -> str:
        # Twice the context /v1/models states (vLLM's max_model_len); where none is stated, 8192 assumed.
        n = 2 * (self.context_tokens or 8192) + 16
        prompt = " ".join(self.words[i % len(self.words)] for i in range(n))
        what = f"{n}-word prompt" + ("" if self.context_tokens else " (context not stated: 8192 assumed)")
        return f"{what}: " + _refused(self.c.post("/v1/completions", self.comp_body(prompt)), what)

    def concurrent_streams(self) -> str:
        prompts = [" ".join(self.words[:k]) for k in (3, 9, 27, 81)]

        def prompt_tokens(p: str) -> int:  # each prompt alone first: what its stream's usage must say
            alone = parse(Completion, self.c.ok_json("/v1/completions", self.comp_body(p)), "the body")
            if alone.usage is None:
                raise Unsupported("no usage to tell the streams' prompts apart by")
            return alone.usage.prompt_tokens

        expected = [prompt_tokens(p) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            streams = list(pool.map(lambda p: self.c.stream("/v1/completions", self.streamed(self.comp_body(p, max_tokens=16))),
                                    prompts))
        ids = []
        for k, (s, want) in enumerate(zip(streams, expected)):
            chunks = _chunks(s, CompletionChunk, f"stream {k}")
            mine = {c.id for c in chunks}
            if len(mine) != 1:
                raise Failed(f"stream {k}: chunks carry {len(mine)} ids")
            usage = next((c.usage for c in reversed(chunks) if c.usage), None)
            if usage is not None and usage.prompt_tokens != want:
                raise Failed(f"stream {k}: usage says {usage.prompt_tokens} prompt tokens, its prompt has {want}")
            ids.append(mine.pop())
        if len(set(ids)) != len(ids):
            raise Failed(f"{len(ids)} streams share ids: {ids}")
        return f"{len(ids)} streams, distinct ids, prompt tokens {expected} each in its own stream"

    def ext_return_token_ids(self) -> str:
        s = self.c.stream("/v1/completions", self.streamed(self.comp_body(max_tokens=12, return_token_ids=True)))
        _framing(s, "return_token_ids stream")
        objs = [json.loads(p) for p in s.payloads[:-1]]
        ids = sum(len(ch.get("token_ids") or ()) for o in objs for ch in o.get("choices") or ())
        usage = next((o["usage"] for o in reversed(objs) if o.get("usage")), None)
        if not ids:
            raise Failed("no chunk listed token_ids")
        if usage and usage["completion_tokens"] != ids:
            raise Failed(f"{ids} token ids listed, usage says {usage['completion_tokens']} tokens")
        return f"{ids} token ids over the stream = usage completion_tokens"

    def ext_slots(self) -> str:
        r = self.c.http.get("/slots", timeout=self.c.timeout)
        if r.status_code != 200:
            raise Failed(f"GET /slots answered {r.status_code}")
        slots = r.json()
        if not isinstance(slots, list) or not slots or not all(isinstance(s, dict) and "id" in s for s in slots):
            raise Failed(f"GET /slots: expected a list of slot objects, got {str(slots)[:100]}")
        return f"{len(slots)} slots"


def load_checks(path: Path = CHECKS_FILE) -> dict[str, CheckDef]:
    return load(CheckFile, path).checks


def run_checks(conf: Conformance, checks: dict[str, CheckDef] | None = None,
               on_result: Callable[[Result], None] | None = None) -> list[Result]:
    results = []
    for name, d in (checks or load_checks()).items():
        if d.extension and d.extension not in conf.extensions:
            res = Result(name, "unsupported", f"extension {d.extension} not declared for this engine", d.required)
        else:
            try:
                res = Result(name, "pass", getattr(conf, name.replace("-", "_"))(), d.required)
            except Failed as exc:
                res = Result(name, "fail", str(exc), d.required)
            except Unsupported as exc:
                res = Result(name, "unsupported", str(exc), d.required)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                res = Result(name, "fail", f"unexpected answer ({exc.__class__.__name__}: {str(exc)[:160]})", d.required)
        res = Result(res.check, res.status, " ".join(res.evidence.split()), res.required)  # one line, always
        results.append(res)
        if on_result:
            on_result(res)
    return results


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == "fail" and r.required for r in results) else 0
