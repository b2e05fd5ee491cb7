"""Moved: the template and tokenizer rules live in ``rlm_local.engines.tokens`` (kept for old imports)."""

from __future__ import annotations

from .tokens import gemma_turns

__all__ = ["gemma_turns"]
