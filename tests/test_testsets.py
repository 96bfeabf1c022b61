"""The five test-set loaders on the real files, and the field-mapped prompts-file loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.errors import ConfigError, DataError
from reflectune.io.testsets import (
    TESTSET_ROWS,
    TESTSETS,
    EvalItem,
    load_prompts_file,
    load_testset,
    load_testsets,
    packaged_testset_path,
    parse_prompt_fields,
    resolve_testsets,
)
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(("name", "rows"), [("vicuna", 80), ("koala", 180), ("wizardlm", 218),
                                            ("sinstruct", 252), ("lima", 300)])
def test_each_set_has_the_papers_row_count(name: str, rows: int) -> None:
    items = load_testset(name)
    assert len(items) == rows == TESTSET_ROWS[name]
    assert all(isinstance(i, EvalItem) and i.dataset == name and i.instruction.strip() for i in items)
    assert len({i.id for i in items}) == rows  # ids are unique within a set


@pytest.mark.parametrize("name", TESTSETS)
def test_packaged_copies_are_the_shared_files_unchanged(name: str) -> None:
    shared = SHARED_DATA / "testsets" / f"{name}_test_set.jsonl"
    if not shared.is_file():
        pytest.skip(f"{shared} not available")
    assert packaged_testset_path(name).read_bytes() == shared.read_bytes()
    # and the loader reads the shared file the same way
    assert load_testset(name, path=shared) == load_testset(name)


def test_attribution_ships_with_the_copies() -> None:
    text = (packaged_testset_path("vicuna").parent / "ATTRIBUTION.md").read_text()
    assert "Cherry_LLM" in text and all(f"{n}_test_set.jsonl" in text for n in TESTSETS)


def test_every_set_reads_its_own_field_names() -> None:
    vicuna = load_testset("vicuna")[0]
    assert (vicuna.id, vicuna.category) == ("1", "generic")
    assert vicuna.instruction == "How can I improve my time management skills?"
    koala = load_testset("koala")[0]
    assert (koala.id, koala.category) == ("koala_0", None) and koala.instruction.startswith("Can you list")
    wizard = load_testset("wizardlm")[0]
    assert (wizard.id, wizard.category) == ("1", "Math") and "120 miles" in wizard.instruction
    lima = load_testset("lima")
    assert lima[0].id == "lima_0" and lima[299].id == "lima_299" and lima[0].category is None


def test_sinstruct_appends_the_first_instance_input_when_present() -> None:
    raw = [json.loads(line) for line in packaged_testset_path("sinstruct").read_text().splitlines()]
    items = load_testset("sinstruct")
    with_input = 0
    for record, item in zip(raw, items, strict=True):
        extra = record["instances"][0]["input"]
        if extra.strip():
            with_input += 1
            assert item.instruction == record["instruction"] + "\n\n" + extra
        else:
            assert item.instruction == record["instruction"]
        assert item.id == record["id"]
    assert with_input == 208


def test_lima_takes_the_first_turn_of_a_list(tmp_path: Path) -> None:
    path = tmp_path / "lima.jsonl"
    path.write_text(json.dumps({"conversations": ["first question", "an answer"]}) + "\n"
                    + json.dumps({"conversations": [{"from": "human", "value": "sharegpt turn"}]}) + "\n")
    assert [i.instruction for i in load_testset("lima", path=path)] == ["first question", "sharegpt turn"]


def test_a_row_without_the_instruction_field_names_file_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "koala.jsonl"
    path.write_text('{"id": "k0", "prompt": "fine"}\n{"id": "k1", "text": "wrong field"}\n')
    with pytest.raises(DataError) as err:
        load_testset("koala", path=path)
    assert err.value.row == 2 and "prompt" in str(err.value) and str(path) in str(err.value)


def test_resolve_and_limit_per_set() -> None:
    assert resolve_testsets("all") == list(TESTSETS)
    assert resolve_testsets("lima, Vicuna,lima") == ["lima", "vicuna"]
    assert resolve_testsets(["koala"]) == ["koala"]
    items = load_testsets("vicuna,koala", limit=3)
    assert [(i.dataset, i.id) for i in items] == [("vicuna", "1"), ("vicuna", "2"), ("vicuna", "3"),
                                                  ("koala", "koala_0"), ("koala", "koala_1"),
                                                  ("koala", "koala_2")]
    assert len(load_testsets("all")) == 1030
    with pytest.raises(ConfigError, match="unknown test set 'vicunna'"):
        resolve_testsets("vicunna")


def test_prompts_file_with_a_field_mapping(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "What is 2+2?", "qid": 7, "cat": "math", "ctx": ""},
            {"question": "Summarise:", "qid": "x", "ctx": "A long text."},
            {"question": "No id here"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_prompts_file(path, "instruction=question,id=qid,category=cat,input=ctx")
    assert items == [EvalItem("mine", "7", "What is 2+2?", "math"),
                     EvalItem("mine", "x", "Summarise:\n\nA long text.", None),
                     EvalItem("mine", "2", "No id here", None)]
    as_array = tmp_path / "mine.json"
    as_array.write_text(json.dumps(rows))
    assert load_prompts_file(as_array, {"instruction": "question", "id": "qid"}, dataset="d", limit=1) == [
        EvalItem("d", "7", "What is 2+2?", None)]


def test_prompts_file_errors_are_one_line_and_precise(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "ok"}\n{"question": ""}\n')
    with pytest.raises(DataError) as err:
        load_prompts_file(path, "instruction=question")
    assert err.value.row == 2 and err.value.field == "question"
    path.write_text('{"question": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="row 2"):
        load_prompts_file(path, "instruction=question")
    with pytest.raises(DataError, match="no such file"):
        load_prompts_file(tmp_path / "missing.jsonl")
    for bad in ("instruction", "prompt=question", "instruction=a,instruction=b"):
        with pytest.raises(ConfigError):
            parse_prompt_fields(bad)
    assert parse_prompt_fields("")["instruction"] == "instruction"
