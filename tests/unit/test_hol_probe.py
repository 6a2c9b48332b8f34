"""The head-of-line probe (smoke/sweep/hol_probe.py): its trace, its pairs, its schedule and resume,
its verdict and its report, no Docker.

Replicas here are HolPools: a stand-in that answers every request of the trace with real
RequestRecords (smoke.records, the replay's writer) under a simple model of the two schedulers, a
short prompt waiting for the long one's first token ("blocking") or entering at once ("capped"). The
real replicas run in tests/integration/test_hol_probe.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from model.errors import UsageError
from model.toml import validate
from smoke import mix as mixmod, records as recmod
from smoke.records import RequestRecord
from smoke.sweep import capacity as cap, capacity_runner as cr, hol_probe as hp, hostload
from smoke.sweep.capacity_pools import Measured

RULES = hp.load_rules()
CAP = cap.load_rules()
FAST = CAP.model_copy(update={"bootstrap": CAP.bootstrap.model_copy(update={"n_resamples": 199})})
MIX = mixmod.load("default")
A, B = RULES.probe.profiles            # the claimed profile (capped), the one it should beat
LONG_TTFT_S = 1.5


@dataclass
class HolPools:
    capped: set[str]
    opened: list[tuple[str, str]] = field(default_factory=list)
    foreign: dict[int, float] = field(default_factory=dict)      # replay number → foreign CPU share
    fail_at: int = -1
    late_short: bool = False                     # every short is scheduled after its long's first token
    background_s: float = 5.0                    # how long a background request streams
    replays: int = 0

    @contextmanager
    def __call__(self, profile: str, tag: str):
        self.opened.append((profile, tag))
        yield Session(self, profile)


@dataclass
class Session:
    owner: HolPools
    profile: str
    startup_s: float = 1.0
    tcmalloc: dict = field(default_factory=lambda: {"main-0": True})

    def replay(self, trace, path, tag) -> Measured:
        o = self.owner
        n, o.replays = o.replays, o.replays + 1
        if n == o.fail_at:
            raise KeyboardInterrupt
        path.parent.mkdir(parents=True, exist_ok=True)
        longs = {r.id[:3]: r.t for r in trace.requests if r.id.endswith("-long")}
        recs = []
        for r in trace.requests:
            sent = r.t + (LONG_TTFT_S + 0.1 if o.late_short and r.id.endswith("-short") else 0.0)
            if r.id.endswith("-bg"):
                ttft = 0.05
            elif r.id.endswith("-long"):
                ttft = LONG_TTFT_S
            elif self.profile in o.capped:
                ttft = 0.08
            else:             # waits for the long prompt's step to end: its first token, then one step
                ttft = max(0.05, longs[r.id[:3]] + LONG_TTFT_S - sent + 0.05)
            dur = o.background_s if r.id.endswith("-bg") else ttft + 0.2
            rec = RequestRecord(id=r.id, cls=r.cls, endpoint=r.endpoint, scheduled_s=sent, sent_s=sent,
                                end_s=sent + dur, status="ok", http_status=200, ttft_s=ttft, e2e_s=dur,
                                output_tokens=r.max_tokens, tokens_from="usage", streamed_tokens=r.max_tokens)
            recmod.append(path, rec)
            recs.append(rec)
        mean = sum(x.ttft_s for x in recs) / len(recs) * 1000
        usage = hostload.Usage((0.5, 0.6), 2, o.foreign.get(n, 0.0), 0.5, 1.0)
        return Measured(recs, usage, mean - 5.0, {}, [], {"main-0": hostload.Throttle(100, 30, 0.3)})


BUSY = hp.load_rules(hp.rules_file("busy"))


def probe(tmp_path, pools, rules=RULES) -> hp.Probe:
    return hp.Probe(rules, FAST, MIX, cr.Store(tmp_path / "hol"), pools, say=lambda s: None)


def test_the_trace_pairs_a_long_prompt_with_a_short_one_sent_inside_its_offset_range():
    t = hp.probe_trace(MIX, RULES, 1)
    p = RULES.probe
    assert len(t.requests) == 2 * p.trials
    longs = [r for r in t.requests if r.id.endswith("-long")]
    shorts = [r for r in t.requests if r.id.endswith("-short")]
    assert {r.cls for r in longs} == {p.long_class} and {r.cls for r in shorts} == {p.short_class}
    assert [r.t for r in longs] == [i * p.period_s for i in range(p.trials)]
    offsets = [s.t - lg.t for lg, s in zip(longs, shorts)]
    assert all(p.offset_s[0] <= x <= p.offset_s[1] + 1e-9 for x in offsets)
    assert len(set(offsets)) > p.trials // 2                       # drawn, not one fixed offset
    assert len({r.prompt for r in longs}) == p.trials               # no prompt twice: no prefix-cache hit
    assert not any(r.after for r in t.requests)


def test_one_seed_gives_both_profiles_the_same_pairs_and_another_seed_other_ones():
    assert hp.probe_trace(MIX, RULES, 2) == hp.probe_trace(MIX, RULES, 2)
    one, two = hp.probe_trace(MIX, RULES, 1), hp.probe_trace(MIX, RULES, 101)
    assert one.requests[0].prompt != two.requests[0].prompt and one.requests[1].t != two.requests[1].t


def test_a_pair_counts_only_when_the_short_left_during_the_long_prefill(tmp_path):
    def rec(id_, sent, ttft, ok=True):
        return RequestRecord(id=id_, cls="x", endpoint="chat", scheduled_s=sent, sent_s=sent, end_s=sent + 1,
                             status="ok" if ok else "error", ttft_s=ttft if ok else None)
    w = RULES.probe.warmup_trials
    recs = [rec(f"p{w:02d}-long", 10.0, 1.0), rec(f"p{w:02d}-short", 10.5, 0.6),          # during
            rec(f"p{w + 1:02d}-long", 15.0, 1.0), rec(f"p{w + 1:02d}-short", 16.2, 0.05),  # after the first token
            rec(f"p{w + 2:02d}-long", 20.0, 1.0), rec(f"p{w + 2:02d}-short", 20.3, 0.0, ok=False),
            rec("p00-long", 0.0, 1.0), rec("p00-short", 0.5, 0.9)]                        # warm-up: dropped
    ps = hp.pairs(recs, RULES)
    assert len(ps) == RULES.probe.trials - w
    assert [x.during for x in ps[:3]] == [True, False, False]
    f = hp.figures(ps)
    assert (f.counted, f.short_ttft_p50_ms, f.long_ttft_p50_ms) == (1, 600.0, 1000.0)
    assert f.failed == 1 + 2 * (len(ps) - 3)          # the failed short, and both of every pair never answered


def test_runs_alternate_the_profiles_on_a_fresh_replica_each_and_resume_after_an_interrupt(tmp_path):
    pools = HolPools({A}, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        probe(tmp_path, pools).run()
    assert [p for p, _ in pools.opened] == [A, B, A, B]
    again = HolPools({A})
    probe(tmp_path, again).run()
    assert [p for p, _ in again.opened] == [B, A, B]              # the interrupted run again, then the rest
    es = cr.Store(tmp_path / "hol").entries()
    assert [(e["profile"], e["pass"]) for e in es] == [(A, 1), (B, 1), (A, 2), (B, 2), (A, 3), (B, 3)]
    assert all((tmp_path / "hol" / e["dir"] / "records.jsonl.xz").is_file() for e in es)
    assert {e["seed"] for e in es if e["pass"] == 2} == {2}       # both profiles: the same pairs


def test_a_run_over_a_bound_is_discarded_and_repeated_with_other_pairs_never_averaged_in(tmp_path):
    probe(tmp_path, HolPools({A}, foreign={1: 0.5})).run()
    es = cr.Store(tmp_path / "hol").entries()
    bad = [e for e in es if e["discarded"]]
    assert len(bad) == 1 and bad[0]["profile"] == B and "foreign CPU" in bad[0]["discarded"]
    again = [e for e in es if e["profile"] == B and e["pass"] == 1 and not e["discarded"]]
    assert len(again) == 1 and again[0]["seed"] == 101
    assert hp.judge(es, RULES, FAST).valid == {A: 3, B: 3}


def test_too_few_overlapping_pairs_discard_a_run(tmp_path):
    p = probe(tmp_path, HolPools({A}, late_short=True))
    e = p.one(A, 1)
    assert e["counted"] == 0 and "pairs overlapped" in e["discarded"]


def test_the_verdict_follows_the_intervals(tmp_path):
    probe(tmp_path, HolPools({A})).run()
    j = hp.judge(cr.Store(tmp_path / "hol").entries(), RULES, FAST)
    assert j.verdict.word == cap.REPRODUCED
    assert j.short[A].high < j.short[B].low
    probe(tmp_path / "same", HolPools({A, B})).run()
    same = hp.judge(cr.Store(tmp_path / "same" / "hol").entries(), RULES, FAST)
    assert same.verdict.word == cap.NO_DIFFERENCE
    probe(tmp_path / "worse", HolPools({B})).run()
    assert hp.judge(cr.Store(tmp_path / "worse" / "hol").entries(), RULES, FAST).verdict.word == cap.NOT_REPRODUCED


def test_no_stored_run_and_too_few_valid_runs_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="no probe run stored"):
        hp.read_entries(cr.Store(tmp_path / "empty"))
    p = probe(tmp_path, HolPools({A}))
    p.one(A, 1)
    p.one(B, 1)
    with pytest.raises(UsageError, match=f"probe: {A}: 1 valid run value"):
        hp.judge(cr.Store(tmp_path / "hol").entries(), RULES, FAST)


def test_on_a_busy_replica_a_background_request_leads_each_long_prompt():
    p = BUSY.probe
    assert p.background_tokens > 0 and p.background_lead_s > 0 and BUSY.probe.profiles == RULES.probe.profiles
    t = hp.probe_trace(MIX, BUSY, 1)
    by = {r.id: r for r in t.requests}
    assert len(t.requests) == 3 * p.trials
    for i in range(p.trials):
        bg, lg = by[f"p{i:02d}-bg"], by[f"p{i:02d}-long"]
        assert lg.t - bg.t == pytest.approx(p.background_lead_s) and bg.max_tokens == p.background_tokens
        assert bg.cls == p.short_class and bg.messages != by[f"p{i:02d}-short"].messages
    assert not any(r.id.endswith("-bg") for r in hp.probe_trace(MIX, RULES, 1).requests)   # the idle probe: none


def test_on_a_busy_replica_a_pair_counts_only_while_the_background_still_streams(tmp_path):
    e = probe(tmp_path, HolPools({A}), BUSY).one(A, 1)
    assert e["counted"] == e["measured"] == BUSY.probe.trials - BUSY.probe.warmup_trials and not e["discarded"]
    early = probe(tmp_path / "early", HolPools({A}, background_s=0.3), BUSY).one(A, 1)   # ended before the long began
    assert early["counted"] == 0 and "pairs overlapped" in early["discarded"]


def test_an_unknown_probe_name_is_one_line():
    with pytest.raises(UsageError, match="--rules: no probe 'bussy' \\(did you mean 'busy'\\?\\)"):
        hp.rules_file("bussy")


@pytest.mark.parametrize("patch, key", [({"offset_s": [0.1, 6.0]}, "probe.offset_s"),
                                        ({"background_lead_s": 4.5}, "probe.background_lead_s"),
                                        ({"min_during": 40}, "probe.min_during"),
                                        ({"repetitions": 2}, "probe.repetitions"),
                                        ({"profile": ["x", "y"]}, "probe.profile")])
def test_a_bad_rules_file_is_one_line_naming_the_key(patch, key):
    data = {"probe": {**RULES.probe.model_dump(), **patch}}
    with pytest.raises(UsageError) as e:
        validate(hp.ProbeRules, data, "hol_probe.toml")
    assert key in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_class_in_the_rules_is_one_line():
    bad = RULES.model_copy(update={"probe": RULES.probe.model_copy(update={"short_class": "chat"})})
    with pytest.raises(UsageError, match="probe.short_class: 'chat' is not a class of mix 'default'"):
        hp.probe_trace(MIX, bad, 1)
