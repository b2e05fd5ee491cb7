"""Typed final answers: ``completion(..., response_format=...)`` with a pydantic model class or a JSON schema.

The root is told the shape (the schema, in its system prompt or task line). A final answer is parsed as JSON
(or a Python literal: ``FINAL({"a": 1})`` prints a dict's repr; a ```json fence is taken off) and validated;
when it fails, the root is told what failed and the run goes on, within its budget. The result carries
the parsed object (``result.parsed``: a model instance, or the JSON value for a schema) and the answer as
JSON text (``result.response``). A run whose
budget ends before a valid answer stops with ``stopped_reason="invalid_answer"``, ``result.invalid_answer``
the last answer given and ``result.error`` why it failed. JSON schemas are checked with ``jsonschema``
(``pip install 'rlm-local[typed]'``), pydantic models with pydantic.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ..errors import InputError

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)
MAX_SCHEMA_CHARS = 4000  # the schema shown to the root; a longer one is cut (the validation uses all of it)


class AnswerFormat:
    """One ``response_format``: ``instructions()`` for the root, ``check(text)`` for each final answer."""

    def __init__(self, spec: Any) -> None:
        self.model: Any = None
        if isinstance(spec, type) and hasattr(spec, "model_validate") and hasattr(spec, "model_json_schema"):
            self.model, self.schema = spec, spec.model_json_schema()
        elif isinstance(spec, dict):
            self.schema = _unwrap(spec)
            try:
                import jsonschema
            except ImportError:
                raise InputError(
                    "response_format with a JSON schema needs jsonschema: pip install 'rlm-local[typed]'"
                ) from None
            try:
                jsonschema.validators.validator_for(self.schema).check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise InputError(f"response_format: not a valid JSON schema: {exc.message}") from None
            self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        else:
            raise InputError(
                f"response_format must be a pydantic model class or a JSON schema dict, not {type(spec).__name__}"
            )

    def instructions(self) -> str:
        shown = json.dumps(self.schema, ensure_ascii=False)
        if len(shown) > MAX_SCHEMA_CHARS:
            shown = shown[:MAX_SCHEMA_CHARS] + " ..."
        return (
            "Your final answer must be JSON matching this JSON schema (give the JSON value itself as the "
            f"answer, e.g. FINAL(json.dumps(result))): {shown}"
        )

    def check(self, text: str) -> tuple[Any, str | None]:
        """(the parsed answer, None) when ``text`` fits, else (None, what is wrong, in one paragraph)."""
        value, parse_error = _parse(text)
        if self.model is not None:
            try:
                if parse_error is None:
                    return self.model.model_validate(value), None
                return self.model.model_validate_json(text), None
            except Exception as exc:  # pydantic.ValidationError; pydantic is the caller's import, not ours
                return None, _pydantic_errors(exc) if parse_error is None else parse_error
        candidates = [value] if parse_error is None else []
        candidates.append(text.strip())  # a schema of type string takes the bare text
        errors = []
        for candidate in candidates:
            found = sorted(self._validator.iter_errors(candidate), key=lambda e: list(e.path))
            if not found:
                return candidate, None
            errors.append("; ".join(f"{_where(e.path)}: {e.message}" for e in found[:5]))
        return None, parse_error or errors[0]

    def dump(self, parsed: Any) -> str:
        """The answer as JSON text (a model's ``FINAL({...})`` gives a Python repr; the result carries JSON)."""
        if self.model is not None:
            return str(parsed.model_dump_json())
        return json.dumps(parsed, ensure_ascii=False)

    def retry_note(self, error: str) -> str:
        return (
            f"Your final answer does not match the required format: {error}. Nothing was returned to the user. "
            "Fix it and give the final answer again as JSON matching the schema."
        )


def _unwrap(spec: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` or a bare schema."""
    if spec.get("type") == "json_schema" and isinstance(spec.get("json_schema"), dict):
        spec = spec["json_schema"]
    inner = spec.get("schema")
    return inner if isinstance(inner, dict) and "name" in spec else spec


def _parse(text: str) -> tuple[Any, str | None]:
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1).strip()
    try:
        return json.loads(body), None
    except ValueError:
        pass
    try:
        return ast.literal_eval(body), None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, f"the answer is not JSON ({body[:80]!r}...)" if len(
            body
        ) > 80 else f"the answer is not JSON ({body!r})"


def _where(path: Any) -> str:
    return "$" + "".join(f"[{p!r}]" for p in path)


def _pydantic_errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    rows = [f"{'.'.join(str(p) for p in e.get('loc', ())) or '$'}: {e.get('msg')}" for e in errors()[:5]]
    return "; ".join(rows)
