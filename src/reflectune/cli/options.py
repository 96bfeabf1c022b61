"""Options that several commands share, declared once: the oracle's, the engine's, the run's.

Each is an ``Annotated`` type a command puts in its signature with its default taken from the
config models, so a flag's name, help and default live in one place and ``recycle``, ``generate``
and ``judge`` cannot drift apart. ``oracle_values`` and ``engine_values`` turn a command's
arguments into the nested updates that ``reflectune.config.merged`` applies.

``--extra-body JSON`` and ``--header NAME=VALUE`` arrive as text and are parsed here, so a bad value
is a one-line ``ConfigError`` naming the option. The verbs ``generate`` and ``judge`` take the HTTP
options (those and ``--request-rules``) in their config, not as keyword arguments: ``with_http``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from reflectune.config import ENV_PREFIX, EngineConfig, OracleConfig, extra_body_json, validated
from reflectune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

ORACLE = OracleConfig()
ENGINE = EngineConfig()

# -- the oracle (any model that answers chat requests) ------------------------------------------
BaseUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                                             "(vLLM, llama.cpp, Ollama).")]
ApiKeyEnv = Annotated[str, typer.Option(help="Environment variable holding the API key.")]
Timeout = Annotated[float, typer.Option(help="Seconds per request.")]
Context = Annotated[int | None, typer.Option(help="Model context window in tokens (default per backend).")]
Device = Annotated[str | None, typer.Option(help="Local models: cpu | cuda | mps (default: auto).")]
Dtype = Annotated[str | None, typer.Option(help="Local models: bfloat16 | float16 | float32.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Local models: requests per batch.")]
AllowInsecureHttp = Annotated[bool, typer.Option(help="Send an API key over plain http to a host that is not "
                                                 "this machine (refused by default).")]
Forcing = Annotated[str, typer.Option(
    "--forcing", help="HTTP oracles: force the reflection format: prefill (continue the assistant message, "
    "as vLLM, SGLang and llama.cpp's llama-server accept) | grammar (a GBNF/regex constraint: llama.cpp "
    "`grammar`, vLLM structured outputs) | off")]

RequestRules = Annotated[str, typer.Option(
    "--request-rules", help="HTTP oracles: how the request body is written: auto (by the model's name: "
    "OpenAI reasoning models, o1/o3/o4-mini/gpt-5, get max_completion_tokens and no temperature/top_p) | "
    "chat | reasoning (for a deployment with a name of its own)")]
ExtraBody = Annotated[str | None, typer.Option(
    "--extra-body", metavar="JSON", help="HTTP oracles: a JSON object merged into every request body, e.g. "
    "'{\"chat_template_kwargs\": {\"enable_thinking\": false}}' (vLLM). Part of the cache identity.")]
Header = Annotated[list[str] | None, typer.Option(
    "--header", metavar="NAME=VALUE", help="HTTP oracles: a header sent with every request (repeatable), "
    "e.g. X-Title=reflectune. A credential is read from a variable: "
    f"api-key={ENV_PREFIX}AZURE_OPENAI_API_KEY. Never written to the run folder.")]

WriteReport = Annotated[bool, typer.Option("--html/--no-html", help="Write RUN/report.html, the run's page "
                                          "(reflectune report), when done.")]

# -- the engine (limits, retries, cost) --------------------------------------------------------
Concurrency = Annotated[int | None, typer.Option(min=1, help="Requests in flight (default 64; local: 2x "
                                                 "batch).")]
Rpm = Annotated[float | None, typer.Option(help="Requests per minute limit.")]
Tpm = Annotated[float | None, typer.Option(help="Tokens per minute limit.")]
MaxAttempts = Annotated[int, typer.Option(min=1, help="Attempts per call for 429/5xx/timeouts.")]
MaxFailureRate = Annotated[float, typer.Option(help="Stop when more than this share of recent calls fail.")]
MaxCost = Annotated[float | None, typer.Option(help="Stop cleanly (resumably) at this many USD.")]
PriceIn = Annotated[float | None, typer.Option(help="USD per 1M prompt tokens (overrides the table).")]
PriceOut = Annotated[float | None, typer.Option(help="USD per 1M completion tokens.")]
RetryFailed = Annotated[bool, typer.Option(help="Make again the calls that failed before.")]

# -- the run ----------------------------------------------------------------------------------
RunDir = Annotated[Path | None, typer.Option(help="Run folder; rerunning the same command resumes it.")]
Prompts = Annotated[str | None, typer.Option(help="Folder of prompt template overrides (same file names).")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No live display or progress bar.")]
AsJson = Annotated[bool, typer.Option("--json", help="Also print the command's summary as one JSON object "
                                      "on stdout (the tables go to stderr), for scripts.")]

#: The options only HTTP oracles take; ``generate`` and ``judge`` pass them in the config (``with_http``).
_HTTP_KEYS = ("request_rules", "extra_body", "header")
_ORACLE_KEYS = ("base_url", "api_key_env", "timeout", "context", "device", "dtype", "batch_size",
                "allow_insecure_http", "forcing", *_HTTP_KEYS)
_ENGINE_KEYS = ("concurrency", "rpm", "tpm", "max_attempts", "max_failure_rate", "max_cost", "price_in",
                "price_out", "retry_failed")


def extra_body_option(text: str | None) -> dict[str, Any] | None:
    """``--extra-body``: a JSON object, or a one-line ``ConfigError`` naming the option."""
    return None if text is None else extra_body_json(text)


def header_option(items: list[str] | None) -> dict[str, str] | None:
    """``--header NAME=VALUE`` (repeatable) as a dict; a bad item is a one-line ``ConfigError``
    (its value never shown: it may be a credential)."""
    if not items:
        return None
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            shown = name or "(empty)"
            raise ConfigError(f"--header {shown}: expected NAME=VALUE, e.g. --header X-Title=reflectune")
        if name.lower() in {n.lower() for n in headers}:
            raise ConfigError(f"--header {name}: given twice")
        headers[name] = value.strip()
    return headers


def _http_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The HTTP options among a command's arguments, as ``OracleConfig`` fields. ``--extra-body``
    stays text, checked here and parsed by ``OracleConfig``: a merge of updates drops ``None``
    values and empty objects, which inside the body are the user's own."""
    out: dict[str, Any] = {}
    if "request_rules" in values:
        out["request_rules"] = values["request_rules"]
    if "extra_body" in values:
        extra_body_option(values["extra_body"])
        out["extra_body"] = values["extra_body"]
    if "header" in values:
        out["headers"] = header_option(values["header"])
    return out


def oracle_values(spec: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``OracleConfig`` updates among a command's arguments (those it declares)."""
    plain = {k: values[k] for k in _ORACLE_KEYS if k in values and k not in _HTTP_KEYS}
    return {"spec": spec} | plain | _http_values(values)


def with_http(model: type[M], field: str, values: Mapping[str, Any]) -> M | None:
    """A ``model`` config whose oracle section (``field``) holds the HTTP options given, for a verb
    that takes them in its config; None when none was given (the verb's defaults)."""
    given = {k: v for k, v in _http_values(values).items() if v is not None and v != "auto"}
    if not given:
        return None
    return validated(model, **{field: validated(OracleConfig, **given)})


def warn_unknown_price(console: Console, spec: str | None, values: Mapping[str, Any]) -> None:
    """Before the first call: a hosted model the price table does not know costs "unknown", which the
    summary would say only at the end (and ``--max-cost`` never reaches). Said once, on stderr; not
    for a server on this machine, or when ``--price-in``/``--price-out`` is given."""
    from reflectune.oracles.pricing import list_price, unknown_price_warning

    if values.get("price_in") is not None or values.get("price_out") is not None:
        return
    backend, _, model = (spec or "").partition(":")
    model = model.strip()
    if backend.strip().lower() != "openai" or not model or list_price(model) is not None:
        return
    url = values.get("base_url") or os.environ.get("OPENAI_BASE_URL") or ""
    if _on_this_machine(url):
        return
    console.print(unknown_price_warning(model, max_cost=values.get("max_cost") is not None),
                  style="yellow", markup=False, highlight=False)


def _on_this_machine(url: str) -> bool:
    """The HTTP oracle's own rule for a loopback endpoint (an unparseable URL is not one)."""
    from reflectune.oracles.openai_http import is_loopback_url

    return is_loopback_url(url.strip())


def engine_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``EngineConfig`` updates among a command's arguments (those it declares)."""
    return {k: values[k] for k in _ENGINE_KEYS if k in values}


def shared_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle and engine arguments a command declares, flat, for a verb's keyword arguments (the
    HTTP options go in the verb's config instead: ``with_http``)."""
    return {k: values[k] for k in (*_ORACLE_KEYS, *_ENGINE_KEYS) if k in values and k not in _HTTP_KEYS}
