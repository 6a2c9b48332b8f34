"""The one-rate sweep report (`invoke sweep`): Markdown + PNG charts under notes/sweep/one-rate/, from
the stored per-profile outcomes.

Charts: per profile x class SLO attainment (a heat map per phase), TTFT and ITL distributions
(one panel per class, one box per profile), accepted vs rejected requests. Each of the seed's
claims gets a verdict (reproduced / not reproduced / not testable here) computed from the numbers
shown next to it. Reads results only; starts nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from smoke.metrics import isolation, tpot_ms  # noqa: E402
from smoke.records import read as read_records  # noqa: E402
from smoke.sweep import hostload, knobs as knobmod, score as scoremod  # noqa: E402

SEED_ADVICE = {"partial_prefills": 2, "long_partial_prefills": 1}  # the seed's chunked-prefill advice, as intents


def describe_machine(client) -> dict[str, Any]:
    mem = hostload.memory_gib(hostload.proc_text("/proc/meminfo"))
    cpu, mem = hostload.cpu_model(hostload.proc_text("/proc/cpuinfo")), f"{mem:.1f} GiB" if mem else ""
    info = client.info()
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu, "memory": mem, "kernel": platform.release(),
            "docker": info.get("ServerVersion", ""), "cgroup": info.get("CgroupVersion", ""),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _load_phase(d: dict[str, Any]) -> tuple[dict[str, Any], list]:
    summary = json.loads(Path(d["summary"]).read_text())
    return summary, read_records(Path(d["artifacts"]["records"]))


def _others_tpot(records) -> float | None:
    """The non-slow classes' median per-request inter-token time, in ms."""
    ts = [t for r in records if not r.read_bytes_per_s and (t := tpot_ms(r)) is not None]
    return float(np.median(ts)) if ts else None


def _f(v, digits=0, unit=""):
    return "–" if v is None else f"{v:.{digits}f}{unit}"


def collect(outcomes, mix) -> dict[str, Any]:
    """phase → profile → {summary, records, details}; failed profiles are kept aside."""
    data: dict[str, dict[str, Any]] = {}
    failed = {}
    for o in outcomes:
        if not o.details.get("phases"):
            failed[o.details.get("profile", o.cell)] = " | ".join(o.evidence)[-400:]
            continue
        for phase, d in o.details["phases"].items():
            s, recs = _load_phase(d)
            # Recomputed from the records, so a report rewritten later uses today's definitions.
            d = {**d, "admission": scoremod.admission(recs), "short_during_long": scoremod.short_during_long(recs)}
            data.setdefault(phase, {})[o.details["profile"]] = {"summary": s, "records": recs, "phase": d,
                                                               "details": o.details}
    return {"phases": data, "failed": failed}


def _heatmap(path: Path, phase: str, profs: list[str], classes: list[str], att: dict[str, dict[str, float]]) -> Path:
    m = np.array([[att[p].get(c, 0.0) for c in classes] for p in profs])
    fig, ax = plt.subplots(figsize=(1.4 * len(classes) + 3, 0.55 * len(profs) + 1.8), dpi=100)
    ax.imshow(m, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(profs)), profs, fontsize=8)
    for i in range(len(profs)):
        for j in range(len(classes)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"SLO attainment per profile x class ({phase}): met SLO / sent")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _dist(path: Path, phase: str, what: str, profs: list[str], classes: list[str], vals) -> Path:
    cols = 3
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.6 * rows), dpi=90, squeeze=False)
    for k, c in enumerate(classes):
        ax = axes[k // cols][k % cols]
        data = [vals(p, c) for p in profs]
        keep = [(p, d) for p, d in zip(profs, data) if d]
        if keep:
            ax.boxplot([d for _, d in keep], whis=(5, 95), showfliers=False)
            ax.set_xticks(range(1, len(keep) + 1), [f"{p}\n(n={len(d)})" for p, d in keep], fontsize=6, rotation=15)
            ax.set_yscale("log")
        ax.set_title(c, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(classes), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{what} per class and profile ({phase}; ms, log; box 25-75 %, whiskers 5-95 %)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _admission(path: Path, phases: dict[str, dict[str, Any]], profs: list[str]) -> Path:
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(profs) * len(phases)), 4.2), dpi=100)
    labels, acc, rej, none = [], [], [], []
    for phase, by in phases.items():
        for p in profs:
            if p in by:
                a = by[p]["phase"]["admission"]
                labels.append(f"{p}\n{phase}")
                acc.append(a["accepted"])
                rej.append(a["rejected"])
                none.append(a["no_answer"])
    x = np.arange(len(labels))
    ax.bar(x, acc, label="accepted", color="#4c9a2a")
    ax.bar(x, rej, bottom=acc, label="rejected (503 / busy error event)", color="#c0392b")
    ax.bar(x, none, bottom=np.array(acc) + np.array(rej), label="no answer (timeout/connect)", color="#7f8c8d")
    ax.set_xticks(x, labels, fontsize=7, rotation=20)
    ax.set_ylabel("requests")
    ax.set_title("Accepted vs rejected requests per profile and phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _claims(phases: dict[str, dict[str, Any]], ranking: list[dict[str, Any]], caps, scale: float) -> list[str]:
    out = []
    best = ranking[0]["profile"] if ranking else None
    sc = phases.get("scale")
    base = phases.get("base", {})

    # 1. single pool fails the TTFT/ITL gate at scale; class-aware accepts nearly all.
    if not sc or "balanced" not in sc or "class-aware" not in sc:
        out.append("1. **Single shared pool fails the TTFT/ITL gate at scale; class-aware accepts nearly all** — "
                   "not testable here: no scale phase with both `balanced` and `class-aware` in this sweep.")
    else:
        fails = [f for f in sc["balanced"]["phase"]["failures"] if ": ttft " in f or ": itl " in f]
        a = sc["class-aware"]["phase"]["admission"]
        acc = a["accepted"] / a["sent"] if a["sent"] else 0.0
        cfails = [f for f in sc["class-aware"]["phase"]["failures"] if ": ttft " in f or ": itl " in f]
        gate = "failed" if fails else "passed"
        # The claim's core is the single pool failing; class-aware accepting nearly all is its contrast.
        verdict = ("reproduced" if (fails and acc >= 0.95) else "partly reproduced" if fails else "not reproduced")
        out.append(f"1. **Single shared pool fails the TTFT/ITL gate at scale ({scale:g}x); class-aware accepts nearly all** — "
                   f"{verdict}: `balanced` {gate} the TTFT/ITL checks at scale"
                   + (f" ({'; '.join(fails[:3])})" if fails else "")
                   + f"; `class-aware` accepted {a['accepted']}/{a['sent']} ({acc:.0%}), TTFT/ITL failures: "
                   + ("; ".join(cfails[:3]) if cfails else "none") + ".")
    # 2. class-aware best overall
    if "class-aware" not in [r["profile"] for r in ranking] or len(ranking) < 2:
        out.append("2. **Class-aware routing is the best overall** — not testable here: needs class-aware and others.")
    else:
        pos = [r["profile"] for r in ranking].index("class-aware") + 1
        out.append(f"2. **Class-aware routing is the best overall** — {'reproduced' if pos == 1 else 'not reproduced'}: "
                   f"class-aware ranks {pos} of {len(ranking)} by the combined score "
                   f"({ranking[pos - 1]['score']:.3f}; best: {best} {ranking[0]['score']:.3f}).")
    # 3. prefix-only and slow-only help their own lanes, not the whole system
    ph = sc or base
    if not ph or "balanced" not in ph:
        out.append("3. **Prefix-only and slow-only routing help their own lanes only** — not testable here: no `balanced` baseline.")
    else:
        bits, lane_ok, whole_not_best = [], [], []
        bal = ph["balanced"]
        if "prefix-cache" in ph:
            rb = bal["summary"]["classes"].get("rag", {}).get("ttft_ms", {}).get("p50")
            rp = ph["prefix-cache"]["summary"]["classes"].get("rag", {}).get("ttft_ms", {}).get("p50")
            hb = _hit_rate(bal["phase"])
            hp = _hit_rate(ph["prefix-cache"]["phase"])
            helped = (rp is not None and rb is not None and rp < rb) or (hp is not None and hb is not None and hp > hb)
            lane_ok.append(helped)
            whole_not_best.append(best != "prefix-cache")
            bits.append(f"prefix-cache vs balanced: RAG TTFT p50 {_f(rp)} vs {_f(rb)} ms, prefix-cache hit rate "
                        f"{_f(hp and hp * 100, 0, '%')} vs {_f(hb and hb * 100, 0, '%')} (lane {'helped' if helped else 'not helped'}); "
                        f"rank {_rank(ranking, 'prefix-cache')}")
        if "slow-isolation" in ph:
            ib = isolation(bal["records"])
            is_ = isolation(ph["slow-isolation"]["records"])
            ob, os_ = _others_tpot(bal["records"]), _others_tpot(ph["slow-isolation"]["records"])
            helped = (ob is not None and os_ is not None and os_ < ob)
            lane_ok.append(helped)
            whole_not_best.append(best != "slow-isolation")
            bits.append(f"slow-isolation vs balanced: other classes' per-request inter-token time p50 {_f(os_, 1)} vs "
                        f"{_f(ob, 1)} ms, while-slow/without-slow ratio {_f(is_['itl_ratio'], 2)} vs {_f(ib['itl_ratio'], 2)} "
                        f"(lane {'helped' if helped else 'not helped'}); rank {_rank(ranking, 'slow-isolation')}")
        if not bits:
            out.append("3. **Prefix-only and slow-only routing help their own lanes only** — not testable here.")
        else:
            v = ("reproduced" if all(lane_ok) and all(whole_not_best) else
                 "partly reproduced" if any(lane_ok) and all(whole_not_best) else "not reproduced")
            out.append(f"3. **Prefix-only and slow-only routing help their own lanes, neither is a whole-system "
                       f"strategy** — {v} ({'scale' if sc else 'base'} phase): " + "; ".join(bits) + ".")
    # 4. long-prefill limits let short prompts in
    miss = []
    for name, val in SEED_ADVICE.items():
        it = knobmod.load_intents()[name]
        if not any(f in caps.flags for f in it.flags):
            miss.append(it.flags[0])
    line = ("4. **Keeping max_long_partial_prefills below max_num_partial_prefills lets short prompts in** — "
            + (f"not testable as stated: {caps.label} accepts neither {' nor '.join(miss)} (see the knob lines at the end). "
               if miss else "testable as stated (flags accepted). "))
    out.append(line + _long_prefill_comparison(ph or {}, "scale" if sc else "base"))
    return out


def _long_prefill_comparison(ph: dict[str, Any], phase: str) -> str:
    """The nearest control (long_prefill_threshold): short-prompt TTFT while a long prompt prefills."""
    if "balanced" not in ph or "long-prefill-limit" not in ph:
        return ("With the nearest accepted control, the comparison needs the `long-prefill-limit` profile "
                "(balanced + long_prefill_threshold) in the sweep; it was not run.")
    b = ph["balanced"]["phase"]["short_during_long"]
    l_ = ph["long-prefill-limit"]["phase"]["short_during_long"]
    better = (l_["ttft_p50_ms_during"] is not None and b["ttft_p50_ms_during"] is not None
              and l_["ttft_p50_ms_during"] < b["ttft_p50_ms_during"])
    return (f"With the nearest accepted control (--long-prefill-token-threshold 256, adaptive; {phase} phase): interactive TTFT p50 "
            f"for requests sent while a long prompt prefilled {_f(l_['ttft_p50_ms_during'])} ms (n={l_['n_during']}) vs "
            f"{_f(b['ttft_p50_ms_during'])} ms (n={b['n_during']}) without it (balanced) — the nearest-control version "
            f"is {'reproduced' if better else 'not reproduced'}.")


def _hit_rate(phase: dict[str, Any]) -> float | None:
    q = sum((m.get("prefix_cache_queries_total") or 0) for m in phase["pool_metrics"].values())
    h = sum((m.get("prefix_cache_hits_total") or 0) for m in phase["pool_metrics"].values())
    return h / q if q else None


def _rank(ranking, name):
    names = [r["profile"] for r in ranking]
    return f"{names.index(name) + 1}/{len(names)}" if name in names else "–"


def write(notes_dir: Path, plan, opts, outcomes, machine: dict[str, Any], store) -> Path:
    notes_dir.mkdir(parents=True, exist_ok=True)
    mix = plan.mix
    classes = [c.name for c in mix.classes]
    itl_classes = {c.name for c in mix.classes if c.slo.itl_ms is not None}
    col = collect(outcomes, mix)
    phases = col["phases"]
    profs = [p.name for p in plan.profiles if any(p.name in by for by in phases.values())]
    per_phase = {ph: {p: scoremod.figures(e["summary"], e["records"], itl_classes) for p, e in by.items()}
                 for ph, by in phases.items()}
    ranking = scoremod.rank(per_phase)
    charts = []
    for ph, by in phases.items():
        att = {p: per_phase[ph][p].attainment for p in by}
        pp = [p for p in profs if p in by]
        charts.append(_heatmap(notes_dir / f"attainment-{ph}.png", ph, pp, classes, att))
        charts.append(_dist(notes_dir / f"ttft-{ph}.png", ph, "TTFT", pp, classes,
                            lambda p, c, by=by: [r.ttft_s * 1000 for r in by[p]["records"] if r.ok and r.cls == c and r.ttft_s]))
        charts.append(_dist(notes_dir / f"itl-{ph}.png", ph, "ITL", pp, classes,
                            lambda p, c, by=by: [g * 1000 for r in by[p]["records"] if r.ok and r.cls == c for g in r.itl_s]))
    if phases:
        charts.append(_admission(notes_dir / "admission.png", phases, profs))

    L = [f"# Serving sweep: {len(profs)} profiles, one trace, real vLLM pools behind nginx", ""]
    L += [f"Generated by `invoke sweep` on {machine['started_utc']} (`smoke/sweep/`, profiles in `smoke/profiles/`)."]
    if (notes_dir / "FINDINGS.md").is_file():
        L += ["A hand-written reading of these numbers, with their caveats: [FINDINGS.md](FINDINGS.md)."]
    L += [""]
    L += ["## Machine", "",
          f"- {machine['cpus']} CPU cores ({machine['cpu_model']}), {machine['memory']} RAM, kernel {machine['kernel']}, "
          f"Docker {machine['docker']} (cgroup v{machine['cgroup']}); load average at start {machine['loadavg_at_start']}.",
          f"- Engine: {plan.caps.label} (image `{plan.image}`), the smoke stage's tiny random-weight Llama "
          "(2 layers, hidden 128, vocab 2048, fp32, context 4096), `VLLM_CPU_KVCACHE_SPACE=1`, eager mode.",
          "- Router: nginx from Debian bookworm (`deploylab/sweep-router:nginx-bookworm`), config rendered per profile "
          "from `smoke/router/nginx.conf.j2`; one user-defined Docker network per profile; router port on 127.0.0.1 only. "
          "nginx rather than PyPI's vllm-router: vllm-router balances one worker list (round robin, power of two, "
          "consistent hashing, cache-aware) or a prefill/decode pair, but has no rule sending a request class to its own "
          "pool; nginx does class → pool (`map` on the `X-Request-Class` header the replay sets), `least_conn`, "
          "`hash … consistent` on the prompt's first 256 characters (prefix affinity) and unbuffered SSE.",
          "- Every profile has two replicas, one core each (cpusets `0` and `1`); the replay client and nginx are NOT "
          "pinned and share those same two cores with the engines, so every lane also competes with the client. "
          "Absolute numbers are for this toy model on 2 cores, not for a GPU deployment.", ""]
    L += ["## Workload", "",
          f"- Mix `{mix.name}` ({mix.source}), seed {opts.seed}, {mix.arrival.process} arrivals, window {mix.duration_s:g} s; "
          "phases: " + ", ".join(f"{ph} at {rate:g} sessions/s ({len(plan.traces[ph].requests)} requests)"
                                 for ph, rate in plan.phases) + ".",
          f"- The same trace file per phase for every profile (`{store.path / 'sweep-traces'}`); open loop "
          f"(client cap {opts.max_concurrency}), request timeout {opts.request_timeout_s:g} s. "
          "Each profile's scale phase runs on the same (warm) pools right after its base phase.",
          "- SLOs are the mix's per-class bounds (TTFT/ITL/E2E at the class percentile, min success); "
          "attainment = requests that met their class SLO / requests sent.", ""]
    L += ["## Ranking", "", "The combined score (`smoke/sweep/score.py`), stated before the numbers:", "",
          "```", scoremod.__doc__.split("\n", 2)[2].strip(), "```", "",
          "| rank | profile | score | " + " | ".join(f"{ph} score (att / itl / iso / goodput)" for ph in phases) + " |",
          "|---|---|---|" + "---|" * len(phases)]
    for i, r in enumerate(ranking, 1):
        cells = []
        for ph in phases:
            x = r["phases"].get(ph)
            cells.append("–" if not x else f"{x['score']:.3f} ({x['attainment']:.2f} / {x['itl']:.2f} / "
                                           f"{x['isolation']:.2f} / {x['goodput']:.2f})")
        L.append(f"| {i} | {r['profile']} | **{r['score']:.3f}** | " + " | ".join(cells) + " |")
    L += [""]
    L += ["## Seed claims", ""] + _claims(phases, ranking, plan.caps, opts.scale) + [""]
    for ph, by in phases.items():
        L += [f"## Phase `{ph}`", "", f"![attainment](attainment-{ph}.png)", "",
              "| profile | gate | " + " | ".join(classes) + " | TTFT p50 / p99 ms | ITL p50 / p99 ms | TPOT p50 / p99 ms | goodput req/s | accepted / rejected / no answer |",
              "|---|---|" + "---|" * len(classes) + "---|---|---|---|---|"]
        for p in [x for x in profs if x in by]:
            e = by[p]
            s, a = e["summary"], e["phase"]["admission"]
            att = per_phase[ph][p].attainment
            o = s["overall"]
            itl_lat = _itl_pct(e["records"], itl_classes)
            tp = [t for r in e["records"] if r.cls in itl_classes and (t := tpot_ms(r)) is not None]
            tpp = (float(np.percentile(tp, 50)), float(np.percentile(tp, 99))) if tp else (None, None)
            L.append(f"| {p} | {'pass' if e['phase']['passed'] else 'FAIL'} | "
                     + " | ".join(f"{att.get(c, 0):.2f}" for c in classes)
                     + f" | {_f(o['ttft_ms']['p50'])} / {_f(o['ttft_ms']['p99'])} | {_f(itl_lat[0], 1)} / {_f(itl_lat[1], 1)} | "
                     f"{_f(tpp[0], 1)} / {_f(tpp[1], 1)} | "
                     f"{o['goodput_rps']:.3f} | {a['accepted']} / {a['rejected']} / {a['no_answer']} |")
        L += ["", "ITL: single gaps between SSE events as the client read them, classes with an ITL bound (slow "
              "readers excluded) — under load many are ~0 because several events arrive in one read; TPOT: per-request "
              "mean inter-token time, same classes (what the score uses); TTFT: all classes. "
              "Per-class TTFT/ITL percentiles are in each profile's summary.json.", "",
              f"![TTFT](ttft-{ph}.png)", "", f"![ITL](itl-{ph}.png)", "",
              "Per-class detail (TTFT p50/p99 ms, ITL p50/p99 ms):", "",
              "| profile | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for p in [x for x in profs if x in by]:
            cs = by[p]["summary"]["classes"]
            L.append(f"| {p} | " + " | ".join(
                f"{_f(cs[c]['ttft_ms']['p50'])}/{_f(cs[c]['ttft_ms']['p99'])}, {_f(cs[c]['itl_ms']['p50'], 1)}/{_f(cs[c]['itl_ms']['p99'], 1)}"
                if c in cs else "–" for c in classes) + " |")
        L += ["", "Gate failures, routing (from nginx's access log) and per-replica server metrics (deltas of `/metrics` over the phase):", ""]
        for p in [x for x in profs if x in by]:
            e = by[p]["phase"]
            route = "; ".join(f"{c} → " + ", ".join(f"{h} {n}" for h, n in sorted(hs.items()))
                              for c, hs in e["routing"].items())
            pm = "; ".join(f"{h}: {_f(m.get('request_success_total'))} ok, prefix hit "
                           f"{_f(m['prefix_cache_hit_rate'] and m['prefix_cache_hit_rate'] * 100, 0, '%')}, "
                           f"admission rejections {_f(m.get('admission_rejections_total'))}, "
                           f"preemptions {_f(m.get('num_preemptions_total'))}, server TTFT mean "
                           f"{_f(m['time_to_first_token_seconds_mean'] and m['time_to_first_token_seconds_mean'] * 1000, 0, ' ms')}, "
                           f"ITL mean {_f(m.get('inter_token_latency_seconds_mean') and m['inter_token_latency_seconds_mean'] * 1000, 1, ' ms')}, "
                           f"queue mean {_f(m['request_queue_time_seconds_mean'] and m['request_queue_time_seconds_mean'] * 1000, 0, ' ms')}"
                           for h, m in e["pool_metrics"].items())
            L += [f"- **{p}** — {e['verdict'][:600]}", f"  - routing: {route}", f"  - servers: {pm}",
                  f"  - load average before/after: {[round(x, 1) for x in e['loadavg_before']]} / "
                  f"{[round(x, 1) for x in e['loadavg_after']]}"]
        L += [""]
    if phases:
        L += ["## Accepted vs rejected", "", "![admission](admission.png)", "",
              "Every pool runs with `queue_limit_requests = 32` per replica (`--max-num-queued-reqs`): beyond it "
              "vLLM refuses the request — an HTTP 503, or a 200 whose stream's only event is 'engine busy' — and both "
              "count as rejected. 'No answer' is a timeout or a connection failure.", ""]
    if col["failed"]:
        L += ["## Profiles that did not run", ""] + [f"- {p}: {e}" for p, e in col["failed"].items()] + [""]
    L += ["## Profiles and the flags they became", "",
          f"Knobs are stated by intent and translated with `smoke/sweep/knobs.toml` against what {plan.caps.label} "
          "lists in its own `--help=all`.", ""]
    for p in plan.profiles:
        for pool in p.pools:
            cpus = [x for x in plan.placements[p.name] if x.pool == pool.name]
            where = ", ".join(f"cpuset {x.cpuset}" for x in cpus) + (" — SHARES cores with another replica" if cpus[0].shared else "")
            L.append(f"- `{p.name}` / `{pool.name}` x{pool.replicas} ({pool.balance}; {where}; classes: "
                     f"{', '.join(c for c in classes if p.pool_for(c) == pool.name)}): `{' '.join(plan.args[p.name][pool.name])}`")
    L += ["", "The seed's chunked-prefill advice as intents, against this engine:", ""]
    for name, val in SEED_ADVICE.items():
        try:
            knobmod.translate({name: val}, plan.caps, "knobs")
            L.append(f"- `{name} = {val}`: accepted")
        except knobmod.KnobError as exc:
            L.append(f"- `{name} = {val}` → {exc}")
    L += ["", "A profile stating such a knob stops the sweep before any container starts, with that line.", ""]
    data = notes_dir / "data"
    data.mkdir(exist_ok=True)
    for o in outcomes:
        (data / f"{o.details.get('profile', o.cell)}.json").write_text(
            json.dumps({**o.to_json(), "details": {k: v for k, v in o.details.items()}}, indent=1, sort_keys=True, default=str))
    for ph, by in phases.items():
        for p, e in by.items():
            shutil.copy(e["phase"]["summary"], data / f"{p}-{ph}.summary.json")
    (notes_dir / "ranking.json").write_text(json.dumps({"machine": machine, "ranking": ranking}, indent=1, default=str))
    L += ["## Files", "", "- `data/PROFILE.json`: the stored outcome (pools, flags, placements, routing counts, "
          "per-replica metrics); `data/PROFILE-PHASE.summary.json`: smoke's summary per run; `ranking.json`.",
          f"- Raw records, traces, nginx configs, access logs, /metrics text and server logs: `{store.path}` (not committed).", ""]
    path = notes_dir / "README.md"
    path.write_text("\n".join(L) + "\n")
    return path


def _itl_pct(records, itl_classes) -> tuple[float | None, float | None]:
    gaps = [g * 1000 for r in records if r.ok and r.cls in itl_classes for g in r.itl_s]
    if not gaps:
        return None, None
    return float(np.percentile(gaps, 50)), float(np.percentile(gaps, 99))
