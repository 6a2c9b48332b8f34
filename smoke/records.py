"""One record per request, appended to a JSONL file the moment the request ends.

Times are seconds; offsets (`scheduled_s`, `sent_s`, `end_s`) count from the start of the run.
A failed request is a record too: status "error", the HTTP status if one came, and the error text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from model.errors import UsageError


@dataclass(frozen=True)
class RequestRecord:
    id: str
    cls: str
    endpoint: str
    scheduled_s: float            # when the trace said it should leave
    sent_s: float                 # when it left (later than scheduled when the concurrency cap held it)
    end_s: float
    status: str                   # "ok" | "error"
    http_status: int = 0
    error: str = ""
    ttft_s: float | None = None   # first content token
    itl_s: tuple[float, ...] = () # every gap between successive content tokens, as the client read them
    e2e_s: float | None = None
    prompt_tokens: int | None = None   # from the server's usage
    output_tokens: int | None = None   # the server's usage, else the model's tokenizer over the text
    tokens_from: str = ""         # "usage" | "tokenizer" | "" (neither: output_tokens is None)
    streamed_tokens: int = 0      # content events (token_ids where listed): times the tokens, never counts them
    bytes_read: int = 0
    read_bytes_per_s: int = 0     # the throttle of a slow reader, 0 for a normal one
    session: str = ""
    turn: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["itl_s"] = [round(x, 6) for x in self.itl_s]
        for k in ("scheduled_s", "sent_s", "end_s", "ttft_s", "e2e_s"):
            if d[k] is not None:
                d[k] = round(d[k], 6)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["itl_s"] = tuple(kw.get("itl_s", ()))
        return cls(**kw)


def append(path: Path, rec: RequestRecord) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")
        fh.flush()


# What a malformed line can raise on the way to a record: bad JSON, deep nesting, wrong types, huge numbers.
LINE_FAULTS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError)


def jsonl_objects(path: Path, what: str):
    """(line number, object) of each non-blank line of a JSONL file; one UsageError line for a file
    that cannot be read as text or a line that is not a JSON object."""
    if not path.is_file():
        raise UsageError(f"{path}: no such {what} file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: expected UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield n, len(lines), exc
            continue
        yield n, len(lines), d if isinstance(d, dict) else TypeError(f"a JSON {type(d).__name__}, not an object")


def read(path: Path) -> list[RequestRecord]:
    out = []
    for n, last, d in jsonl_objects(path, "records"):
        try:
            if isinstance(d, Exception):
                raise d
            out.append(RequestRecord.from_json(d))
        except LINE_FAULTS as exc:
            # A run killed mid-write leaves at most one torn last line; anything else is a bad file.
            if n == last:
                break
            raise UsageError(f"{path}:{n}: expected a request record ({exc.__class__.__name__}: {exc})") from None
    return out
