"""invoke conform's checks against an in-process fake server (httpx.MockTransport): one that keeps the
contract passes every required check; one that breaks it fails exactly the checks it breaks."""

from __future__ import annotations

import pytest

from smoke import conform
from tests.unit.fake_openai import MODEL, Breaks, FakeOpenAI, client


def run(breaks: Breaks | None = None, extensions=()) -> dict[str, conform.Result]:
    fake = FakeOpenAI(breaks)
    conf = conform.Conformance(conform.Client(client(fake), MODEL, timeout_s=5), extensions)
    return {r.check: r for r in conform.run_checks(conf)}


def failing(results: dict[str, conform.Result]) -> set[str]:
    return {name for name, r in results.items() if r.status == "fail"}


def test_checks_file_names_a_method_for_every_check():
    for name in conform.load_checks():
        assert callable(getattr(conform.Conformance, name.replace("-", "_")))


def test_a_conforming_server_passes_every_check():
    res = run(extensions=("slots",))
    assert failing(res) == set(), [r.line() for r in res.values() if r.status == "fail"]
    assert conform.exit_code(list(res.values())) == 0
    assert res["n-choices"].evidence == "n=2 served: choices 0 and 1"
    assert res["tool-result"].evidence.startswith("answered after the tool result (the server's own call id)")
    assert res["ext-slots"].status == "pass"
    # An extension not declared is not checked: it can neither pass nor fail.
    assert res["ext-return-token-ids"].status == "unsupported"


@pytest.mark.parametrize("breaks, broken", [
    (Breaks(no_done=True), {"chat-stream", "completions-stream", "sse-framing", "concurrent-streams"}),
    (Breaks(server_error_on_bad_input=True), {"bad-json", "bad-type", "unknown-model", "over-context"}),
    (Breaks(no_usage=True), {"usage", "stream-usage"}),
    (Breaks(null_finish=True), {"chat", "completions", "finish-reason", "usage", "max-tokens", "stop-sequences",
                                "temperature-0", "n-choices", "tool-result", "concurrent-streams"}),
    (Breaks(serves_unknown_model=True), {"unknown-model"}),
])
def test_a_server_that_breaks_the_contract_fails_those_checks(breaks, broken):
    res = run(breaks)
    assert broken <= failing(res), {k: res[k].line() for k in broken - failing(res)}
    assert conform.exit_code(list(res.values())) == 1


def test_evidence_names_what_broke():
    res = run(Breaks(no_done=True))
    assert "did not end with data: [DONE]" in res["sse-framing"].evidence
    res = run(Breaks(server_error_on_bad_input=True))
    assert res["bad-json"].evidence.startswith("malformed JSON: answered 500")
    res = run(Breaks(serves_unknown_model=True))
    assert "answered 200 (accepted) where a 4xx is due" in res["unknown-model"].evidence
    res = run(Breaks(no_usage=True))
    assert "no usage chunk despite stream_options.include_usage" in res["stream-usage"].evidence


def test_token_ids_extension_checked_where_declared():
    res = run(Breaks(token_ids=True, two_tokens_per_chunk=True), extensions=("return_token_ids",))
    assert res["ext-return-token-ids"].status == "pass", res["ext-return-token-ids"].line()
    # Declared but not delivered: a fail.
    res = run(extensions=("return_token_ids",))
    assert res["ext-return-token-ids"].status == "fail"


def test_result_line_format():
    r = conform.Result("models", "pass", "1 model(s): tiny-llama")
    assert r.line() == "models pass 1 model(s): tiny-llama"
    assert conform.Result("tool-call", "fail", "x", required=False).line() == "tool-call fail [optional] x"
    assert conform.exit_code([conform.Result("tool-call", "fail", "x", required=False)]) == 0


def test_api_key_comes_from_the_named_variable_and_is_never_stored(monkeypatch, tmp_path):
    from model.errors import UsageError
    from model.results import ResultsStore
    from smoke import conform_run
    monkeypatch.setenv("DEPLOYLAB_KEY", "sk-secret-42")
    http = conform_run.http_client("https://staging.example.test/", "DEPLOYLAB_KEY")
    assert http.headers["Authorization"] == "Bearer sk-secret-42" and str(http.base_url) == "https://staging.example.test"
    with pytest.raises(UsageError, match="environment variable DEPLOYLAB_NOPE is not set"):
        conform_run.http_client("https://staging.example.test", "DEPLOYLAB_NOPE")
    with pytest.raises(UsageError, match="expected an http:// or https:// URL"):
        conform_run.http_client("ftp://x", "")

    fake = FakeOpenAI()
    seen = []

    def mock_client(url, key_env=""):  # the same key handling, the fake server behind it
        c = client(fake)
        c.headers["Authorization"] = "Bearer " + __import__("os").environ[key_env]
        seen.append(c)
        return c
    monkeypatch.setattr(conform_run, "http_client", mock_client)
    store = ResultsStore(tmp_path, "t")
    o = conform_run.conform_url("https://staging.example.test", store, api_key_env="DEPLOYLAB_KEY")
    assert o.status == "pass" and o.cell == "url-staging-example-test"
    assert "sk-secret-42" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert seen


@pytest.mark.parametrize("engine, why", [("sglang", "Intel AMX"), ("tgi", "only as a container image")])
def test_an_engine_that_cannot_be_obtained_is_engine_unavailable_never_a_pass(engine, why, tmp_path, capsys):
    from model.results import ResultsStore
    from smoke.cli import conform as cli_conform
    assert cli_conform(engine, "", "", "", "", [], "t", tmp_path) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"conform engine-{engine}: engine-unavailable: ") and why in out
    o = ResultsStore(tmp_path, "t").get(f"engine-{engine}", "conform")
    assert o.status == "engine-unavailable" and why in o.evidence[0]


def test_adapter_rows_read_back_what_conform_wrote(tmp_path, monkeypatch):
    from model.results import ResultsStore
    from smoke import conform_run
    from smoke.cli import conform as cli_conform
    cli_conform("sglang", "", "", "", "", [], "t", tmp_path)
    monkeypatch.setattr(conform_run, "http_client", lambda url, key_env="": client(FakeOpenAI(Breaks(no_usage=True))))
    store = ResultsStore(tmp_path, "t")
    conform_run.conform_url("http://127.0.0.1:9", store)
    rows = conform_run.adapter_rows(store)
    assert [(r["engine"], r["status"]) for r in rows] == [("sglang", "engine-unavailable")]
    assert "AMX" in rows[0]["reason"] and rows[0]["checks"] == 0
