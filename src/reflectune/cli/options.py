"""Options that several commands share, declared once: the oracle's, the engine's, the run's.

Each is an ``Annotated`` type a command puts in its signature with its default taken from the
config models, so a flag's name, help and default live in one place and ``recycle``, ``generate``
and ``judge`` cannot drift apart. ``oracle_values`` and ``engine_values`` turn a command's
arguments into the nested updates that ``reflectune.config.merged`` applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from reflectune.config import EngineConfig, OracleConfig

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
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No live display.")]

_ORACLE_KEYS = ("base_url", "api_key_env", "timeout", "context", "device", "dtype", "batch_size",
                "allow_insecure_http", "forcing")
_ENGINE_KEYS = ("concurrency", "rpm", "tpm", "max_attempts", "max_failure_rate", "max_cost", "price_in",
                "price_out", "retry_failed")


def oracle_values(spec: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``OracleConfig`` updates among a command's arguments (those it declares)."""
    return {"spec": spec} | {k: values[k] for k in _ORACLE_KEYS if k in values}


def engine_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``EngineConfig`` updates among a command's arguments (those it declares)."""
    return {k: values[k] for k in _ENGINE_KEYS if k in values}


def shared_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle and engine arguments a command declares, flat, for a verb's keyword arguments."""
    return {k: values[k] for k in (*_ORACLE_KEYS, *_ENGINE_KEYS) if k in values}
