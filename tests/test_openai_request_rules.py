"""The request body per model family, extra body fields, headers, Azure's URLs and the price table.

The rules are tables here; what reaches a server is read back from the loopback server's
``GET /requests`` after real ``reflectune recycle`` runs: a reasoning model (``o4-mini``), a chat
model (``gpt-4o-mini``) and a vLLM-style local model with ``--extra-body``. A header's value must
reach the server and nothing else: not the run folder, not the output, not the terminal.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from reflectune.cli import main
from reflectune.cli import options as cli_options
from reflectune.cli.options import (
    extra_body_option,
    header_option,
    oracle_values,
    warn_unknown_price,
    with_http,
)
from reflectune.config import GenerateConfig, OracleConfig, RecycleConfig, merged, validated
from reflectune.errors import ConfigError
from reflectune.oracles import make_oracle, pricing
from reflectune.oracles.openai_http import OpenAIOracle
from reflectune.oracles.request_rules import CHAT, REASONING, payload_for, rule_for
from reflectune.pipeline import load_run_config
from reflectune.testing.server import running_server
from reflectune.types import ChatRequest, Message
from tests.conftest import ALPACA, run_cli

LOCAL = "http://127.0.0.1:9/v1"  # never called: only the oracle's construction is tested
REQUEST = ChatRequest((Message("system", "Be brief."), Message("user", "Hi")), max_tokens=64,
                      temperature=0.0, top_p=1.0, seed=7, stop=("[End]",))
SAMPLING = {"temperature", "top_p", "max_tokens", "stop"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- the rules, as a table --------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "rule"), [
    ("o1", REASONING), ("o1-2024-12-17", REASONING), ("o1-pro", REASONING), ("o3", REASONING),
    ("o3-mini", REASONING), ("o3-mini-2025-01-31", REASONING), ("O4-Mini", REASONING),
    ("o4-mini-2025-04-16", REASONING), ("gpt-5", REASONING), ("gpt-5-mini", REASONING),
    ("gpt-5-nano-2025-08-07", REASONING), ("gpt-5.1", REASONING), ("gpt-5.4-pro", REASONING),
    ("gpt-5-chat-latest", REASONING),  # the safe side: takes max_completion_tokens, samples at 1
    ("gpt-4o", CHAT), ("gpt-4o-mini", CHAT), ("gpt-4o-mini-2024-07-18", CHAT), ("gpt-4.1-nano", CHAT),
    ("gpt-4", CHAT), ("gpt-3.5-turbo-0125", CHAT), ("chatgpt-4o-latest", CHAT),
    # not OpenAI's reasoning families: local and routed names, near misses
    ("qwen", CHAT), ("Qwen/Qwen2.5-7B-Instruct", CHAT), ("openai/o4-mini", CHAT), ("gpt-oss-20b", CHAT),
    ("o10", CHAT), ("omni", CHAT), ("gpt-50", CHAT), ("o3mini", CHAT), ("", CHAT),
])
def test_the_family_decides_the_rule(model: str, rule: object) -> None:
    assert rule_for(model) is rule


def test_an_override_wins_over_the_family() -> None:
    assert rule_for("my-azure-deployment", "reasoning") is REASONING
    assert rule_for("o4-mini", "chat") is CHAT
    with pytest.raises(ValueError, match="unknown request rules"):
        rule_for("m", "fast")


def test_the_chat_body_is_the_body_reflectune_always_sent() -> None:
    body = payload_for("gpt-4o-mini", REQUEST, CHAT)
    assert list(body) == ["model", "messages", "temperature", "top_p", "max_tokens", "seed", "stop"]
    assert body["max_tokens"] == 64 and body["stop"] == ["[End]"] and body["messages"][0]["role"] == "system"


def test_the_reasoning_body_has_max_completion_tokens_and_no_sampling() -> None:
    body = payload_for("o4-mini", REQUEST, REASONING)
    assert body == {"model": "o4-mini", "messages": body["messages"], "max_completion_tokens": 64, "seed": 7}
    assert not SAMPLING & set(body)
    assert "max_completion_tokens" not in payload_for("o3", ChatRequest(REQUEST.messages), REASONING)


# -- the config: extra body and headers -------------------------------------------------------------

@pytest.mark.parametrize(("values", "needle"), [
    ({"extra_body": {"model": "x"}}, "may not set 'model'"),
    ({"extra_body": {"messages": []}}, "may not set 'messages'"),
    ({"extra_body": {"max_tokens": 5}}, "use --max-tokens"),
    ({"extra_body": {"temperature": 1}}, "use --temperature"),
    ({"extra_body": {"stream": True}}, "one JSON body"),
    ({"headers": {"api-key": "0123456789abcdef"}}, "api-key=env:MY_VAR"),
    ({"headers": {"Authorization": "Bearer abc"}}, "carries a credential"),
    ({"headers": {"Content-Type": "text/plain"}}, "sets this header itself"),
    ({"headers": {"X Title": "a"}}, "not a valid header name"),
    ({"headers": {"X-Title": "a\r\nX-Evil: 1"}}, "on one line"),
    ({"headers": {"api-key": "env:"}}, "name the environment variable"),
])
def test_what_reflectune_writes_itself_cannot_be_replaced(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validated(OracleConfig, spec="openai:m", **values)


def test_headers_never_reach_a_record_and_configs_hash_as_before() -> None:
    plain = OracleConfig(spec="openai:gpt-4o")
    rules = "request_rules", "extra_body", "headers"
    assert not set(plain.model_dump(mode="json")) & set(rules)
    with_headers = OracleConfig(spec="openai:gpt-4o", headers={"X-Title": "secret-title-0042"})
    assert with_headers.config_hash() == plain.config_hash()
    for text in (with_headers.canonical(), repr(with_headers), str(with_headers)):
        assert "secret-title-0042" not in text and "X-Title" not in text
    assert with_headers.model_dump()["headers"] == {"X-Title": "secret-title-0042"}  # the live config has it
    body = OracleConfig(spec="openai:gpt-4o", extra_body={"top_k": 20})
    assert body.config_hash() != plain.config_hash()
    assert OracleConfig(spec="openai:gpt-4o", extra_body={}).config_hash() == plain.config_hash()


# -- the oracle: fingerprint, headers, refusals -----------------------------------------------------

def test_extra_body_and_reasoning_rules_change_the_fingerprint_and_nothing_else_does() -> None:
    """(e) The cache identity: a chat model without extra fields keeps its fingerprint exactly."""
    old = "openai:qwen@http://127.0.0.1:9/v1"
    assert OpenAIOracle("qwen", base_url=LOCAL).fingerprint() == old
    titled = OpenAIOracle("qwen", base_url=LOCAL, extra_body=None, headers={"X-Title": "t"})
    assert titled.fingerprint() == old
    assert OpenAIOracle("qwen", base_url=LOCAL, extra_body={}).fingerprint() == old
    a = OpenAIOracle("qwen", base_url=LOCAL, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    b = OpenAIOracle("qwen", base_url=LOCAL, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert a.fingerprint().startswith(old + "+extra_body=") and a.fingerprint() != b.fingerprint()
    assert OpenAIOracle("o4-mini", base_url=LOCAL).fingerprint().endswith("+rules=reasoning")
    assert OpenAIOracle("qwen", base_url=LOCAL, request_rules="reasoning").fingerprint().endswith(
        "+rules=reasoning")
    assert OpenAIOracle("o4-mini", base_url=LOCAL, request_rules="chat").fingerprint() == \
        "openai:o4-mini@http://127.0.0.1:9/v1"


def test_the_body_merges_extra_fields_after_the_rules() -> None:
    oracle = OpenAIOracle("qwen", base_url=LOCAL, extra_body={"top_k": 20, "chat_template_kwargs": {"x": 1}})
    body = oracle._payload(REQUEST)
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"x": 1} and body["max_tokens"] == 64


def test_a_credential_header_is_read_from_its_variable_sent_and_redacted(monkeypatch) -> None:
    monkeypatch.setenv("AZ_KEY", "azure-key-0123456789abcdef")
    oracle = OpenAIOracle("my-deployment", headers={"api-key": "env:AZ_KEY", "X-Title": "reflectune-e2e"},
                          base_url="https://res.openai.azure.com/openai/deployments/my-deployment"
                                   "?api-version=2024-10-21")
    headers = oracle._headers()
    assert headers["api-key"] == "azure-key-0123456789abcdef" and "Authorization" not in headers
    assert oracle._endpoint.chat_url() == ("https://res.openai.azure.com/openai/deployments/my-deployment/"
                                           "chat/completions?api-version=2024-10-21")
    said = oracle._redact("bad key azure-key-0123456789abcdef for reflectune-e2e")
    assert "azure-key" not in said and "reflectune-e2e" not in said
    for text in (repr(oracle), oracle.fingerprint()):
        assert "azure-key" not in text and "api-key" not in text
    monkeypatch.delenv("AZ_KEY")
    with pytest.raises(ConfigError, match="AZ_KEY is not set"):
        OpenAIOracle("m", base_url=LOCAL, headers={"api-key": "env:AZ_KEY"})


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"base_url": "http://gpu.lan:8000/v1", "headers": {"api-key": "env:AZ_KEY"}},
     "the header api-key over plain"),
    ({"base_url": LOCAL, "api_key_env": "AZ_KEY", "headers": {"Authorization": "env:AZ_KEY"}},
     "Authorization and a key is set"),
    ({"base_url": LOCAL, "forcing": "prefill", "model": "o4-mini"}, "reasoning request rules"),
    ({"base_url": LOCAL, "forcing": "grammar", "extra_body": {"grammar": "root ::= x"}},
     "may not set 'grammar' with --forcing grammar"),
    ({"base_url": LOCAL, "request_rules": "fast"}, "invalid --request-rules"),
    ({"base_url": LOCAL, "headers": {"x-api-key": "literal-value"}}, "carries a credential"),
])
def test_refusals_are_config_errors(monkeypatch, kwargs: dict[str, Any], needle: str) -> None:
    monkeypatch.setenv("AZ_KEY", "azure-key-0123456789abcdef")
    model = kwargs.pop("model", "qwen")
    with pytest.raises(ConfigError, match=needle) as info:
        OpenAIOracle(model, **kwargs)
    assert "azure-key-0123456789abcdef" not in str(info.value)


def test_http_options_are_refused_for_local_backends() -> None:
    with pytest.raises(ConfigError, match="--extra-body applies to HTTP oracles"):
        make_oracle(validated(OracleConfig, spec="fake", extra_body={"top_k": 1}))
    with pytest.raises(ConfigError, match="--request-rules applies to HTTP oracles"):
        make_oracle(validated(OracleConfig, spec="fake", request_rules="reasoning"))


def test_a_refused_field_names_the_override() -> None:
    oracle = OpenAIOracle("my-deployment", base_url=LOCAL)
    error = oracle._classify(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                             "Use 'max_completion_tokens' instead.", "unsupported_parameter", None)
    assert error.kind == "http_400" and "--request-rules reasoning" in str(error)


def test_a_pipeline_file_takes_extra_body_and_refuses_a_written_credential(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("recycle:\n  oracle:\n    spec: openai:qwen\n    extra_body: {top_k: 20}\n"
                    "    headers: {X-Title: reflectune, api-key: 'env:AZURE_OPENAI_API_KEY'}\n")
    config = load_run_config(good)
    assert config.recycle.oracle.extra_body == {"top_k": 20}
    assert "headers" not in json.dumps(config.model_dump(mode="json"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("recycle:\n  oracle:\n    spec: openai:qwen\n"
                   "    headers: {api-key: 0123456789abcdef0123}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*api-key=env:MY_VAR"):
        load_run_config(bad)


# -- the CLI's parsing ------------------------------------------------------------------------------

def test_cli_values_parse_to_config_fields() -> None:
    assert extra_body_option('{"chat_template_kwargs": {"enable_thinking": false}}') == {
        "chat_template_kwargs": {"enable_thinking": False}}
    assert extra_body_option(None) is None and header_option(None) is None and header_option([]) is None
    assert header_option(["X-Title=a=b", " HTTP-Referer = https://x.org "]) == {
        "X-Title": "a=b", "HTTP-Referer": "https://x.org"}
    for bad, needle in (("{bad", "not valid JSON"), ("[1]", "a JSON object is needed"), ("7", "not int")):
        with pytest.raises(ConfigError, match=needle):
            extra_body_option(bad)
    with pytest.raises(ConfigError, match="given twice"):
        header_option(["X-A=1", "x-a=2"])
    config = with_http(GenerateConfig, "model", {"extra_body": '{"top_k": 2}', "header": None,
                                                 "request_rules": "auto"})
    assert config is not None and config.model.extra_body == {"top_k": 2}
    assert with_http(GenerateConfig, "model", {"extra_body": None, "header": None, "request_rules": "auto"}) \
        is None
    # recycle merges its updates, which drops None and {}: inside the body they are the user's own
    given = {"extra_body": '{"a": null, "b": {}}', "header": ["X-A=1"]}
    updates = {"oracle": oracle_values("openai:m", given)}
    oracle = merged(RecycleConfig, None, updates).oracle
    assert oracle.extra_body == {"a": None, "b": {}} and oracle.headers == {"X-A": "1"}


# -- the price table --------------------------------------------------------------------------------

def test_the_price_table_says_when_and_where_and_an_unknown_price_warns(monkeypatch) -> None:
    assert len(pricing.PRICES_AS_OF) == 7 and pricing.PRICES_AS_OF[4] == "-"  # YYYY-MM
    assert pricing.PRICES_SOURCE.startswith("https://")
    line = pricing.unknown_price_warning("gpt-5.1", max_cost=True)
    assert pricing.PRICES_AS_OF in line and pricing.PRICES_SOURCE in line and "--max-cost" in line

    def said(spec: str, **values: Any) -> str:
        out = io.StringIO()
        warn_unknown_price(Console(file=out, width=400), spec, values)
        return out.getvalue()

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert "no list price for the model 'gpt-5.1'" in said("openai:gpt-5.1", base_url=None)
    assert said("openai:gpt-4o-mini", base_url=None) == ""                  # priced
    assert said("openai:gpt-5.1", base_url=None, price_in=0.5) == ""         # priced by the user
    assert said("openai:qwen", base_url="http://localhost:8000/v1") == ""    # a server on this machine
    assert said("hf:/models/x", base_url=None) == "" and said("embedded") == ""
    assert "'qwen'" in said("openai:qwen", base_url="http://gpu.lan:8000/v1")


# -- end to end: what the server receives -----------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with running_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("rules") / "in.jsonl"
    data = json.loads(ALPACA.read_text(encoding="utf-8"))[:2]
    src.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return src


def recycle(server, rows: Path, run: Path, model: str, *extra: str):
    server.reset()
    proc = run_cli("recycle", str(rows), "-o", str(run / "out.jsonl"), "--oracle", f"openai:{model}",
                   "--base-url", server.base_url, "--run-dir", str(run), "--phases", "response", "-q",
                   "--no-html", *extra)
    assert proc.returncode == 0, proc.stderr
    seen = server.requests()
    assert len(seen) == 2, seen
    return proc, seen


def test_a_reasoning_model_gets_max_completion_tokens_and_no_sampling(server, rows, tmp_path) -> None:
    """(a) o4-mini: the body a reasoning model accepts."""
    _, seen = recycle(server, rows, tmp_path, "o4-mini", "--max-tokens", "1500")
    for request in seen:
        body = request["body"]
        assert body["model"] == "o4-mini" and body["max_completion_tokens"] == 1500
        assert not SAMPLING & set(body), body
    manifest = json.loads((tmp_path / "run.json").read_text())["recycle"]
    assert manifest["oracle_fingerprint"].endswith("+rules=reasoning")


def test_a_chat_model_gets_max_tokens_temperature_and_top_p(server, rows, tmp_path) -> None:
    """(b) gpt-4o-mini: the chat body, as it always was."""
    _, seen = recycle(server, rows, tmp_path, "gpt-4o-mini", "--max-tokens", "1500",
                         "--temperature", "0.5")
    for request in seen:
        body = request["body"]
        assert body["max_tokens"] == 1500 and body["temperature"] == 0.5 and body["top_p"] == 1.0
        assert "max_completion_tokens" not in body
    manifest = json.loads((tmp_path / "run.json").read_text())["recycle"]
    assert manifest["oracle_fingerprint"] == f"openai:gpt-4o-mini@{server.base_url}"


def test_a_vllm_model_gets_the_extra_body_and_a_header_reaches_only_the_server(server, rows,
                                                                                tmp_path) -> None:
    """(c) and (d): --extra-body lands in every body; --header reaches the server, its value nowhere in
    the run folder, the output or the terminal, and the run's config records the extra body only."""
    title = "reflectune-e2e-7f3a9c51"
    proc, seen = recycle(server, rows, tmp_path, "Qwen/Qwen3-8B",
                         "--extra-body", '{"chat_template_kwargs": {"enable_thinking": false}}',
                         "--header", f"X-Title={title}", "--header", "HTTP-Referer=https://example.org/reflectune")
    for request in seen:
        body = request["body"]
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert body["max_tokens"] > 0 and body["temperature"] == 0.0
        assert request["header_sha256"]["x-title"] == sha(title)
        assert "http-referer" in request["headers"]
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert title.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned >= 3 and title not in proc.stdout + proc.stderr
    oracle = json.loads((tmp_path / "run.json").read_text())["recycle"]["config"]["oracle"]
    assert oracle["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}
    assert "headers" not in oracle


def test_generate_and_judge_take_the_http_options(server, tmp_path, capsys, monkeypatch) -> None:
    """Both verbs take --extra-body and --header in their config; an unknown hosted price warns
    before the first call (the server is made to look hosted)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Say hi."}\n{"instruction": "Say bye."}\n')
    monkeypatch.setattr(cli_options, "_on_this_machine", lambda url: False)
    server.reset()
    rc = main(["generate", "--model", "openai:gpt-5.1", "--base-url", server.base_url, "--prompts-file",
               str(prompts), "-o", str(tmp_path / "a.jsonl"), "--run-dir", str(tmp_path / "gen"), "-q",
               "--max-tokens", "32", "--extra-body", '{"top_k": 5}', "--header", "X-Title=gen"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.index("no list price for the model 'gpt-5.1'") < err.index("calls made")
    bodies = [r["body"] for r in server.requests()]
    assert len(bodies) == 2 and all(b["top_k"] == 5 and b["max_completion_tokens"] == 32 for b in bodies)
    (tmp_path / "b.jsonl").write_text((tmp_path / "a.jsonl").read_text())
    server.reset()
    rc = main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--judge", "openai:judge",
               "--base-url", server.base_url, "--run-dir", str(tmp_path / "judge"), "-q", "--no-html",
               "--no-chart", "--extra-body", '{"top_k": 3}', "--header", "X-Title=judge"])
    assert rc == 0, capsys.readouterr().err
    seen = server.requests()
    assert seen and all(r["body"]["top_k"] == 3 for r in seen)
    assert all(r["header_sha256"]["x-title"] == sha("judge") for r in seen)


@pytest.mark.parametrize(("args", "needle"), [
    (("--extra-body", "{chat_template_kwargs: 1}"), "--extra-body: not valid JSON"),
    (("--extra-body", '["a"]'), "--extra-body: a JSON object is needed"),
    (("--extra-body", '{"model": "other"}'), "--extra-body may not set 'model'"),
    (("--header", "X-Title"), "--header X-Title: expected NAME=VALUE"),
    (("--header", "api-key=0123456789abcdef0123"), "--header api-key: this header carries a credential"),
])
def test_bad_values_are_one_line_errors(rows: Path, tmp_path: Path, args: tuple[str, ...],
                                        needle: str) -> None:
    """(f) Nothing is called: the options are refused before the run starts, exit 2, no traceback."""
    proc = run_cli("recycle", str(rows), "--oracle", "openai:qwen", "--base-url", LOCAL, "--run-dir",
                   str(tmp_path / "run"), "-q", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "0123456789abcdef0123" not in proc.stderr
    assert not (tmp_path / "run").exists()
