"""Pydantic request models of the service API (they are its OpenAPI schema) and OpenAI-shaped errors."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def _unicode(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``); they are not text and cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate cannot be encoded)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class RLMOptions(BaseModel):
    """The ``rlm`` extension of a chat request (``extra_body={"rlm": {...}}`` with the openai SDK): where the
    long context comes from. Without any, the conversation's earlier messages are the context (a single
    message is itself the context and the task)."""

    model_config = ConfigDict(extra="forbid")
    file_ids: list[str] | None = Field(default=None, max_length=1000, description="uploaded files: context_0..N")
    context: str | None = Field(default=None, max_length=200, description="a named context from the config")
    session: str | None = Field(default=None, max_length=64, description="ask in this session")


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI fields this server does not serve: refused with 400 rather than silently ignored (a client that
# sends tools expects tool calls back). A value in the second column asks for nothing and is accepted.
UNSUPPORTED: dict[str, tuple[tuple[object, ...], str]] = {
    "tools": ((None, []), "tools (function calling) are not supported: models here answer with text"),
    "functions": ((None, []), "functions (function calling) are not supported: models here answer with text"),
    "tool_choice": ((None, "none"), "tool_choice is not supported: models here answer with text, no tools"),
    "function_call": ((None, "none"), "function_call is not supported: models here answer with text"),
    "parallel_tool_calls": ((None, False), "parallel_tool_calls is not supported (no tools)"),
    "logprobs": ((None, False, 0), "logprobs are not supported"),
    "top_logprobs": ((None, 0), "top_logprobs are not supported"),
    "echo": ((None, False), "echo=true is not supported"),
    "best_of": ((None, 1), "best_of is not supported"),
    "response_format": ((None, {"type": "text"}), "response_format is not supported: answers are plain text"),
    "audio": ((None,), "audio output is not supported"),
    "modalities": ((None, ["text"]), "only text output is supported"),
}


class ModelCall(BaseModel):
    """What chat and text completion requests share: the model and OpenAI's sampling fields."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _served(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, (fine, why) in UNSUPPORTED.items():
                if name in cls.model_fields:  # a request type that serves it (ChatRequest.response_format)
                    continue
                if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in fine):
                    raise PydanticCustomError("unsupported", why, {"param": name})
        return data

    model: str | None = Field(default=None, max_length=200, description="required unless one bare model is served")
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = Field(default=None, max_length=200)


class JsonSchema(BaseModel):
    name: str = Field(max_length=64)
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: an RLM's final answer is validated against ``json_schema`` (the run
    retries within its budget; ``json_object`` means any JSON object)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    def schema_or_none(self) -> dict[str, Any] | None:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("response_format type json_schema needs json_schema: {name, schema}")
            return self.json_schema.json_schema
        return {"type": "object"} if self.type == "json_object" else None


class ChatRequest(ModelCall):
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    rlm: RLMOptions | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_reply_to_continue(self) -> ChatRequest:
        # A last assistant message is a prefix to continue; two in a row at the end is a malformed chat (as
        # llama.cpp's server says), not an engine failure.
        if len(self.messages) >= 2 and self.messages[-1].role == self.messages[-2].role == "assistant":
            raise PydanticCustomError(
                "chat_order", "a chat cannot end with two or more assistant messages", {"param": "messages"}
            )
        return self


class CompletionRequest(ModelCall):
    """``/v1/completions``, for the bare models (RLM models answer chat completions)."""

    prompt: Text | list[Text]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200)
    file_ids: list[str] = Field(default_factory=list, max_length=1000)
    contexts: list[Text] = Field(default_factory=list, max_length=1000, description="inline texts")
    context: str | None = Field(default=None, max_length=200, description="a named context from the config")


class ContextsAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_ids: list[str] = Field(default_factory=list, max_length=1000)
    contexts: list[Text] = Field(default_factory=list, max_length=1000)


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Text = Field(min_length=1, max_length=1_000_000)


class ApiError(Exception):
    """An HTTP error answer in OpenAI's shape (the app's handler writes it); ``retry_after`` in seconds
    becomes the Retry-After header (429, 503)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.status, str(self), self.kind, self.param, self.code)

    def response(self) -> JSONResponse:
        headers = {"retry-after": str(max(1, math.ceil(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    message = " ".join(str(message).split())[:1000]  # one line
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # echoed input may hold surrogates
    return {"error": {"message": message, "type": kind, "param": param, "code": code or str(status)}}


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    return ApiError(status, message, kind, param, code).response()


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"no such {what}: {ident[:100]!r}", code=f"{what.replace(' ', '_')}_not_found")
