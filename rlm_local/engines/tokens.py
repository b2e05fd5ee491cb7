"""Tokenizer and template rules every engine follows, written once (no torch or llama.cpp import here).

- BOS: a prompt gets the model's BOS token unless its text already starts with it (chat templates and
  some raw prompts write it themselves; a second BOS shifts every position the model learned).
- Chat without a template: a model file without a chat template (the embedded Gemma base model) gets
  Gemma's turn format when it is a Gemma model, else the plain role format of ``Engine.render``.
- Prompt format: an explicit ``prompt_format=`` beats the model card, which beats what the model file says
  (a chat template means an instruction model: "chat"; none: "completion").
- Threads on a CPU: single-stream decoding on one thread on small machines, batches on every core unless
  the machine is oversubscribed.
"""

from __future__ import annotations

import os

from ..errors import InputError

PROMPT_FORMATS = ("chat", "completion")


def adds_bos(text: str, bos_text: str | None) -> bool:
    """Whether tokenizing ``text`` should add the model's special tokens (BOS): not when the text already
    starts with the BOS token's text."""
    return not (bos_text and text.startswith(bos_text))


def is_gemma(*hints: str | None) -> bool:
    """Whether a model is a Gemma model, from any of its names (architecture, model type, path, card)."""
    return any(h and "gemma" in h.lower() for h in hints)


def gemma_turns(messages: list[dict[str, str]]) -> str:
    """Gemma's turn format, for tokenizers that ship without a chat template (the embedded GGUF has none).
    Gemma has no system role: the system text opens the first user turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts: list[str] = []
    for m in messages:
        if m["role"] == "system":
            continue
        content = m["content"]
        if system and not parts and m["role"] == "user":
            content = f"{system}\n\n{content}"
        role = "model" if m["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


def plain_turns(messages: list[dict[str, str]]) -> str:
    """The plain role format for a chat without a template on a model that is not Gemma."""
    return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"


def chat_without_template(messages: list[dict[str, str]], *model_hints: str | None) -> str:
    """The text of a chat for a model whose file carries no chat template (see the module rules)."""
    return gemma_turns(messages) if is_gemma(*model_hints) else plain_turns(messages)


def prompt_format(explicit: str | None, card_format: str | None, has_template: bool) -> str:
    """The engine's prompt format (see the module rules); an unknown explicit value is refused."""
    if explicit is not None and explicit not in PROMPT_FORMATS:
        raise InputError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {explicit!r}")
    return explicit or card_format or ("chat" if has_template else "completion")


def default_threads() -> int:
    """Threads for single-stream decoding: one on <= 2 cores. On a loaded 2-core box two threads collapsed
    llama.cpp's single-stream decode and made torch far less steady (scripts/results/bench_engines.json)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores, 8)


def default_batch_threads() -> int:
    """Threads for batches (prompt processing, decode steps of several sequences): every core, up to 8, unless
    the machine is oversubscribed when the engine starts (1-minute load average at least twice the cores),
    then one. This work is compute-bound, so a second core nearly halves it even with other processes
    running; but llama.cpp's threads wait for each other at every step, and on an oversubscribed box that
    made batches several times slower than one thread (scripts/results/profile_llamacpp.md). Pass
    ``batch_threads`` to choose."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    return 1 if load >= 2 * cores else max(1, min(cores, 8))
