"""The template travels with the model: ``train`` records the template it trained with in the saved
folder and writes it as the folder's chat template; ``generate`` (and ``judge``, through the same
local oracle) prompt the model that way by default, and ``--template`` overrides it under another
cache identity.

The embedded model is trained once per template (one optimizer step on two short rows, no
checkpoint), then ``generate`` answers one prompt with it: the prompt tokens it records must be the
token count of ``student_prompt(template, instruction)``, the exact prompt training used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reflectune.config import GenerateConfig, OracleConfig, validated
from reflectune.errors import ConfigError
from reflectune.models import load_tokenizer, resolve_model
from reflectune.oracles import make_oracle
from reflectune.oracles.local.prompt import prompt_text
from reflectune.prompts.chat_template import student_chat_template
from reflectune.prompts.student import STUDENT_TEMPLATES, student_prompt

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cherry5pct_3111.json"
TINY = {"max_length": 64, "global_batch": 2, "per_device_batch": 2, "max_samples": 2, "epochs": 1,
        "warmup_ratio": 0.0, "learning_rate": 1e-4, "gradient_checkpointing": False,
        "sft": {"save_strategy": "no", "logging_steps": 1}}
INSTRUCTION = "Name a primary colour."


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def base_tokenizer() -> object:
    return load_tokenizer(resolve_model("embedded"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained model folder per template (1 step each)."""
    from reflectune.training import train

    root = tmp_path_factory.mktemp("templates")
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    short = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 160][:2]
    data = root / "two.json"
    data.write_text(json.dumps(short), encoding="utf-8")
    models = {}
    for template in STUDENT_TEMPLATES:
        result = train(data, "embedded", run_dir=root / template, template=template, **TINY)
        assert result.template == template and result.model_dir == root / template / "model"
        models[template] = result.model_dir
    return models


# -- the chat template built from our template files (no training) ------------------------------------

@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wiz"])
def test_the_chat_template_renders_the_student_prompt_exactly(base_tokenizer: object, template: str) -> None:
    chat_template = student_chat_template(template)
    for text in (INSTRUCTION, 'Quote "this" {{ not jinja }} \\ and go on\n  - a list\n', "emoji 😀 ✓ é"):
        for generation in (True, False):
            rendered = base_tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                _user(text), chat_template=chat_template, tokenize=False, add_generation_prompt=generation)
            assert rendered == student_prompt(template, text)
    # a system message takes the instruction's place, before the content, for every template
    system = [{"role": "system", "content": "Be brief."}, *_user(INSTRUCTION)]
    expected = student_prompt(template, f"Be brief.\n\n{INSTRUCTION}")
    assert prompt_text(base_tokenizer, system, template) == expected
    # a history: each completed exchange is prompt + separator + answer + eos, then the last prompt
    history = [*_user("Q1"), {"role": "assistant", "content": "A1"}, *_user("Q2")]
    eos = base_tokenizer.eos_token  # type: ignore[attr-defined]
    sep = " " if template == "vicuna" else ""
    assert prompt_text(base_tokenizer, history, template) == (
        student_prompt(template, "Q1") + sep + "A1" + eos + student_prompt(template, "Q2"))


def test_the_default_and_chat_formats_use_the_tokenizers_chat_template(base_tokenizer: object) -> None:
    expected = student_prompt("chat", INSTRUCTION, tokenizer=base_tokenizer)
    assert prompt_text(base_tokenizer, _user(INSTRUCTION)) == expected
    assert prompt_text(base_tokenizer, _user(INSTRUCTION), "chat") == expected


def test_template_is_validated_refused_over_http_and_leaves_old_hashes_alone() -> None:
    assert "template" not in OracleConfig().model_dump(mode="json")  # existing config hashes unchanged
    assert OracleConfig(template="alpaca").model_dump(mode="json")["template"] == "alpaca"
    assert GenerateConfig().config_hash() == GenerateConfig(model=OracleConfig(template=None)).config_hash()
    with pytest.raises(ConfigError, match="did you mean 'vicuna'"):
        validated(OracleConfig, template="vicuma")
    with pytest.raises(ConfigError, match=r"applies to local models.*server applies its own chat template"):
        make_oracle(OracleConfig(spec="openai:gpt-4o-mini", template="vicuna"))
    plain, override = make_oracle(OracleConfig()), make_oracle(OracleConfig(template="alpaca"))
    assert plain.capabilities.template == "chat" and override.capabilities.template == "alpaca"
    assert override.fingerprint() == plain.fingerprint() + ":template=alpaca@1"


# -- trained folders ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("template", STUDENT_TEMPLATES)
def test_a_trained_folder_prompts_as_it_was_trained(trained: dict[str, Path], base_tokenizer: object,
                                                    template: str, tmp_path: Path) -> None:
    from reflectune.generation import generate

    folder = trained[template]
    record = json.loads((folder / "reflectune-model.json").read_text())
    assert record["template"] == template and record["base"] == "embedded"
    assert record["trained_in"] == str(folder.parent) and record["reflectune"]
    tokenizer = load_tokenizer(resolve_model(f"hf:{folder}"))
    messages = _user(INSTRUCTION)
    if template == "chat":  # the base's chat template, kept
        expected = student_prompt("chat", INSTRUCTION, tokenizer=base_tokenizer)
        assert tokenizer.chat_template == base_tokenizer.chat_template  # type: ignore[attr-defined]
    else:
        expected = student_prompt(template, INSTRUCTION)
    # any loader of the folder, with plain transformers, renders the training prompt
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert prompt_text(tokenizer, messages, record=record) == expected

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "1", "instruction": INSTRUCTION}) + "\n")
    summary = generate(model=f"hf:{folder}", prompts_file=prompts, max_tokens=2, run_dir=tmp_path / "gen")
    assert summary.rows == 1 and summary.failed == 0
    assert summary.stats["prompt_tokens"] == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
    section = json.loads((tmp_path / "gen" / "run.json").read_text())["generate"]
    assert section["template"] == template and "template" not in section["config"]["model"]


@pytest.mark.slow
def test_template_override_renders_another_prompt_under_another_cache_key(trained: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from reflectune.cli import app
    from reflectune.store.calls import Store

    folder, run = trained["vicuna"], tmp_path / "gen"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "1", "instruction": INSTRUCTION}) + "\n")
    tokenizer = load_tokenizer(resolve_model(f"hf:{folder}"))
    base = ["generate", "--model", f"hf:{folder}", "--prompts-file", str(prompts), "--max-tokens", "2",
            "--run-dir", str(run), "-q"]
    for template, made in ((None, 1), ("alpaca", 1), ("alpaca", 0), ("vicuna", 1)):
        args = [*base, *(["--template", template] if template else [])]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        section = json.loads((run / "run.json").read_text())["generate"]
        assert section["stats"]["sent"] == made and section["template"] == (template or "vicuna")
        if made:
            expected = student_prompt(template or "vicuna", INSTRUCTION)
            assert section["stats"]["prompt_tokens"] == len(tokenizer(expected, add_special_tokens=False)
                                                            ["input_ids"])
    # three renderings, three keys: the model's own, alpaca, and vicuna asked for by name
    with Store(run / "store.sqlite") as store:
        assert store.call_count() == 3
    with pytest.raises(ConfigError, match="trained with vicuna"):
        prompt_text(tokenizer, _user(INSTRUCTION), "chat",
                    record={"template": "vicuna", "base_chat_template": None})
