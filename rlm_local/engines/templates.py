"""Prompt formats shared by engines whose model file carries no chat template (no torch import here)."""

from __future__ import annotations


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
