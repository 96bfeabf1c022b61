"""Property tests: whatever the bytes, the reader answers with samples or a ``DataError``, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reflectune.errors import DataError
from reflectune.io import DatasetWriter, RejectSink, read_samples
from reflectune.io.formats import SIGNATURE_BYTES, compression
from reflectune.types import Sample

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# rows that are often nearly valid, so the checks past parsing get exercised too
near_rows = st.fixed_dictionaries(
    {}, optional={"instruction": json_values | st.text(max_size=10), "input": json_values | st.text(),
                  "output": json_values | st.text(max_size=10), "id": json_values,
                  "conversations": json_values | st.lists(st.fixed_dictionaries(
                      {"from": st.sampled_from(["human", "gpt", "system", "user", "x"]),
                       "value": st.text(max_size=5) | json_values}), max_size=4)})
rows = st.lists(json_values | near_rows, max_size=6)
# fragments that make up plausible-looking but broken files
fragments = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b",", b":", b"\n", b" ", b'"instruction"',
                                      b'"output"', b'"x"', b"1", b"null", b"\xef\xbb\xbf", b"\xff", b"\xe9",
                                      b"\\u", b'"', b"\r\n"]) | st.binary(max_size=4), max_size=30)


def _read(path: Path) -> list[Sample]:
    try:
        return list(read_samples(path))
    except DataError:
        return []


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


@pytest.mark.parametrize("ext", ["json", "jsonl", "csv"])
@SETTINGS
@given(data=st.binary(max_size=200) | fragments.map(b"".join))
def test_any_bytes_read_or_data_error(folder, ext, data):
    path = folder / f"any.{ext}"
    path.write_bytes(data)
    _read(path)


@pytest.mark.parametrize("ext", ["json", "jsonl"])
@SETTINGS
@given(values=rows)
def test_any_json_rows_read_or_data_error(folder, ext, values):
    path = folder / f"rows.{ext}"
    if ext == "json":
        path.write_text(json.dumps(values), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
    for sample in _read(path):
        assert isinstance(sample.id, str) and isinstance(sample.output, str)
        assert sample.passthrough or sample.instruction.strip()


@SETTINGS
@given(data=st.lists(st.binary(max_size=30) | fragments.map(b"".join)
                     | json_values.map(lambda v: json.dumps(v).encode()), max_size=8))
def test_skip_mode_accounts_for_every_line(folder, data):
    """In JSON lines, every non-blank line ends up a sample or a reject; only "no rows" raises.

    A file whose first bytes are a whole archive header (gzip, zip, ...) is taken for that archive
    and read or refused as one (tests/test_io_edges.py), so those inputs are left out here.
    """
    path, rejects_path = folder / "skip.jsonl", folder / "rejects.jsonl"
    raw = b"\n".join(d.replace(b"\n", b" ") for d in data)
    assume(compression(raw[:SIGNATURE_BYTES]) is None)
    path.write_bytes(raw)
    rejects_path.unlink(missing_ok=True)
    lines = [ln for i, ln in enumerate(raw.split(b"\n"))
             if (ln.removeprefix(b"\xef\xbb\xbf") if i == 0 else ln).strip(b" \t\r\n")]
    with RejectSink(rejects_path) as rejects:
        try:
            samples = list(read_samples(path, on_bad_record="skip", rejects=rejects))
        except DataError as e:
            assert e.reason == "no rows" and not lines
            return
    assert len(samples) + rejects.count == len(lines)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
@settings(max_examples=15, deadline=None)
@given(triples=st.lists(st.tuples(texts.filter(str.strip), texts, texts), min_size=1, max_size=5))
def test_written_samples_read_back_equal(folder, fmt, triples):
    path = folder / f"round.{fmt}"
    with DatasetWriter(path, fmt) as out:
        for i, (instruction, input_, output) in enumerate(triples):
            out.write(Sample(id=f"s{i}", row=i + 1, instruction="x"), instruction, input_, output, {})
    back = list(read_samples(path, fmt=fmt))
    assert [(s.instruction, s.input, s.output) for s in back] == list(triples)


@SETTINGS
@given(values=st.lists(json_values, max_size=6), chunk=st.integers(1, 40),
       indent=st.sampled_from([None, 0, 2]))
def test_array_parse_is_independent_of_chunk_boundaries(folder, values, chunk, indent):
    """The streaming array parser gives exactly what ``json.loads`` gives, however the file is cut."""
    from reflectune.io import jsonsource

    path = folder / "chunks.json"
    path.write_text(json.dumps(values, ensure_ascii=False, indent=indent), encoding="utf-8")
    with patch.object(jsonsource, "_CHUNK", chunk):
        parsed = [r.value for r in jsonsource.iter_json_array(path)]
    assert parsed == values
