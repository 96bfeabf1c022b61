"""A local model's identity is its content: every file that determines its outputs, hashed whole
(cached by path, size, mtime and inode), never the folder's name or the first MiB of its weights."""

from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from reflectune.models import source as model_source
from reflectune.models.resolve import resolve_model
from reflectune.models.source import CONVERTED_MARK, model_fingerprint

MIB = 1 << 20
WEIGHT_SIZE = 2 * MIB + 123
DIFF_AT = MIB + MIB // 2  # byte 1.5 MiB: past what the old fingerprint read


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REFLECTUNE_CACHE", str(cache))
    return cache


def _age(path: Path, seconds: float = 100.0) -> None:
    """Give a file an mtime in the past (a file modified in the last 2 s is never cached)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _weights(byte: int = 0) -> bytes:
    data = bytearray(WEIGHT_SIZE)
    data[DIFF_AT] = byte
    return bytes(data)


def _model(folder: Path, *, byte: int = 0, config: str = '{"model_type": "llama"}') -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(_weights(byte))
    (folder / "model-00002-of-00002.safetensors").write_bytes(_weights(0))
    for file in folder.iterdir():
        _age(file)
    return folder


def _fingerprint(folder: Path) -> str:
    return model_fingerprint(resolve_model(f"hf:{folder}"))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files whose content is hashed (read whole)."""
    seen: list[str] = []
    real = model_source.sha256_file

    def counting(path: Path) -> str:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(model_source, "sha256_file", counting)
    return seen


def test_two_folders_named_model_differing_after_the_first_mib_are_two_models(tmp_path: Path) -> None:
    first = _model(tmp_path / "a" / "model", byte=0)
    second = _model(tmp_path / "b" / "model", byte=7)
    assert (first / "model-00001-of-00002.safetensors").read_bytes()[:MIB] == (
        second / "model-00001-of-00002.safetensors").read_bytes()[:MIB]
    one, two = _fingerprint(first), _fingerprint(second)
    assert one != two
    assert one.startswith("hf:local:") and len(one.split(":")[-1]) == 16
    assert "model" not in one and str(tmp_path) not in one


def test_the_same_content_under_two_names_is_one_model(tmp_path: Path) -> None:
    assert _fingerprint(_model(tmp_path / "llama-merged")) == _fingerprint(_model(tmp_path / "x" / "model"))


def test_what_determines_outputs_enters_and_nothing_else(tmp_path: Path) -> None:
    folder = _model(tmp_path / "model")
    base = _fingerprint(folder)
    (folder / CONVERTED_MARK).write_text('{"seconds": 1.5}')
    (folder / "README.md").write_text("# my model")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.lock").write_text("")
    assert _fingerprint(folder) == base
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    with_template = _fingerprint(folder)
    assert with_template != base
    (folder / "config.json").write_text('{"model_type": "mistral"}')
    assert _fingerprint(folder) not in (base, with_template)


def test_a_touched_file_is_hashed_again_and_keeps_its_identity(tmp_path: Path, hashed: list[str]) -> None:
    folder = _model(tmp_path / "model")
    before = _fingerprint(folder)
    assert len(hashed) == 4
    hashed.clear()
    weight = folder / "model-00001-of-00002.safetensors"
    _age(weight, 50)  # a new mtime, the same bytes
    assert _fingerprint(folder) == before
    assert hashed == [weight.name]


def test_a_changed_byte_is_a_new_model(tmp_path: Path) -> None:
    folder = _model(tmp_path / "model")
    before = _fingerprint(folder)
    weight = folder / "model-00002-of-00002.safetensors"
    with weight.open("r+b") as fh:
        fh.seek(DIFF_AT)
        fh.write(b"\x01")
    _age(weight, 10)
    assert weight.stat().st_size == WEIGHT_SIZE
    assert _fingerprint(folder) != before


def test_a_file_modified_just_now_is_not_cached(tmp_path: Path, hashed: list[str]) -> None:
    """Two writes within one mtime tick keep size and mtime: a fresh file is hashed every time."""
    folder = _model(tmp_path / "model")
    (folder / "tokenizer.json").write_text('{"version": "2.0"}')
    first = _fingerprint(folder)
    (folder / "tokenizer.json").write_text('{"version": "3.0"}')  # same size, maybe same mtime
    assert _fingerprint(folder) != first
    assert hashed.count("tokenizer.json") == 2


def test_a_warm_fingerprint_reads_no_weight_bytes(tmp_path: Path, _own_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  hashed: list[str]) -> None:
    folder = _model(tmp_path / "model")
    cold = _fingerprint(folder)
    cache = json.loads((_own_cache / "file-hashes.json").read_text())
    assert {Path(key).name for key in cache} == {p.name for p in folder.iterdir()}
    hashed.clear()
    opened: list[str] = []
    real_open = builtins.open

    def watching(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: watching(str(self), *a, **k))
    assert _fingerprint(folder) == cold
    assert hashed == []
    assert not [name for name in opened if str(folder) in name]


def test_a_gguf_file_is_identified_by_its_content(tmp_path: Path) -> None:
    def gguf(folder: Path, byte: int) -> Path:
        folder.mkdir(parents=True)
        path = folder / "x.gguf"
        path.write_bytes(b"GGUF" + _weights(byte))
        _age(path)
        return path

    first, same, other = (gguf(tmp_path / name, byte) for name, byte in
                          (("a", 0), ("b", 0), ("c", 9)))
    fingerprints = [model_fingerprint(resolve_model(f"hf:{path}")) for path in (first, same, other)]
    assert fingerprints[0].startswith("hf:gguf:")
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    assert model_fingerprint(resolve_model(str(tmp_path / "a"))) == fingerprints[0]  # its folder


def test_the_embedded_model_keeps_its_fixed_identity(tmp_path: Path, hashed: list[str]) -> None:
    source = model_source.ModelSource("embedded", tmp_path)
    assert model_fingerprint(source) == (f"embedded:{model_source.EMBEDDED_NAME}:"
                                         f"{model_source.EMBEDDED_SHA256[:16]}")
    assert hashed == []
