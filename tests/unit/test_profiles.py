"""Serving profiles: loading, bad input (one UsageError line), knob translation against the REAL
--help=all text of the vllm-cpu 0.32.0 image (tests/fixtures/vllm-cpu-0.32.0), core placement."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

from model.errors import UsageError
from smoke import mix as mixmod, profiles
from smoke.sweep import knobs
from smoke.sweep.knobs import EngineCaps, KnobError
from tests.strategies import toml_documents

HELP = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-cpu-0.32.0" / "api_server-help-all.txt"
SIX = {"balanced", "large-token", "small-interactive", "prefix-cache", "slow-isolation", "class-aware"}

GOOD = """
[pools.main]
replicas = 2
balance = "least_conn"
[pools.main.knobs]
token_budget = 512
prefix_caching = false
[routing]
default = "main"
"""


@pytest.fixture(scope="module")
def caps() -> EngineCaps:
    return EngineCaps("vllm-cpu", "0.32.0", knobs.parse_help(HELP.read_text()))


def _load(tmp_path: Path, text: str) -> profiles.Profile:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return profiles.load(p)


def test_the_six_seed_profiles_are_registered_and_load():
    assert SIX <= set(profiles.registered())
    mix = mixmod.load("default")
    for p in profiles.load_many(sorted(SIX)):
        p.check_classes(mix)
        assert p.replicas == 2  # same resources in every profile: two replicas, one core each
    ca = profiles.load("class-aware")
    assert ca.pool_for("interactive_chat") != ca.pool_for("batch_summary")
    assert profiles.load("slow-isolation").pool_for("slow_reader") == "slow"
    assert profiles.load("prefix-cache").pool("main").balance == "prefix_hash"


def test_comma_separated_and_unknown_names():
    assert [p.name for p in profiles.load_many(["balanced,class-aware"])] == ["balanced", "class-aware"]
    with pytest.raises(UsageError, match=r"balancd: not a profile file or a registered profile \(did you mean 'balanced'\?\)"):
        profiles.load("balancd")


def test_help_text_parsing_finds_every_option_form(caps):
    f = caps.flags
    assert {"--max-num-batched-tokens", "--max-num-seqs", "--long-prefill-token-threshold",
            "--enable-prefix-caching", "--no-enable-prefix-caching", "--stream-interval",
            "--max-num-queued-reqs", "--device-memory-utilization"} <= f
    # The seed's chunked-prefill knobs are gone from this engine.
    assert "--max-num-partial-prefills" not in f and "--max-long-partial-prefills" not in f
    assert len(f) > 250


def test_every_registered_profile_translates_on_the_real_engine(caps):
    for p in profiles.load_many(None):
        for pool in p.pools:
            args = knobs.translate(pool.knob_dict, caps, f"{p.name}.{pool.name}")
            assert all(a in caps.flags or not a.startswith("--") for a in args)
    ca = profiles.load("class-aware")
    args = knobs.translate(ca.pool("interactive").knob_dict, caps, "x")
    assert args[:4] == ("--max-num-batched-tokens", "512", "--max-num-seqs", "16")
    assert "--long-prefill-token-threshold-adaptive" in args and "--enable-prefix-caching" in args


def test_bool_false_becomes_the_no_form(tmp_path, caps):
    p = _load(tmp_path, GOOD)
    assert knobs.translate(p.pool("main").knob_dict, caps, "x") == (
        "--max-num-batched-tokens", "512", "--no-enable-prefix-caching")


def test_seed_partial_prefill_knob_is_one_line_naming_knob_version_and_nearest_control(tmp_path, caps):
    p = _load(tmp_path, GOOD.replace("token_budget = 512", "long_partial_prefills = 1\npartial_prefills = 2"))
    with pytest.raises(KnobError) as exc:
        knobs.translate(p.pool("main").knob_dict, caps, f"{p.source}: pools.main.knobs")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "pools.main.knobs.long_partial_prefills: vllm-cpu 0.32.0 does not accept --max-long-partial-prefills" in msg
    assert "nearest accepted control: --long-prefill-token-threshold, --long-prefill-token-threshold-adaptive" in msg


def test_an_older_engine_lacking_a_flag_is_named_with_its_version():
    old = EngineCaps("vllm", "0.6.0", frozenset({"--max-num-batched-tokens", "--max-num-seqs"}))
    with pytest.raises(KnobError, match=r"x\.queue_limit_requests: vllm 0\.6\.0 does not accept --max-num-queued-reqs "
                                        r".*nearest accepted control: --max-num-seqs"):
        knobs.translate({"queue_limit_requests": 8}, old, "x")


@pytest.mark.parametrize("edit, expect", [
    (GOOD.replace("token_budget", "token_budgt"), "pools.main.knobs.token_budgt: unknown key (did you mean 'token_budget'?)"),
    (GOOD.replace("token_budget = 512", "token_budget = \"big\""), "pools.main.knobs.token_budget: expected a non-negative integer"),
    (GOOD.replace("prefix_caching = false", "prefix_caching = 1"), "pools.main.knobs.prefix_caching: expected true or false"),
    (GOOD.replace('"least_conn"', '"least_con"'), "pools.main.balance: expected one of round_robin, least_conn, prefix_hash, got 'least_con' (did you mean 'least_conn'?)"),
    (GOOD.replace("replicas = 2", "replicas = 0"), "pools.main.replicas: expected a positive integer, got 0"),
    (GOOD.replace("replicas = 2", "replica = 2"), "pools.main.replica: unknown key (did you mean 'replicas'?)"),
    (GOOD.replace('default = "main"', 'default = "mian"'), "routing.default: no pool 'mian' (did you mean 'main'?)"),
    (GOOD + '[routing.classes]\nrag = "bulk"\n', "routing.classes.rag: no pool 'bulk'"),
    (GOOD.replace("[pools.main]", "[pools.Main_Pool]").replace('"main"', '"Main_Pool"'), "pools.Main_Pool: expected a pool name"),
    (GOOD + '[pools.idle]\nreplicas = 1\n', "pools.idle: no class is routed here"),
    (GOOD.replace("[routing]", "[routng]"), "routng: unknown key (did you mean 'routing'?)"),
    ("[routing]\n", "pools: expected at least one [pools.NAME] table"),
    (GOOD + "[[broken", "not valid TOML"),
])
def test_bad_profiles_are_one_line_usage_errors(tmp_path, edit, expect):
    with pytest.raises(UsageError) as exc:
        _load(tmp_path, edit)
    assert expect in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(str(tmp_path / "p.toml"))


@pytest.mark.parametrize("text, expect", [
    ('[intents.a]\nflags = []\n', "k.toml: intents.a.flags: expected a non-empty list of engine flags, got []"),
    ('[intents.a]\nflags = ["--a"]\ntype = "float"\n', "k.toml: intents.a.type: expected one of int, bool, str, got 'float'"),
    ('[intents.a]\nflag = ["--a"]\n', "k.toml: intents.a.flag: unknown key (did you mean 'flags'?)"),
    ('[intents._a]\nflags = ["--a"]\n', "k.toml: intents._a: expected a name of lowercase letters, digits and '_'"),
])
def test_bad_knobs_file_is_one_line(tmp_path, text, expect):
    (tmp_path / "k.toml").write_text(text)
    with pytest.raises(UsageError) as exc:
        knobs.load_intents(tmp_path / "k.toml")
    assert str(exc.value).startswith(str(tmp_path)) and expect in str(exc.value)


def test_translate_checks_knob_values_first(caps):
    with pytest.raises(UsageError, match=r"^x\.scheduling_policy: expected one of fcfs, priority, got 'fcfz' "
                                         r"\(did you mean 'fcfs'\?\)$"):
        knobs.translate({"scheduling_policy": "fcfz"}, caps, "x")


def test_a_variant_extends_a_profile_and_states_only_what_it_changes(tmp_path):
    base = profiles.load("class-aware")
    v = profiles.load(profiles.PROFILES_DIR / "variants" / "class-aware-b2048.toml")
    assert v.name == "class-aware-b2048" and v.description.startswith("class-aware routing with a 2048-token")
    assert v.pool("bulk").knob_dict == {**base.pool("bulk").knob_dict, "token_budget": 2048}
    assert v.pool("interactive") == base.pool("interactive")
    assert (v.pools[1].name, v.default_pool, v.routes) == (base.pools[1].name, base.default_pool, base.routes)
    lc = profiles.load(profiles.PROFILES_DIR / "variants" / "balanced-least-conn.toml")
    rr = profiles.load("balanced")
    assert (lc.pool("main").balance, rr.pool("main").balance) == ("least_conn", "round_robin")
    assert lc.pool("main").knob_dict == rr.pool("main").knob_dict and lc.pool("main").cores == rr.pool("main").cores
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "v.toml").write_text('[profile]\nextends = "../p.toml"\n')
    (tmp_path / "sub" / "w.toml").write_text('[profile]\nextends = "v.toml"\n[pools.main]\nreplicas = 3\n')
    (tmp_path / "p.toml").write_text(GOOD)
    w = profiles.load(tmp_path / "sub" / "w.toml")              # a chain; paths relative to each file
    assert w.pool("main").replicas == 3 and w.pool("main").knob_dict == {"token_budget": 512, "prefix_caching": False}


@pytest.mark.parametrize("extends, expect", [
    ('"clas-aware"', r"w\.toml: profile\.extends: clas-aware: not a profile file or a registered profile \(did you mean 'class-aware'\?\)"),
    ('"w.toml"', r"w\.toml: profile\.extends: 'w\.toml' extends w\.toml again \(a cycle: w\.toml -> w\.toml\)"),
    ('"v.toml"', r"v\.toml: profile\.extends: 'w\.toml' extends v\.toml again \(a cycle: w\.toml -> v\.toml -> w\.toml\)"),
    ("3", r"w\.toml: profile\.extends: "),
])
def test_a_bad_extends_is_one_line(tmp_path, extends, expect):
    (tmp_path / "v.toml").write_text('[profile]\nextends = "w.toml"\n')
    (tmp_path / "w.toml").write_text(f"[profile]\nextends = {extends}\n" + GOOD)
    with pytest.raises(UsageError, match=expect) as e:
        profiles.load(tmp_path / "w.toml")
    assert "\n" not in str(e.value)


def test_routed_class_must_exist_in_the_mix(tmp_path):
    p = _load(tmp_path, GOOD + '[routing.classes]\nslow_readr = "main"\n')
    with pytest.raises(UsageError, match=r"routing\.classes\.slow_readr: not a class of mix 'default' \(did you mean 'slow_reader'\?\)"):
        p.check_classes(mixmod.load("default"))


def test_placement_splits_cores_and_says_when_they_are_shared(tmp_path):
    p = _load(tmp_path, GOOD)
    assert [(x.cpuset, x.shared) for x in profiles.place(p, [0, 1])] == [("0", False), ("1", False)]
    assert [(x.cpuset, x.shared) for x in profiles.place(p, [0])] == [("0", True), ("0", True)]
    big = _load(tmp_path, GOOD.replace("replicas = 2", "replicas = 1\ncores = 4"))
    assert profiles.place(big, [0, 1, 2, 3, 4, 5])[0].cpuset == "0,1,2,3"


_docs = toml_documents(["profile", "pools", "routing", "main", "bulk", "Main", "replicas", "cores", "balance",
                        "knobs", "image", "token_budget", "prefix_caching", "scheduling_policy", "default", "classes"],
                       ["main", "bulk", "least_conn", "fcfs"], int_hi=600, top=3)


@settings(max_examples=300, deadline=None)
@given(doc=_docs)
def test_fuzzed_profiles_give_usage_errors_only(doc):
    """Any structure: a Profile or one UsageError line; never another exception."""
    try:
        profiles.parse(doc, "fuzz.toml", "fuzz")
    except UsageError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc)
