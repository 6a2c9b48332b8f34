"""An OpenAI-compatible server as an httpx.MockTransport handler, for the conformance and replay tests.

It keeps the contract by default (deterministic text from the prompt, usage, [DONE], 4xx with an
error object on bad input); each `Breaks` flag breaks one part of it the way real servers have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import httpx

MODEL = "tiny-llama"
VOCAB = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
CONTEXT = 256


@dataclass
class Breaks:
    no_done: bool = False            # the stream ends without data: [DONE]
    server_error_on_bad_input: bool = False   # 500 where a 4xx is due
    no_usage: bool = False           # no usage chunk, no usage in bodies
    null_finish: bool = False        # finish_reason null on the last choice
    serves_unknown_model: bool = False
    empty_deltas: bool = False       # an empty-content chunk between every token chunk
    token_ids: bool = False          # chunks list token_ids (vLLM's extension)
    two_tokens_per_chunk: bool = False


def _tokens(prompt: str, n: int, seed: str = "") -> list[str]:
    h = hashlib.sha256((prompt + seed).encode()).digest()
    return [" " + VOCAB[h[i % len(h)] % len(VOCAB)] for i in range(n)]


def _prompt_text(body: dict) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"])
    return str(body.get("prompt", ""))


class FakeOpenAI:
    def __init__(self, breaks: Breaks | None = None) -> None:
        self.b = breaks or Breaks()
        self.bodies: list[dict] = []
        self.requests: list[httpx.Request] = []
        self.n = 0

    def error(self, status: int, message: str) -> httpx.Response:
        if self.b.server_error_on_bad_input:
            return httpx.Response(500, text="Internal Server Error")
        return httpx.Response(status, json={"error": {"message": message, "type": "invalid_request_error",
                                                      "param": None, "code": None}})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 1, "owned_by": "fake", "max_model_len": CONTEXT}]})
        if path == "/slots":
            return httpx.Response(200, json=[{"id": 0}, {"id": 1}])
        try:
            body = json.loads(request.content)
        except ValueError:
            return self.error(400, "malformed JSON")
        self.bodies.append(body)
        if not isinstance(body.get("max_tokens", 16), int):
            return self.error(400, "max_tokens: expected an integer")
        if body.get("model") != MODEL and not self.b.serves_unknown_model:
            return self.error(404, f"model {body.get('model')!r} does not exist")
        for m in body.get("messages", ()):
            if m.get("role") == "tool" and "tool_call_id" not in m:
                return self.error(400, "tool message: tool_call_id required")
        prompt = _prompt_text(body)
        n_prompt = len(prompt.split())
        if n_prompt > CONTEXT:
            return self.error(400, f"{n_prompt} prompt tokens exceed the context of {CONTEXT}")
        chat = path == "/v1/chat/completions"
        max_tokens = body.get("max_tokens", 16)
        seed = "" if body.get("temperature") == 0 else str(self.n)
        self.n += 1
        toks = _tokens(prompt, max_tokens, seed)
        finish = "length"
        for stop in body.get("stop") or ():
            text = "".join(toks)
            if stop in text:
                cut = text[:text.index(stop)]
                toks, finish = [cut] if cut else [], "stop"
                break
        if self.b.null_finish:
            finish = None
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(toks) if finish != "stop" else len(toks),
                 "total_tokens": n_prompt + len(toks)}
        if finish == "stop":  # the cut text stands for however many tokens came before the stop
            usage = {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1}
        cid = f"cmpl-{self.n}"
        tools = chat and body.get("tool_choice") == "required"
        if body.get("stream"):
            return self.stream(cid, chat, toks, finish, usage, body, tools)
        choices = []
        for i in range(body.get("n", 1)):
            if chat:
                msg = {"role": "assistant", "content": "".join(toks)}
                if tools:
                    msg = {"role": "assistant", "content": None, "tool_calls": [
                        {"id": f"call_{self.n}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
                choices.append({"index": i, "message": msg, "finish_reason": "tool_calls" if tools else finish})
            else:
                choices.append({"index": i, "text": "".join(toks), "finish_reason": finish})
        out = {"id": cid, "object": "chat.completion" if chat else "text_completion", "created": 1, "model": MODEL,
               "choices": choices}
        if not self.b.no_usage:
            out["usage"] = usage
        return httpx.Response(200, json=out)

    def stream(self, cid, chat, toks, finish, usage, body, tools) -> httpx.Response:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, fin, ids=None) -> dict:
            if chat:
                ch = {"index": 0, "delta": {"content": piece} if piece is not None else {}, "finish_reason": fin}
            else:
                ch = {"index": 0, "text": piece or "", "finish_reason": fin}
            if ids is not None:
                ch["token_ids"] = ids
            return {"id": cid, "object": obj, "created": 1, "model": MODEL, "choices": [ch]}

        events = []
        step = 2 if self.b.two_tokens_per_chunk else 1
        for i in range(0, len(toks), step):
            piece = "".join(toks[i:i + step])
            ids = list(range(i, min(i + step, len(toks)))) if self.b.token_ids else None
            events.append(chunk(piece, None, ids))
            if self.b.empty_deltas:
                events.append(chunk("", None, [] if self.b.token_ids else None))
        events.append(chunk(None, finish))
        include = (body.get("stream_options") or {}).get("include_usage")
        if include and not self.b.no_usage:
            events.append({"id": cid, "object": obj, "created": 1, "model": MODEL, "choices": [], "usage": usage})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
        if not self.b.no_done:
            text += "data: [DONE]\n\n"
        return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def client(fake: FakeOpenAI) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(fake), base_url="http://fake.test")
