"""An OpenAI-compatible HTTP server over any engine: `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
`/health`. Lets other tools (and other RLM implementations) use our engines and scheduler over the network.

Requests go through the scheduler when one is given, so concurrent HTTP clients are batched together with
every other caller of the same engine; without one, the engine is called directly (under a lock of the
server's own too, for engines written before engines had to be thread-safe). The OpenAI ``user`` field, when set, names the run for the
scheduler's fairness. Non-streaming only: ``stream=true`` is answered with 400.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from ..engines.base import Engine, Request, Result, SamplingParams, Usage

try:  # the server is an extra: `pip install 'rlm-local[server]'`
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    FastAPI = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

UNSUPPORTED = {
    "stream": "stream=true is not supported (non-streaming only)",
    "echo": "echo=true is not supported",
    "logprobs": "logprobs are not supported",
    "tools": "tools are not supported",
    "best_of": "best_of is not supported",
}


class BadRequest(ValueError):
    """The client sent something we cannot serve; the message is one line for the HTTP 400 body."""


class Dispatcher:
    """Where the server's requests go: the scheduler when there is one, else the engine under a lock.
    This is the hook the CLI uses to put the shared scheduler in front of the engine."""

    def __init__(self, engine: Engine, scheduler: Any = None) -> None:
        self.engine, self.scheduler = engine, scheduler
        self._lock = threading.Lock()

    def __call__(self, requests: list[Request], run_id: str) -> list[Result]:
        if self.scheduler is not None:
            return list(self.scheduler.submit(requests, run_id))
        with self._lock:
            return self.engine.generate(requests)


def create_app(engine: Engine, scheduler: Any = None, model_name: str | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (through ``scheduler.submit(requests, run_id)`` when given)."""
    if FastAPI is None:
        raise RuntimeError(f"the server needs `pip install 'rlm-local[server]'`: {_IMPORT_ERROR}")
    model_id = model_name or engine.model_name or "rlm-local"
    dispatch = Dispatcher(engine, scheduler)
    app = FastAPI(title="rlm-local", docs_url=None, redoc_url=None)
    app.state.dispatch = dispatch
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, "backend": engine.backend}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "rlm-local",
                    "max_model_len": engine.context_length or None,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> JSONResponse:
        try:
            body = await _json_body(http)
            prompts = _prompts(body.get("prompt"))
            sampling = _sampling(body, default_max_tokens=16)
            requests = [Request(prompt=p, sampling=sampling) for p in prompts]
        except (BadRequest, ValueError) as exc:
            return _error(400, str(exc))
        results = await asyncio.to_thread(dispatch, requests, _run_id(body, http))
        failed = [(i, r) for i, r in enumerate(results) if not r.ok]
        if failed:
            i, r = failed[0]
            where = f"prompt {i}: " if len(results) > 1 else ""
            return _error(500, f"{where}{r.error}", kind="engine_error")
        choices = [
            {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
            for i, r in enumerate(results)
        ]
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": choices,
                "usage": _usage(results),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest) -> JSONResponse:
        try:
            body = await _json_body(http)
            request = Request(
                messages=tuple(_messages(body.get("messages"))),
                sampling=_sampling(body, default_max_tokens=SamplingParams().max_tokens),
            )
        except (BadRequest, ValueError) as exc:
            return _error(400, str(exc))
        (result,) = await asyncio.to_thread(dispatch, [request], _run_id(body, http))
        if not result.ok:
            return _error(500, result.error or "engine error", kind="engine_error")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [choice],
                "usage": _usage([result]),
            }
        )

    return app


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    scheduler: Any = None,
    model_name: str | None = None,
    log_level: str = "info",
    use_scheduler: bool = True,
) -> None:
    """Run the server in the foreground until interrupted (the `rlm-local serve` command). Unless told
    otherwise, the engine's shared scheduler (scheduling/registry.py) is put in front of it, so concurrent clients
    are batched together, and with any RLM of this process using the same engine."""
    import uvicorn

    shared = scheduler is None and use_scheduler
    if shared:  # the engine's process-wide scheduler: RLMs in this process batch with HTTP clients
        from ..scheduling import registry as schedulers

        scheduler = schedulers.acquire(engine)
    try:
        uvicorn.run(create_app(engine, scheduler, model_name), host=host, port=port, log_level=log_level)
    finally:
        if shared:
            schedulers.release(engine)


# ---- request parsing (one-line errors) ---------------------------------------------------------------------
async def _json_body(http: HTTPRequest) -> dict[str, Any]:
    try:
        body = json.loads(await http.body())
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for name, message in UNSUPPORTED.items():
        if body.get(name) not in (None, False, 0, []):
            raise BadRequest(message)
    if body.get("n") not in (None, 1):
        raise BadRequest("only n=1 is supported")
    return body


def _prompts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise BadRequest("'prompt' must be a string or a non-empty list of strings (token ids are not supported)")


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be system, user or assistant, got {m.get('role')!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones, refuse the rest
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise BadRequest(f"messages[{i}].content: only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def _sampling(body: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    temperature = 1.0 if body.get("temperature") is None else body["temperature"]  # the OpenAI default
    top_p = 1.0 if body.get("top_p") is None else body["top_p"]
    stop = body.get("stop")
    seed = body.get("seed")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest(f"'temperature' must be a number from 0 to 2, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise BadRequest(f"'top_p' must be a number in (0, 1], got {top_p!r}")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of strings")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}")
    return SamplingParams(
        max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), stop=stops, seed=seed
    )


def _run_id(body: dict[str, Any], http: HTTPRequest) -> str:
    user = body.get("user")
    return str(user) if isinstance(user, str) and user else http.headers.get("x-rlm-run-id") or "http"


def _usage(results: list[Result]) -> dict[str, Any]:
    total = Usage()
    for r in results:
        total = total + r.usage
    return {
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": total.total_tokens,
        "prompt_tokens_details": {"cached_tokens": total.cached_tokens},
    }  # None -> null: unknown


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    message = " ".join(message.split())  # one line
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)
