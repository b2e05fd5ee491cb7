"""Chat completions on an RLM model: where the context comes from, the response and usage shapes, and the
SSE stream (progress events in the ``rlm_event`` extension field, then the answer as content deltas).

The context reaches the REPL as the CLI gives it: one document (one file, one named context, one earlier
message) is a str; several are a list of str (also ``context_0``..). Earlier messages that are all the
user's are documents; a conversation with other roles is a list of "role: content" lines, as
``RLM.completion(messages)`` makes it. A run that does not end with an answer is an error, never an empty
200: cancelled is 409 ``run_cancelled``, stopped by a server shutdown 503 ``server_shutdown``, failed 500;
a stream says the same in an error event and still ends with ``[DONE]``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..documents import DocumentError, read_context
from ..loop.run import ContextError, check_context
from .runs import RunRecord
from .schemas import ApiError, ChatRequest, not_found

DELTA_CHARS = 48  # the answer is streamed in pieces of this many characters
EVENT_TEXT_CHARS = 500  # text fields of a streamed progress event
SHUTDOWN_POLL_SECONDS = 0.25  # how often a quiet stream looks whether the server is stopping


def context_and_question(
    req: ChatRequest, files: Any, owner: str, named: dict[str, Any], cap: int | None = None
) -> tuple[Any, str | None]:
    """The run's context and question from a chat request (no session); ``cap``: characters of the
    uploaded files together."""
    msgs = req.messages
    last_user = next((m for m in reversed(msgs) if m.role == "user"), None)
    opts = req.rlm
    if opts and (opts.file_ids or opts.context):
        if last_user is None:
            raise ApiError(
                400, "a request with rlm.file_ids or rlm.context needs a user message: the question", param="messages"
            )
        return documents(files, owner, opts.file_ids or [], opts.context, named, cap), last_user.text()
    if len(msgs) == 1:  # one message: it is the context, and the task is written in it
        return _checked(msgs[0].text()), None
    if msgs[-1].role != "user":
        raise ApiError(400, "the last message must be the user's question", param="messages")
    earlier = msgs[:-1]
    if all(m.role == "user" for m in earlier):  # documents given as messages
        return _checked(one_or_list([m.text() for m in earlier])), msgs[-1].text()
    transcript = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in earlier]
    return _checked(transcript), msgs[-1].text()


def one_or_list(texts: list[str]) -> str | list[str]:
    """One document is a str, as on the CLI; several are a list of str."""
    return texts[0] if len(texts) == 1 else texts


def documents(
    files: Any, owner: str, file_ids: list[str], name: str | None, named: dict[str, Any], cap: int | None = None
) -> str | list[str]:
    texts = []
    for fid in file_ids:
        text = files.text(owner, fid)
        if text is None:
            raise not_found("file", fid)
        texts.append(text)
    if cap is not None and (total := sum(len(t) for t in texts)) > cap:
        raise ApiError(413, f"the files are {total:,} characters together; the limit is {cap:,}", param="rlm.file_ids")
    if name is not None:
        if name not in named:
            raise not_found("context", name)
        try:
            texts.append(read_context(str(named[name])))
        except DocumentError as exc:
            raise ApiError(400, f"named context {name!r}: {exc}") from None
    return _checked(one_or_list(texts))


def _checked(context: Any) -> Any:
    try:
        return check_context(context)
    except ContextError as exc:
        raise ApiError(400, f"context: {exc}", param="messages") from None


def usage(record: RunRecord) -> dict[str, Any]:
    """OpenAI usage plus ``rlm``: root and sub tokens, cached tokens, sub-calls, depth, iterations."""
    r = record.result
    assert r is not None  # only finished runs are reported (callers check record.result)
    s = r.usage_summary
    total = s.total
    root, sub = s.by_role.get("root"), s.by_role.get("sub")
    return {
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": total.total_tokens,
        "prompt_tokens_details": {"cached_tokens": total.cached_tokens},
        "rlm": {
            "root": root.to_dict() if root else None,
            "sub": sub.to_dict() if sub else None,
            "cached_tokens": total.cached_tokens,
            "sub_calls": sub.calls if sub else 0,
            "memo_hits": s.memo_hits,
            "depth": max(s.by_depth, default=0),
            "iterations": r.iterations,
            "stopped_reason": r.stopped_reason,
            "seconds": round(r.execution_time, 3),
        },
    }


def run_info(record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.id,
        "session": record.session,
        "viewer": f"/runs/{record.id}",
        "stopped_reason": record.result.stopped_reason if record.result else None,
    }


def completion(record: RunRecord) -> dict[str, Any]:
    r = record.result
    assert r is not None  # only finished runs are reported (callers check record.result)
    finish = "stop" if r.stopped_reason == "final" else "length"
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": int(record.created),
        "model": record.model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": r.response},
            }
        ],
        "usage": usage(record),
        "rlm": run_info(record),
    }


def failed(record: RunRecord) -> ApiError | None:
    """Why a finished run has no answer to give, as the HTTP error to answer with (None: it has one)."""
    if record.stop_cause == "shutdown" and (record.result is None or record.result.stopped_reason == "cancelled"):
        return ApiError(
            503,
            f"the server is shutting down: run {record.id} was stopped; ask again when it is back",
            "server_error",
            code="server_shutdown",
            retry_after=5,
        )
    if record.result is None:
        return ApiError(500, f"the run failed: {record.error or record.status}", "server_error", code="run_error")
    if record.result.stopped_reason == "cancelled":
        return ApiError(409, f"run {record.id} was cancelled before it answered", "cancelled", code="run_cancelled")
    return None


def failed_by_shutdown(record: RunRecord) -> ApiError:
    record.stop_cause = record.stop_cause or "shutdown"
    return ApiError(
        503, f"the server is shutting down: run {record.id} was stopped", "server_error", code="server_shutdown"
    )


def progress(event: dict[str, Any]) -> dict[str, Any]:
    """A progress event as streamed: its kind, depth and timing, and short text fields (never the context)."""
    out = {}
    for k, v in event.items():
        if k in ("config", "metadata"):
            continue
        out[k] = v[:EVENT_TEXT_CHARS] if isinstance(v, str) else v
    return out


async def stream(record: RunRecord, include_usage: bool, cancel: Any, stopping: Any):
    """The SSE body: role chunk, one chunk per progress event, content deltas, finish, usage, [DONE].
    If the client goes away (the generator is closed or cancelled) the run is cancelled. ``stopping()``
    is true once the server shuts down: the run is stopped and the stream ends with an error and [DONE]
    at once, whether or not the run has ended yet."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def listener(event: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    base = {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion.chunk",
        "created": int(record.created),
        "model": record.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, str]:
        return {
            "data": json.dumps(
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            )
        }

    finished = False
    try:
        backlog = record.subscribe(listener)
        yield chunk({"role": "assistant", "content": ""}, rlm=run_info(record))
        for event in backlog:
            yield chunk({}, rlm_event=progress(event))
        while not record.done.is_set() or not queue.empty():
            try:
                event = await asyncio.wait_for(queue.get(), SHUTDOWN_POLL_SECONDS)
            except TimeoutError:
                if stopping() and not record.done.is_set():
                    cancel(record.id, "shutdown")
                    break
                continue
            if event is None:
                break
            yield chunk({}, rlm_event=progress(event))
        finished = True
        err = failed(record) if record.done.is_set() else failed_by_shutdown(record)
        if err is not None:
            yield {"data": json.dumps(err.body())}
            yield {"data": "[DONE]"}
            return
        assert record.result is not None  # failed() said the run answered
        answer = record.result.response
        for i in range(0, len(answer), DELTA_CHARS):
            yield chunk({"content": answer[i : i + DELTA_CHARS]})
        final = completion(record)
        yield chunk({}, final["choices"][0]["finish_reason"], rlm=run_info(record))
        if include_usage:
            yield {"data": json.dumps({**base, "choices": [], "usage": final["usage"]})}
        yield {"data": "[DONE]"}
    finally:
        record.unsubscribe(listener)
        if not finished and not record.done.is_set():
            cancel(record.id)
