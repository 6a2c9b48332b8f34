"""The smoke stage: start the engine under test (or take a URL), replay a mix, gate, report.

`run_smoke(cell_or_url, store, image=...)` is what `invoke smoke` and `invoke matrix` call. It ends
in exactly one StageOutcome(stage="smoke"): pass/fail from the gate verdict, one evidence line per
class, and the artifact paths (records.jsonl, summary.json, report.md, ttft.png, itl.png, trace.jsonl).
A server that never gets ready is a "fail" with category "server-start", never a crash.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from model.details import SmokeDetails
from model.errors import UsageError
from model.results import ResultsStore, StageOutcome
from model.stage import Timed
from smoke import gates, metrics, mix as mixmod, replay, workload
from smoke.records import RequestRecord
from smoke.report import json as json_report, markdown, png


def url_cell_id(url: str) -> str:
    return "url-" + re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"^https?://", "", url)).strip("-")


def served_model(url: str, headers: dict[str, str] | None = None) -> str:
    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10, verify=replay.ssl_context())
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"{url}: /v1/models: expected an OpenAI-compatible server to answer ({exc})") from None


def _progress(total: int, enabled: bool):
    """A rich progress bar (ok/error counts in the description), or a no-op."""
    if not enabled:
        return None, (lambda rec: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    prog = Progress(TextColumn("[bold]smoke[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)
    task = prog.add_task("ok 0 err 0", total=total)
    counts = {"ok": 0, "error": 0}

    def tick(rec: RequestRecord) -> None:
        counts["ok" if rec.ok else "error"] += 1
        prog.update(task, advance=1, description=f"ok {counts['ok']} err {counts['error']} last {rec.cls}")
    return prog, tick


def replay_and_report(trace: workload.Trace, url: str, model: str, mix: mixmod.Mix, out_dir: Path,
                      meta: dict[str, Any], progress: bool = False,
                      opts: replay.ReplayOptions | None = None) -> tuple[gates.Verdict, metrics.Summary, dict[str, str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rec_path = out_dir / "records.jsonl"
    rec_path.unlink(missing_ok=True)
    opts = opts or replay.ReplayOptions(max_concurrency=mix.max_concurrency)
    prog, tick = _progress(len(trace.requests), progress)
    if prog:
        with prog:
            recs = replay.run(trace, url, model, rec_path, opts, on_record=tick)
    else:
        recs = replay.run(trace, url, model, rec_path, opts)
    summary = metrics.summarize(recs, mix)
    verdict = gates.evaluate(summary, mix)
    arts = {"records": str(rec_path),
            "summary": str(json_report.write(out_dir / "summary.json", summary, verdict, meta)),
            "report": str(markdown.write(out_dir / "report.md", summary, verdict, meta))}
    arts.update({k: str(v) for k, v in png.write(out_dir, recs, [c.name for c in mix.classes]).items()})
    return verdict, summary, arts


def evidence(summary: metrics.Summary, verdict: gates.Verdict) -> tuple[str, ...]:
    def f(v):
        return "n/a" if v is None else f"{v:.0f}"
    lines = [verdict.line()]
    for c in summary.classes.values():
        lines.append(f"{c.cls}: {c.ok}/{c.requests} ok, TTFT p50 {f(c.ttft_ms['p50'])} ms p90 {f(c.ttft_ms['p90'])} ms,"
                     f" ITL p50 {c.itl_ms['p50'] or 0:.1f} ms, {c.tokens_per_s:.1f} tok/s")
    iso = summary.isolation.get("itl_ratio")
    lines.append(f"slow-reader isolation: others' time per token with/without slow streams = "
                 f"{'n/a' if iso is None else f'{iso:.2f}'}")
    return tuple(lines)


_WARNING = re.compile(r"^(?:\(\w+ pid=\d+\) )?WARNING \S+ \S+ \[[^\]]+\] (.*)$|^\S+\.py:\d+: (\w*Warning: .*)$")


def runtime_warnings(log: str, most: int = 20) -> list[str]:
    """The engine's distinct warnings, in order first seen, without process/time prefixes."""
    seen: dict[str, None] = {}
    for line in log.splitlines():
        m = _WARNING.match(line.strip())
        if m:
            seen.setdefault(" ".join((m.group(1) or m.group(2)).split())[:300], None)
    return list(seen)[:most]


def run_smoke(target, store: ResultsStore, *, image: str | None = None, mix: str | Path = "default", seed: int = 0,
              duration_s: float | None = None, rate_rps: float | None = None, trace_path: Path | None = None,
              progress: bool = False, startup_timeout_s: float = 300.0, record: bool = True,
              api_key_env: str = "") -> StageOutcome:
    """Smoke one cell (a matrix Cell, started from `image`) or one URL; write and return the outcome.

    record=False: return it only (the matrix pipeline writes its stages' events and outcomes itself).
    """
    is_url = isinstance(target, str)
    if not is_url:
        image = image or target.runtime_tag  # a cell's smoke tests the cell's own runtime image
        if image != target.runtime_tag:
            # Another image says nothing about this cell: its outcome goes to a run of its own.
            store = store.apart("image-" + re.sub(r"[^A-Za-z0-9.]+", "-", image).strip("-"))
    write = store.write if record else (lambda o: o)
    m = mixmod.load(mix)
    if duration_s is not None or rate_rps is not None:
        m = replace(m, duration_s=duration_s or m.duration_s,
                    arrival=replace(m.arrival, rate_rps=rate_rps or m.arrival.rate_rps))
    trace = workload.read(trace_path) if trace_path else workload.generate(m, seed)
    cell = url_cell_id(target) if is_url else target.id
    out_dir = store.artifact_dir(cell, "smoke")
    server_log = out_dir / "server.log"
    workload.write(trace, out_dir / "trace.jsonl")
    t = Timed(cell, "smoke")
    meta: dict[str, Any] = {"target": target if is_url else cell, "mix": m.name, "seed": seed,
                            "requests": len(trace.requests)}
    if record:
        store.event("stage-start", cell=cell, stage="smoke")
    versions: dict[str, str] = {}
    if is_url:
        # Extensions only where the engine's adapter declares them; the key only in the header.
        headers = replay.api_headers(api_key_env)
        model = served_model(target, headers)
        opts = replay.ReplayOptions(max_concurrency=m.max_concurrency, headers=tuple(headers.items()),
                                    extensions=replay.engine_extensions(target, model, headers))
        verdict, summary, arts = replay_and_report(trace, target, model, m, out_dir, meta, progress, opts)
    else:
        from smoke.server import ServerFailed, vllm_server
        meta["image"] = image
        try:
            from containers.engine import client
            from smoke.image import ensure_runtime_image
            from smoke.server import ensure_model
            # The runtime image serves by default and builds the test model for any engine image.
            dc = client(timeout=3600)
            if image == target.runtime_tag and not dc.images.list(name=image):
                raise UsageError(f"{image}: no runtime image for {target.id} yet; build it with "
                                 f"`invoke matrix --cells {target.id}`, or smoke another image with --image")
            ensure_runtime_image(dc, log_path=out_dir / "runtime-image.log")
            with vllm_server(image, model_dir=ensure_model(dc), timeout_s=startup_timeout_s,
                             log_path=server_log) as eng:
                versions = {"vllm": eng.version, "image": image}
                meta.update({"engine_url": eng.url, "vllm": eng.version, "startup_s": round(eng.startup_s, 1)})
                verdict, summary, arts = replay_and_report(trace, eng.url, eng.model, m, out_dir, meta, progress)
        except ServerFailed as exc:
            tail = [ln for ln in str(exc).splitlines() if ln.strip()][-8:]
            return write(t.done("fail", category="server-start", evidence=tuple(tail),
                                remediation="see server.log; the engine never answered /v1/models",
                                artifacts={"server_log": str(server_log)}))
    arts["trace"] = str(out_dir / "trace.jsonl")
    warns: list[str] = []
    if server_log.exists():  # a --url target has no server log of ours
        arts["server_log"] = str(server_log)
        warns = runtime_warnings(server_log.read_text(errors="replace"))
    status = "pass" if verdict.passed else "fail"
    return write(t.done(
        status, category="" if verdict.passed else "slo", evidence=evidence(summary, verdict),
        remediation="" if verdict.passed else "a class missed its SLO bound: see report.md",
        versions=versions, artifacts=arts,
        details=SmokeDetails(failures=list(verdict.failures), duration_s=summary.duration_s,
                             runtime_warnings=warns).to_json()))


def run(ctx, cell) -> StageOutcome:
    """The smoke stage of a matrix cell: the mix against the cell's own runtime image."""
    return run_smoke(cell, ctx.store, image=cell.runtime_tag, record=False)
