"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions`` (an RLM run when ``model`` names
an RLM configuration, a plain model call on a bare model) and ``/v1/completions`` (bare models).

Bare models answer whole (no streaming) through their scheduler, or the engine under a lock; the OpenAI
``user`` field (else the ``X-RLM-Run-Id`` header) names the caller for the scheduler's fairness. An engine
that answers with an error is a 502 ``engine_error``; one that cannot serve at all (it raises, or its
scheduler refuses the request before the engine sees it) a 503 ``engine_unavailable``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from ...engines.base import Request as EngineRequest
from ...engines.base import SamplingParams
from ...errors import Error, InputError
from ...loop.typed import AnswerFormat
from .. import chat
from ..auth import Caller
from ..schemas import ApiError, ChatRequest, CompletionRequest
from .deps import caller, wait_for_run
from .deps import service as get_service
from .sessions import ask_session

router = APIRouter()
STREAM_SHUTDOWN_GRACE = 3.0  # seconds a stream gets to say goodbye when the server stops


@router.get("/v1/models")
async def models(who: Caller = Depends(caller), service: Any = Depends(get_service)) -> dict:
    # Bare models first: clients that take the first listed model (rlm-local's openai engine without a
    # model name) keep getting the plain model, as from the server before RLMs.
    data = [
        {
            "id": n,
            "object": "model",
            "created": 0,
            "owned_by": "rlm-local",
            "max_model_len": m.engine.context_length or None,
        }
        for n, m in service.bare.items()
    ]
    data += [
        {"id": n, "object": "model", "created": 0, "owned_by": "rlm-local", "rlm": c.public()}
        for n, c in service.config.rlms.items()
    ]
    return {"object": "list", "data": data}


def _bare_model(service: Any, model: str | None) -> Any:
    if service.bare_only:  # one plain model: every name is it, as llama.cpp's server answers
        return next(iter(service.bare.values()))
    if model in service.bare and model not in service.config.rlms:
        return service.bare[model]
    return None


def _unknown(service: Any, model: str | None) -> ApiError:
    known = sorted(service.config.rlms) + sorted(service.bare)
    if model is None:
        return ApiError(400, f"model: give a model name; known: {known}", param="model")
    return ApiError(404, f"the model {model!r} does not exist; known: {known}", param="model", code="model_not_found")


@router.post("/v1/chat/completions")
async def chat_completions(
    req: ChatRequest, request: Request, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> Any:
    config = service.config
    if (bare := _bare_model(service, req.model)) is not None:
        return await _bare_chat(service, bare, req, request)
    cfg = config.rlms.get(req.model)
    if cfg is None:
        raise _unknown(service, req.model)
    schema = _response_schema(req)
    if req.rlm and req.rlm.session:
        if schema is not None:
            raise ApiError(400, "response_format is not available in a session", param="response_format")
        record = ask_session(service, who, req.rlm.session, _last_user(req), req.model)
    else:
        context, question = chat.context_and_question(
            req, service.files, who.owner, config.contexts, config.max_extracted_chars
        )
        record = service.runs.start(who, cfg, context, question, response_format=schema)
    if req.stream:
        include = bool(req.stream_options and req.stream_options.include_usage)
        return EventSourceResponse(
            chat.stream(record, include, service.runs.cancel, service.runs.stopping.is_set),
            ping=10,
            headers={"x-rlm-run-id": record.id},
            shutdown_grace_period=STREAM_SHUTDOWN_GRACE,
        )
    await wait_for_run(service, record, request)
    if err := chat.failed(record):
        raise err
    return JSONResponse(chat.completion(record), headers={"x-rlm-run-id": record.id})


@router.post("/v1/completions")
async def completions(
    req: CompletionRequest, request: Request, who: Caller = Depends(caller), service: Any = Depends(get_service)
) -> JSONResponse:
    bare = _bare_model(service, req.model)
    if bare is None:
        if req.model in service.config.rlms:
            raise ApiError(
                404,
                f"the model {req.model!r} is an RLM: it answers /v1/chat/completions; bare models: "
                f"{sorted(service.bare)}",
                param="model",
                code="model_not_found",
            )
        raise _unknown(service, req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise ApiError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
    results = await _generate(service, bare, req, request, [{"prompt": p} for p in prompts], 16)
    return JSONResponse(
        {
            "id": f"cmpl-{time.time_ns():x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": bare.name,
            "usage": _usage(results),
            "choices": [
                {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                for i, r in enumerate(results)
            ],
        }
    )


async def _generate(
    service: Any,
    bare: Any,
    req: ChatRequest | CompletionRequest,
    request: Request,
    requests: list[dict[str, Any]],
    default_max_tokens: int,
) -> list[Any]:
    """Plain model calls on a bare model."""
    if req.stream:
        raise ApiError(400, "stream=true is not supported for bare models (they answer whole)", param="stream")
    max_tokens = req.max_tokens or getattr(req, "max_completion_tokens", None) or default_max_tokens
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
    )
    run_id = req.user or request.headers.get("x-rlm-run-id") or "http"
    started = time.monotonic()
    try:
        results = await asyncio.to_thread(
            bare.submit, [EngineRequest(sampling=sampling, **r) for r in requests], run_id
        )
    except (Error, RuntimeError) as exc:  # the engine or its scheduler cannot serve (closed, failed to start)
        message = " ".join(str(exc).split())
        raise ApiError(
            503, f"the model cannot serve now: {message}", "server_error", code="engine_unavailable"
        ) from None
    service.telemetry.model_call(bare.name, "bare", time.monotonic() - started)
    failed = [(i, r) for i, r in enumerate(results) if not r.ok]
    if failed:
        i, r = failed[0]
        where = f"prompt {i}: " if len(results) > 1 else ""
        if all(r.usage.calls == 0 for _, r in failed):  # refused before the engine (closed, queue full)
            raise ApiError(
                503,
                f"the model cannot serve now: {where}{r.error}",
                "server_error",
                code="engine_unavailable",
                retry_after=1,
            )
        raise ApiError(502, f"engine error: {where}{r.error}", "server_error", code="engine_error")
    return results


def _usage(results: list[Any]) -> dict[str, Any]:
    p, c = sum(r.usage.prompt_tokens for r in results), sum(r.usage.completion_tokens for r in results)
    cached = [r.usage.cached_tokens for r in results]
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": None if None in cached else sum(cached)},
    }


async def _bare_chat(service: Any, bare: Any, req: ChatRequest, request: Request) -> JSONResponse:
    if req.response_format is not None and req.response_format.type != "text":
        raise ApiError(
            400, "response_format is served for RLM models only; bare models answer with text", param="response_format"
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    (result,) = await _generate(service, bare, req, request, [{"messages": messages}], SamplingParams().max_tokens)
    return JSONResponse(
        {
            "id": f"chatcmpl-{time.time_ns():x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": bare.name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                    "message": {"role": "assistant", "content": result.text},
                }
            ],
            "usage": _usage([result]),
        }
    )


def _response_schema(req: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema an RLM's answer must match, checked here so a bad one is a 400."""
    if req.response_format is None:
        return None
    try:
        schema = req.response_format.schema_or_none()
        if schema is not None:
            AnswerFormat(schema)
    except (ValueError, InputError) as exc:
        raise ApiError(400, f"response_format: {exc}", param="response_format") from None
    return schema


def _last_user(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            return m.text()
    raise ApiError(400, "a session question needs a user message", param="messages")
