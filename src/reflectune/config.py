"""Typed, defaulted configuration: one frozen model per stage, all inside ``RecycleConfig``.

Unknown keys fail (``extra="forbid"``), so a typo in a YAML file or a Python call is an error, not
a silently ignored option. The resolved config and its hash go into ``run.json``. Secrets are not
configuration: only the *name* of the environment variable holding the key is stored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reflectune.keys import canonical_json, content_key


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def config_hash(self) -> str:
        return content_key(self.model_dump(mode="json"))[:16]

    def canonical(self) -> str:
        return canonical_json(self.model_dump(mode="json"))


class OracleConfig(_Frozen):
    """Which model answers, and how it is reached."""

    spec: str = "embedded"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    context: int | None = Field(None, gt=0, description="context window; default per backend")
    device: str | None = None
    dtype: str | None = None
    batch_size: int = Field(8, ge=1, description="local backends: requests per forward batch")


class SamplingConfig(_Frozen):
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0, description="default min(2048, context - prompt)")
    seed: int | None = None
    critique_tokens: int = Field(96, ge=8, description="local backends: critique budget before forcing")


class EngineConfig(_Frozen):
    """Limits of the scheduler. ``None`` means unlimited."""

    concurrency: int | None = Field(None, ge=1, description="in-flight requests; default per backend")
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(60.0, ge=0)
    max_failure_rate: float = Field(0.2, ge=0, le=1)
    failure_window: int = Field(50, ge=1, description="calls seen before the failure rate can stop a run")
    max_cost: float | None = Field(None, ge=0, description="USD; stop cleanly when reached")
    retry_failed: bool = False
    price_in: float | None = Field(None, ge=0, description="USD per 1M prompt tokens")
    price_out: float | None = Field(None, ge=0, description="USD per 1M completion tokens")


Phase = Literal["instruction", "response"]


class RecycleConfig(_Frozen):
    oracle: OracleConfig = OracleConfig()
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    phases: tuple[Phase, ...] = ("instruction", "response")
    input_merge: Literal["oracle", "rule"] = "oracle"
    prompts_dir: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    output_format: str | None = None
    on_bad_record: Literal["error", "skip"] = "error"
    parse_retry: bool = True

    @field_validator("phases")
    @classmethod
    def _phases_nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one phase is needed")
        return tuple(dict.fromkeys(value))
