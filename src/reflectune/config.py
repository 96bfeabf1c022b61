"""Typed, defaulted configuration: one frozen pydantic model per stage, gathered in ``RunConfig``.

Unknown keys fail (``extra="forbid"``), so a typo in a YAML file or a Python call is an error, not
a silently ignored option. Defaults are written here once: the CLI and the verbs read them from
these models. ``validated`` is the one place a pydantic error becomes a one-line ``ConfigError``.
The resolved config and its hash go into ``run.json``. Secrets are not configuration: only the
*name* of the environment variable holding the key is stored.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from reflectune.errors import ConfigError
from reflectune.keys import canonical_json, content_key, redact_url

M = TypeVar("M", bound=BaseModel)


def config_error(exc: ValidationError) -> ConfigError:
    """pydantic's first complaint as a one-line ``ConfigError`` naming the option."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return ConfigError(f"unknown option {where}")
    return ConfigError(f"invalid option {where}: {first['msg']}")


def validated(model: type[M], /, **values: Any) -> M:
    """``model(**values)``, or a ``ConfigError`` naming the first bad option (with a did-you-mean)."""
    unknown = [k for k in values if k not in model.model_fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(model.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown option '{unknown[0]}'{hint}")
    try:
        return model(**values)
    except ValidationError as exc:
        raise config_error(exc) from None


def _given(updates: Mapping[str, Any]) -> dict[str, Any]:
    """``updates`` without the ``None`` values (keyword arguments left out), nested dicts included."""
    out: dict[str, Any] = {}
    for key, value in updates.items():
        if isinstance(value, Mapping) and not isinstance(value, BaseModel):
            value = _given(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def _deep_merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merged(model: type[M], config: M | None, updates: Mapping[str, Any]) -> M:
    """``config`` (or the defaults) with the keyword arguments a verb was given (not ``None``).

    ``updates`` may nest (``{"engine": {"rpm": 60}}``); each value left at ``None`` keeps the
    config's. This is how every verb takes both a Config and keyword arguments as a convenience.
    """
    if config is not None and not isinstance(config, model):
        raise ConfigError(f"expected a {model.__name__}, got {type(config).__name__}")
    given = _given(updates)
    if not given:
        return config if config is not None else validated(model)
    base = config.model_dump() if config is not None else {}
    return validated(model, **_deep_merge(base, given))


def with_options(model: type[M], config: M | None, options: Mapping[str, Any]) -> M:
    """A verb's config: ``config`` (or the defaults) with keyword ``options`` applied, validated."""
    if config is not None and not isinstance(config, model):
        raise ConfigError(f"expected a {model.__name__}, got {type(config).__name__}")
    if not options:
        return config if config is not None else validated(model)
    base = config.model_dump() if config is not None else {}
    return validated(model, **(base | dict(options)))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def config_hash(self) -> str:
        return content_key(self.model_dump(mode="json"))[:16]

    def canonical(self) -> str:
        return canonical_json(self.model_dump(mode="json"))


#: Body fields reflectune writes itself, which ``extra_body`` may not replace: why, and what to use.
_OWN_BODY_FIELDS: dict[str, str] = {
    "model": "the model is --oracle openai:MODEL", "messages": "the messages are the prompt templates' "
    "(--prompts)", "stream": "reflectune reads one JSON body per request", "n": "one answer per request "
    "is read (more would be paid for and dropped)", "max_tokens": "use --max-tokens",
    "max_completion_tokens": "use --max-tokens (--request-rules reasoning sends it as this field)",
    "temperature": "use --temperature", "top_p": "use --top-p", "seed": "use --seed",
    "stop": "the stop strings are reflectune's own",
}
#: Headers the HTTP client writes itself.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CREDENTIAL_HINTS = ("auth", "key", "token", "secret", "password", "cookie", "signature")
#: The prefix of a header value read from an environment variable.
ENV_PREFIX = "env:"


def extra_body_json(text: str) -> dict[str, Any]:
    """``--extra-body JSON``: a JSON object, or a one-line ``ConfigError`` naming the option."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        what = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "too deep"
        raise ConfigError(f"--extra-body: not valid JSON ({what}); give an object, e.g. "
                          "'{\"chat_template_kwargs\": {\"enable_thinking\": false}}'") from None
    if not isinstance(body, dict):
        raise ConfigError(f"--extra-body: a JSON object is needed, not {type(body).__name__} "
                          "(e.g. '{\"top_k\": 20}')")
    return body


def check_extra_body(body: Mapping[str, Any]) -> None:
    """Extra body fields may add to a request, never replace what reflectune writes itself."""
    for key in body:
        if key in _OWN_BODY_FIELDS:
            raise ConfigError(f"--extra-body may not set '{key}': {_OWN_BODY_FIELDS[key]}")


def credential_header(name: str) -> bool:
    """Whether a header's name says it carries a credential (``api-key``, ``Authorization``, ...)."""
    low = name.lower()
    return any(hint in low for hint in _CREDENTIAL_HINTS)


def check_header(name: str, value: str) -> None:
    """A header reflectune may send: a valid name it does not write itself, a value on one line, and
    a credential's value named by an environment variable, not written out (a command line is
    visible to every user of the machine, a pipeline file is shared)."""
    if not name or not set(name) <= _HEADER_CHARS:  # an RFC 9110 token
        raise ConfigError(f"--header {name!r}: not a valid header name")
    if name.lower() in _OWN_HEADERS:
        raise ConfigError(f"--header {name}: reflectune's HTTP client sets this header itself")
    if "\r" in value or "\n" in value:
        raise ConfigError(f"--header {name}: a header value must be on one line")
    if value.startswith(ENV_PREFIX):
        if not value[len(ENV_PREFIX):].strip():
            raise ConfigError(f"--header {name}=env:NAME: name the environment variable")
    elif credential_header(name):
        raise ConfigError(f"--header {name}: this header carries a credential; put it in an environment "
                          f"variable and name it: --header {name}=env:MY_VAR")


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
    allow_insecure_http: bool = Field(False, description="send a key over plain http to a host that is "
                                      "not loopback (left out of the JSON dump while False)")
    #: HTTP oracles: how to force the reflection format (local oracles always force; left out of the
    #: JSON dump while "off")
    forcing: Literal["off", "prefill", "grammar"] = "off"
    #: local backends: the prompt format: None = the model's recorded template (reflectune-model.json)
    #: or its chat template; vicuna|alpaca|wiz|chat to override (left out of the JSON dump while None)
    template: str | None = None
    #: HTTP oracles: the request body's rules (``oracles/request_rules.py``): auto = by the model's
    #: family (OpenAI reasoning models: max_completion_tokens, no sampling); chat | reasoning to
    #: override (left out of the JSON dump while "auto")
    request_rules: Literal["auto", "chat", "reasoning"] = "auto"
    #: HTTP oracles: fields merged into every request body (vLLM's ``chat_template_kwargs``, a
    #: provider's own options); part of the oracle's fingerprint (left out of the JSON dump while None)
    extra_body: dict[str, Any] | None = None
    #: HTTP oracles: headers sent with every request; a value ``env:NAME`` is read from that
    #: environment variable when the oracle is built. Never in the JSON dump, a hash or a repr (values
    #: may be credentials, and no header changes an answer); a credential header takes ``env:`` only.
    headers: dict[str, str] | None = Field(None, repr=False)

    @field_validator("extra_body", mode="before")
    @classmethod
    def _from_json(cls, value: Any) -> Any:
        # the command line's text as it came: parsed here, where no merge step can drop its nulls
        return extra_body_json(value) if isinstance(value, str) else value

    @field_validator("extra_body")
    @classmethod
    def _own_fields_stay(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        check_extra_body(value or {})
        return value or None

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            check_header(name, text)
        return value or None

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in STUDENT_TEMPLATES:
            raise ValueError(f"unknown template '{value}'{did_you_mean(value, STUDENT_TEMPLATES)}: "
                             f"choose {', '.join(STUDENT_TEMPLATES)}")
        return value

    @field_serializer("base_url", when_used="json")
    def _redacted_base_url(self, value: str | None) -> str | None:
        # run.json, config hashes and reports hold the URL without userinfo or query values; the
        # live attribute (and the python-mode dump that builds the oracle) keeps the real one
        return None if value is None else redact_url(value)

    @model_serializer(mode="wrap")
    def _stable_json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if info.mode_is_json() and isinstance(data, dict):  # configs from before a field hash as they did
            if not self.allow_insecure_http:
                data.pop("allow_insecure_http", None)
            if self.forcing == "off":
                data.pop("forcing", None)
            if self.template is None:
                data.pop("template", None)
            if self.request_rules == "auto":
                data.pop("request_rules", None)
            if self.extra_body is None:
                data.pop("extra_body", None)
            data.pop("headers", None)  # values may be credentials; names and all stay out of records
        return data


class SamplingConfig(_Frozen):
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0, description="default min(2048, context - prompt)")
    seed: int | None = None
    critique_tokens: int = Field(96, ge=8, description="forced formats: critique budget")


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
    grace_s: float = Field(30.0, ge=0, description="after a signal: seconds for calls on the wire to finish")


Phase = Literal["instruction", "response"]


#: The quality gates (``recycling/gates.py``), all on by default.
GATE_NAMES: tuple[str, ...] = ("refusal", "degenerate", "echo", "unchanged", "copy", "collapsed", "language")


class GatesConfig(_Frozen):
    """Which quality gates judge a parsed reflection, and their thresholds (calibrated in
    ``tests/data/gates_labelled.jsonl``; see docs/quality.md). Gates make no call: changing them and
    rerunning re-decides from the store."""

    enabled: tuple[str, ...] = GATE_NAMES
    #: echo: share of the rewrite's word trigrams (over all of it, or over its first 24 words) taken
    #: from the critique or the prompt's wording
    echo_overlap: float = Field(0.25, gt=0, le=1)
    #: echo: a critique counts as one (and the rewrite may not restate it) from this share of its own
    #: n-grams restating the prompt's criteria
    critique_overlap: float = Field(0.1, gt=0, le=1)
    #: unchanged: word-level similarity to the original at or above which it is a copy
    unchanged_similarity: float = Field(0.9, gt=0, le=1)
    #: unchanged: a shorter rewrite of at least this many words made of the original's phrases
    cut_copy_min_words: int = Field(20, ge=1)
    #: copy: share of its trigrams found in a text it must not copy (the answer, for an instruction)
    copy_overlap: float = Field(0.7, gt=0, le=1)
    #: degenerate: share of repeated word 4-grams (loops), checked from this many words on
    repetition: float = Field(0.5, gt=0, le=1)
    repetition_min_words: int = Field(24, ge=4)
    #: degenerate: runaway length
    max_words: int = Field(4000, ge=1)
    #: collapsed: an answer under this share of an original of at least ``collapsed_min_words``
    collapsed_ratio: float = Field(0.2, gt=0, le=1)
    collapsed_min_words: int = Field(40, ge=1)
    #: language: least share of the original's script among the rewrite's letters
    script_share: float = Field(0.5, gt=0, le=1)

    @field_validator("enabled")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in GATE_NAMES:
                close = difflib.get_close_matches(name, GATE_NAMES, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown gate '{name}'{hint}; gates: {', '.join(GATE_NAMES)}")
        return tuple(dict.fromkeys(value))


class VerifyConfig(_Frozen):
    """Judge-verified acceptance: a reflected answer is kept only if the judge prefers it to the
    answer it rewrote, in both orders, by the judge's own protocol (METHOD.md §7.1)."""

    judge: OracleConfig
    #: ``win``: kept only when it wins; ``win_or_tie``: also when the judge cannot tell them apart
    accept: Literal["win", "win_or_tie"] = "win"
    mode: Literal["score", "pair-v2"] = "score"
    max_tokens: int | None = 1024
    retry_unparsed: bool = True


#: The threshold ``--gates NAME=VALUE`` sets, per gate (refusal has none).
GATE_THRESHOLDS: dict[str, str] = {"echo": "echo_overlap", "unchanged": "unchanged_similarity",
                                   "copy": "copy_overlap", "degenerate": "repetition",
                                   "collapsed": "collapsed_ratio", "language": "script_share"}


def gates_option(text: str) -> dict[str, Any]:
    """``--gates`` -> GatesConfig values: ``all`` (default), ``none``, or a comma list of gate names,
    each optionally with its threshold (``echo=0.3,unchanged,copy``)."""
    text = text.strip()
    if text == "all":
        return {}
    if text == "none":
        return {"enabled": ()}
    values: dict[str, Any] = {}
    enabled: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in GATE_NAMES:
            close = difflib.get_close_matches(name, GATE_NAMES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"--gates: unknown gate {name!r}{hint}; gates: {', '.join(GATE_NAMES)}")
        enabled.append(name)
        if not sep:
            continue
        if name not in GATE_THRESHOLDS:
            raise ConfigError(f"--gates {part}: {name!r} has no threshold to set")
        try:
            values[GATE_THRESHOLDS[name]] = float(value)
        except ValueError:
            raise ConfigError(f"--gates {part}: the threshold must be a number") from None
    return {**values, "enabled": tuple(enabled)}


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
    gates: GatesConfig = GatesConfig()
    #: judge-verified acceptance (``--verify SPEC``); None: off
    verify: VerifyConfig | None = None

    @field_validator("phases")
    @classmethod
    def _phases_nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one phase is needed")
        return tuple(dict.fromkeys(value))


# -- scoring and selection ---------------------------------------------------------------------

#: The prompt templates a student sees (METHOD.md §5.1, §6); ``chat`` uses the tokenizer's own.
STUDENT_TEMPLATES: tuple[str, ...] = ("vicuna", "alpaca", "wiz", "chat")


class ScoreConfig(_Frozen):
    """How a student scores IFD and r-IFD (METHOD.md §5.1). Checked when the run starts."""

    student: str = "embedded"
    template: str = "vicuna"
    max_length: int = 2048
    batch_tokens: int = 8192
    dtype: str | None = None
    device: str | None = None
    backend: str = "hf"
    fields: dict[str, str] | None = None
    fmt: str | None = None
    chunk_size: int = 1024
    threads: int | None = None
    rifd: bool | None = None
    prompts_dir: str | None = None
    #: the split of a DatasetDict folder to score (None: the folder has one; left out of the JSON dump
    #: while None)
    split: str | None = None

    @model_serializer(mode="wrap")
    def _stable_json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if info.mode_is_json() and isinstance(data, dict) and self.split is None:
            data.pop("split", None)  # settings from before the field hash as they did
        return data


class SelectConfig(_Frozen):
    """Which candidate each sample keeps (METHOD.md §5.2), and the optional top-k cut. Selection reads
    finished scores; it never scores (``score`` does, or the pipeline runs it first)."""

    top_k: str | int | None = None
    below_one_filter: bool = True
    metric: str = "ppl_ratio"
    fields: dict[str, str] | None = None
    fmt: str | None = None
    output_format: str | None = None
    #: a selection that keeps no row is an error (exit 1) naming why; True writes the empty output
    #: and warns instead (left out of the JSON dump while False)
    allow_empty: bool = False

    @field_validator("top_k", mode="before")
    @classmethod
    def _top_k_says_why(cls, value: Any) -> Any:
        # refused where it is given (a flag, a pipeline file's line), not after recycle and score ran
        if isinstance(value, str | int | float):
            cls.read_top_k(value)
        return value

    @model_serializer(mode="wrap")
    def _stable_json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if info.mode_is_json() and isinstance(data, dict) and not self.allow_empty:
            data.pop("allow_empty", None)  # settings from before the field hash as they did
        return data

    @staticmethod
    def read_top_k(value: str | int | float) -> tuple[int | None, float | None]:
        """The top-k grammar: ``"5%"`` -> ``(None, 0.05)``, ``"1000"`` or ``1000`` -> ``(1000, None)``.

        A percentage (decimals allowed, above 0 and at most 100) is of the rows ranked and keeps
        floor(p % x rows); a count is a whole number of rows, at least 1.

        Raises:
            ConfigError: one line quoting the value and saying what is wrong with it.
        """
        raw = str(value).strip()

        def bad(reason: str) -> ConfigError:
            return ConfigError(f"invalid top-k '{raw}': {reason}; top-k is a percentage such as 5% or a "
                               "row count such as 1000")

        if isinstance(value, bool) or not raw:
            raise bad("not a number" if raw else "it is empty")
        if isinstance(value, float) and value.is_integer():
            raw = str(int(value))
        if raw.endswith("%"):
            body = raw[:-1].strip()
            try:
                pct = float(body)
            except ValueError:
                raise bad(f"'{body}' is not a number" if body else "no number before the %") from None
            if pct != pct or pct in (float("inf"), float("-inf")):
                raise bad("not a finite percentage")
            if pct > 100:
                raise bad("over 100%")
            if pct <= 0:
                raise bad("a percentage must be above 0%")
            return None, pct / 100
        try:
            count = int(raw)
        except ValueError:
            try:
                number = float(raw)
            except ValueError:
                raise bad("not a number") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise bad("not a finite number") from None
            if number.is_integer():
                count = int(number)
                if count >= 1:
                    raise bad(f"write the row count in digits ({count})") from None
            elif number < 0:
                raise bad("a row count must be at least 1") from None
            elif number < 1:
                raise bad(f"a bare fraction is ambiguous ({number * 100:g}% is that share of the "
                          "rows)") from None
            else:
                raise bad(f"not a whole row count ({raw}% would be a percentage)") from None
        if count < 1:
            raise bad("a row count must be at least 1")
        return count, None


class DecontaminateConfig(_Frozen):
    """Which training rows are dropped as test prompts (issue 20): word n-gram overlap after
    lm-evaluation-harness's normalisation, against the papers' test sets and any prompt files."""

    #: ``all`` (the five packaged test sets), their names, and prompt files, comma-separated or a list
    against: str | list[str] = "all"
    #: words per n-gram (lm-evaluation-harness: 13)
    ngram: int = Field(13, ge=1)
    #: n-grams a row must share with one test prompt to be dropped
    min_shared: int = Field(1, ge=1)
    #: a prompt shorter than ``ngram`` words matches an instruction holding it whole, contiguously,
    #: when it makes up at least this share of the instruction's words
    short_coverage: float = Field(0.5, gt=0, le=1)
    fields: dict[str, str] | None = None
    fmt: str | None = None
    output_format: str | None = None


# -- generation and judging --------------------------------------------------------------------

class GenerateConfig(_Frozen):
    """Everything that decides the answers (saved in ``run.json``). The papers' settings by default."""

    model: OracleConfig = OracleConfig()
    engine: EngineConfig = EngineConfig()
    max_tokens: int = Field(1024, gt=0, description="max new tokens per answer")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None


JudgeMode = Literal["score", "pair-v2"]


class JudgeConfig(_Frozen):
    """The judge and its protocol (METHOD.md §7.1): both orders, ``score`` or ``pair-v2``."""

    judge: OracleConfig = OracleConfig()
    engine: EngineConfig = EngineConfig()
    mode: str = "score"
    retry_unparsed: bool = False
    max_tokens: int | None = 1024
    prompts_dir: str | None = None


# -- training ----------------------------------------------------------------------------------

DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj"

# SFTConfig keys that TrainConfig owns: ``--sft`` may not set them behind the config's back.
OWNED_SFT_KEYS = {
    "num_train_epochs": "epochs", "learning_rate": "learning_rate", "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay", "lr_scheduler_type": "lr_scheduler",
    "max_length": "max_length", "per_device_train_batch_size": "per_device_batch",
    "gradient_accumulation_steps": "global_batch", "seed": "seed", "save_steps": "save_steps",
    "save_total_limit": "save_total_limit", "report_to": "report_to", "bf16": "dtype", "fp16": "dtype",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing", "output_dir": "output_dir (-o)",
    "completion_only_loss": "template (loss is always on the response)",
}


def did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainConfig(_Frozen):
    """The training recipe. Defaults are the papers' (METHOD.md §6); ``sft`` passes anything else to
    TRL's ``SFTConfig`` (JSON values, e.g. ``{"logging_steps": 1, "optim": "adamw_torch_fused"}``)."""

    epochs: float = 3.0
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_length: int = 2048
    global_batch: int = 128
    per_device_batch: int = 4
    template: str = "vicuna"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = DEFAULT_LORA_TARGETS
    merge: bool = True
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False
    #: ``-o`` may replace a trained model already in the folder
    overwrite: bool = False
    report_to: str = "none"
    world_size: int | None = None
    max_samples: int | None = None
    prompts_dir: str | None = None
    sft: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.template not in STUDENT_TEMPLATES:
            hint = did_you_mean(self.template, STUDENT_TEMPLATES)
            raise ConfigError(f"unknown template '{self.template}'{hint}: "
                              f"choose {', '.join(STUDENT_TEMPLATES)}")
        for name in ("global_batch", "per_device_batch", "max_length", "save_steps", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("epochs and learning_rate must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype must be auto, bfloat16, float16 or float32, got '{self.dtype}'")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"report_to must be none, tensorboard or wandb, got '{self.report_to}'")
        if self.world_size is not None and self.world_size < 1:
            raise ConfigError(f"world_size must be at least 1, got {self.world_size}")
        for key in self.sft:
            if key in OWNED_SFT_KEYS:
                raise ConfigError(f"--sft {key}=...: set `{OWNED_SFT_KEYS[key]}` instead "
                                  "(reflectune owns that setting)")
        return self

    def lora_target_modules(self) -> str | list[str]:
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not targets:
            raise ConfigError("lora_targets is empty: give module names (q_proj,v_proj) or all-linear")
        return targets

    def grad_accumulation(self, world_size: int) -> int:
        """global batch / (per-device batch x world size); it must divide exactly."""
        per_step = self.per_device_batch * world_size
        if self.global_batch % per_step:
            raise ConfigError(
                f"global batch {self.global_batch} is not divisible by per-device batch "
                f"{self.per_device_batch} x world size {world_size} = {per_step}: change --global-batch "
                "or --per-device-batch")
        return self.global_batch // per_step


# -- the whole method --------------------------------------------------------------------------

#: The stages of the method, in the order a pipeline runs them.
STAGES: tuple[str, ...] = ("recycle", "score", "select", "train", "generate", "judge")


class _Step(_Frozen):
    #: ``false``: the stage does not run; a later stage then reads its own ``input`` (or the data)
    enabled: bool = True
    #: what the stage reads instead of the previous stage's output (a path, or for generate a model)
    input: str | None = None

    def step_hash(self) -> str:
        """The hash of what decides this stage's outputs, besides its inputs' content."""
        return content_key(self.model_dump(mode="json", exclude={"enabled", "input"}))[:16]

    def _as(self, base: type[M]) -> M:
        """The stage's own Config: this section without the fields the pipeline added."""
        return base(**self.model_dump(exclude=set(type(self).model_fields) - set(base.model_fields)))


class RecycleStep(RecycleConfig, _Step):
    """recycle: reads the pipeline's ``data`` (or ``input``)."""

    def stage(self) -> RecycleConfig:
        return self._as(RecycleConfig)


class ScoreStep(ScoreConfig, _Step):
    """score: reads recycle's run folder; with recycle off, the ``data`` (Cherry LLM mode)."""

    def stage(self) -> ScoreConfig:
        return self._as(ScoreConfig)


class SelectStep(SelectConfig, _Step):
    """select: reads the scores of the folder score wrote."""

    def stage(self) -> SelectConfig:
        return self._as(SelectConfig)


class TrainStep(TrainConfig, _Step):
    """train: reads select's output (or ``input``) and fine-tunes ``base``."""

    #: the student to fine-tune; default: the one that scored (``score.student``)
    base: str | None = None

    def stage(self) -> TrainConfig:
        return self._as(TrainConfig)


class GenerateStep(GenerateConfig, _Step):
    """generate: the trained model (or the model spec in ``input``) answers the test sets; so does
    the ``baseline`` model, for the judge to compare against."""

    testset: str = "all"
    limit: int | None = Field(None, ge=1, description="the first N prompts of each test set")
    prompts_file: str | None = None
    #: the model whose answers the judge compares with: ``base`` (the student before training), a
    #: model spec, or None (then ``judge.baseline`` names an answers file)
    baseline: str | None = "base"

    def stage(self) -> GenerateConfig:
        return self._as(GenerateConfig)


class JudgeStep(JudgeConfig, _Step):
    """judge: the trained model's answers (or ``input``) against the baseline's (or ``baseline``)."""

    baseline: str | None = None

    def stage(self) -> JudgeConfig:
        return self._as(JudgeConfig)


class RunConfig(_Frozen):
    """One experiment: a section per stage (METHOD.md §4-§7). A pipeline file loads into this
    (``reflectune.pipeline.load_run_config``); ``reflectune.run(config)`` runs it."""

    recycle: RecycleStep = RecycleStep()
    score: ScoreStep = ScoreStep()
    select: SelectStep = SelectStep()
    train: TrainStep = TrainStep()
    generate: GenerateStep = GenerateStep()
    judge: JudgeStep = JudgeStep()
    #: the dataset the first stage reads
    data: str | None = None
    #: the pipeline folder (default ``runs/<pipeline file's name>``)
    run_dir: str | None = None
