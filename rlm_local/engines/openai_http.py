"""Any OpenAI-compatible server as an engine: `vllm serve`, SGLang, llama.cpp, `transformers serve`, our own.

One pooled httpx client is shared by a bounded pool of worker threads; each request is sent on its own
(the server batches concurrent requests itself) with timeouts, retries with exponential backoff on
429/5xx/connection errors, and a hard wall-clock deadline so nothing can hang. Every failure is a
``Result.failed("openai: ...")`` for that request only.

Scaling out: put a real router (``vllm-router --policy consistent_hash``, or the SGLang router with
``--policy manual``) in front of the servers and give its one URL as ``base_url``. Every request of an RLM
run carries the run's id (``Request.session``: the root run's id, shared by its child runs) in the
``session_header`` HTTP header, which those routers hash to pick a worker: one run stays on one server,
where its growing root conversation and its sub-calls' shared chunks are already in the prefix cache,
and different runs spread over the servers. The default header is vllm-router's ``X-Session-ID``; the
SGLang router's is ``X-SMG-Routing-Key``; ``session_header=None`` sends none.

Without a router, several base URLs are the fallback: a request goes to the server chosen by rendezvous
hashing of its session (the run id) when it has one, else of the first ``affinity_chars`` characters of
its rendered prompt. Hashing the prompt alone is kept for callers without runs, but it cannot spread RLM
runs: every run's root turns open with the same system prompt, so they would all hash to one server. A
server that is full (``max_concurrency`` requests in flight) spills to the next one in the same hash
order, and a server that refuses connections is skipped on retry. The router does this better (health
checks, circuit breakers, workers added at run time), so use one for more than a couple of servers.

A deadline from the scheduler (a run's time budget) bounds each request's whole HTTP exchange: at the
deadline the connection is dropped (vLLM then aborts the generation) and the request fails with its
prompt counted, instead of holding the scheduler until the server answers.

Timeouts are sized to the request unless ``timeout`` is given: a request under a deadline may take until
that deadline (the run's budget is the bound), one without takes ``AUTO_TIMEOUT_BASE`` seconds plus
``max_tokens / MIN_DECODE_RATE``. A fixed 300 s was shorter than one 2,048-token root reply of a 1.5B model
on a CPU llama-server (measured: the reply timed out, and was then sent again only to time out again).
A request that timed out is never retried (a greedy generation would only repeat the same wait).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit

from ..models import find_card
from .base import Engine, EngineError, FinishReason, Request, Result, Usage
from .tokens import prompt_format as resolve_format

DEFAULT_SESSION_HEADER = "X-Session-ID"  # vllm-router's session-affinity header (consistent_hash policy)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
AUTO_TIMEOUT_BASE = 120.0  # seconds for connecting, queueing and prompt processing
MIN_DECODE_RATE = 2.0  # tokens/s: a slow CPU server decoding a 1-2B model (3-6 tokens/s measured here)
DISCOVERY_TIMEOUT = 30.0  # GET /models
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a reply bigger than this is garbage, not a completion


class DeadlinePassed(Exception):
    """The caller's deadline passed during a request: the connection was dropped, nothing to retry."""


class RequestFailed(Exception):
    """One attempt failed. ``retry`` says whether another attempt may help; ``wait`` is the server's hint."""

    def __init__(self, message: str, retry: bool, wait: float | None = None, refused: bool = False) -> None:
        super().__init__(message)
        self.retry, self.wait, self.refused = retry, wait, refused


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1/`` both mean ``http://host:8000/v1``."""
    if not isinstance(url, str) or not url.strip():
        raise EngineError(f"openai backend: base_url must be a non-empty string, got {url!r}")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"openai backend: base_url must look like http://host:port/v1, got {url!r}")
    return url if parts.path else url + "/v1"


def rendezvous_order(key: str, servers: list[str]) -> list[str]:
    """Servers ordered by highest-random-weight hashing: stable per key, and adding or removing one server
    only moves the keys that hashed to it."""

    def weight(server: str) -> bytes:
        return hashlib.blake2b(f"{server}\0{key}".encode(), digest_size=8).digest()

    return sorted(servers, key=weight, reverse=True)


class OpenAIEngine(Engine):
    backend = "openai"
    supports_deadline = True

    def __init__(
        self,
        model_name: str | None = None,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 3,
        endpoint: Literal["chat", "completions"] | None = None,
        max_concurrency: int = 16,
        prompt_format: Literal["chat", "completion"] | None = None,
        context_length: int | None = None,
        affinity_chars: int = 1024,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        connect_timeout: float = 10.0,
        session_header: str | None = DEFAULT_SESSION_HEADER,
    ) -> None:
        import httpx  # a core dependency, but keep `import rlm_local.engines` light

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise EngineError("openai backend: base_url is an empty list")
        self.servers = list(dict.fromkeys(normalize_base_url(u) for u in urls))
        if endpoint not in (None, "chat", "completions"):
            raise EngineError(f"openai backend: endpoint must be 'chat' or 'completions', got {endpoint!r}")
        if session_header is not None and not _HEADER_NAME.fullmatch(str(session_header)):
            raise EngineError(
                f"openai backend: session_header must be an HTTP header name such as "
                f"{DEFAULT_SESSION_HEADER!r} (or None to send none), got {session_header!r}"
            )
        self.session_header = session_header
        if (timeout is not None and timeout <= 0) or max_retries < 0 or max_concurrency < 1:
            raise EngineError("openai backend: need timeout > 0, max_retries >= 0 and max_concurrency >= 1")
        self.endpoint = endpoint
        self.model_name = model_name or ""  # empty: ask the first server's /models on first use
        self.timeout = None if timeout is None else float(timeout)  # None: sized per request
        self.max_retries = int(max_retries)
        self.max_concurrency, self.affinity_chars = int(max_concurrency), int(affinity_chars)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._connect_timeout = min(connect_timeout, self.timeout or connect_timeout)
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or "EMPTY"
        workers = self.max_concurrency * len(self.servers)  # max_concurrency is per server
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(self.timeout or DISCOVERY_TIMEOUT, connect=self._connect_timeout),
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        )
        self._httpx = httpx
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlm-openai")
        self._lock = threading.Lock()  # guards the in-flight counts
        self._model_lock = threading.Lock()  # one model discovery at a time, without blocking routing
        self._inflight = {s: 0 for s in self.servers}
        self._closed = False
        if not self.model_name:
            try:
                self._model()
            except RequestFailed:
                pass  # the server is not up yet: discover on the first request
        # A registered model (say the embedded base model behind `rlm-local serve`) brings its prompt format
        # and context length, so the RLM prompts it the way it would locally; explicit arguments win.
        card = find_card(self.model_name) if self.model_name else None
        # A remote server applies its own template: "chat" unless the card or the caller says otherwise.
        self.prompt_format = resolve_format(prompt_format, card.prompt_format if card else None, True)  # type: ignore[assignment]
        self.context_length = context_length if context_length is not None else (card.context_length if card else 0)

    def __repr__(self) -> str:  # never show the api key
        return f"OpenAIEngine(model_name={self.model_name!r}, servers={self.servers!r})"

    # ---- public API ---------------------------------------------------------------------------------------
    def generate(self, requests: list[Request], deadline: float | None = None) -> list[Result]:
        if self._closed:
            return [Result.failed("openai: engine is closed") for _ in requests]
        futures = [self._pool.submit(self._run_one, r, deadline) for r in requests]
        results: list[Result] = []
        for f in futures:  # each job catches its own errors and has a deadline, so result() returns
            try:
                results.append(f.result())
            except Exception as exc:  # e.g. the pool was shut down under us
                results.append(Result.failed(f"openai: {type(exc).__name__}: {exc}"))
        return results

    def server_for(self, request: Request) -> str:
        """The server a request would go to now (affinity first, spill when that server is full)."""
        return self._pick(self._affinity_key(request), exclude=set(), reserve=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ---- one request ----------------------------------------------------------------------------------------
    def _run_one(self, request: Request, deadline: float | None = None) -> Result:
        started = time.perf_counter()
        try:
            body, path = self._payload(request)
        except RequestFailed as exc:
            return Result.failed(f"openai: {exc}")
        key = self._affinity_key(request)
        headers = self._session_headers(request)
        refused: set[str] = set()
        attempt = 0
        while True:
            server = self._pick(key, refused, reserve=True)
            try:
                data = self._send("POST", server, path, body, deadline, self._limit(body, deadline), headers)
                return self._parse(data, request, path, server, time.perf_counter() - started)
            except DeadlinePassed as exc:  # the work the server did is counted: it was asked for
                usage = self._usage(None, request, "", time.perf_counter() - started)
                return Result(text="", finish_reason="error", usage=usage, error=f"openai: {exc}")
            except RequestFailed as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    return Result.failed(f"openai: {exc} (deadline passed, not retried)")
                if not exc.retry or attempt >= self.max_retries or self._closed:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    return Result.failed(f"openai: {exc}{tries}")
                if exc.refused and len(refused) + 1 < len(self.servers):
                    refused.add(server)  # try another server; no need to wait on this one
                else:
                    delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                    time.sleep(min(self.max_backoff, exc.wait) if exc.wait is not None else delay)
                attempt += 1
            finally:
                with self._lock:
                    self._inflight[server] -= 1

    def _affinity_key(self, request: Request) -> str:
        """Client-side affinity (several base URLs, no router): the run when known, else the prompt's start."""
        if request.session is not None:
            return "session\0" + request.session
        return self.rendered(request)[: self.affinity_chars]

    def _session_headers(self, request: Request) -> dict[str, str] | None:
        """The router's affinity header for this request's run, or None. A run id that is not a printable
        ASCII header value (``RLM.completion(run_id=...)`` takes any string) is sent as a stable digest."""
        if self.session_header is None or not request.session:
            return None
        value = request.session
        if not (value.isascii() and value.isprintable()) or len(value) > 256:
            value = hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
        return {self.session_header: value}

    def _pick(self, key: str, exclude: set[str], reserve: bool) -> str:
        order = [s for s in rendezvous_order(key, self.servers) if s not in exclude] or self.servers
        with self._lock:
            free = [s for s in order if self._inflight[s] < self.max_concurrency]
            server = free[0] if free else min(order, key=lambda s: self._inflight[s])
            if reserve:
                self._inflight[server] += 1
        return server

    def _payload(self, request: Request) -> tuple[dict[str, Any], str]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self._model(),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        endpoint = self.endpoint or ("chat" if request.messages is not None else "completions")
        if endpoint == "chat":
            messages = (
                list(request.messages)
                if request.messages is not None
                else [{"role": "user", "content": request.prompt or ""}]
            )
            body["messages"] = messages
            return body, "/chat/completions"
        body["prompt"] = self.rendered(request)
        return body, "/completions"

    def _model(self) -> str:
        if self.model_name:
            return self.model_name
        with self._model_lock:  # discover once, even when many workers start together
            if not self.model_name:
                data = self._get(self.servers[0], "/models")
                try:
                    self.model_name = str(data["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise RequestFailed(
                        f"{self.servers[0]}/models lists no model; set model_name", retry=False
                    ) from None
        return self.model_name

    # ---- HTTP ---------------------------------------------------------------------------------------------------
    def _limit(self, body: dict[str, Any], deadline: float | None) -> float:
        """Seconds one attempt may take: the fixed ``timeout``; else until the caller's deadline; else
        sized to ``max_tokens`` at the slowest decode rate we expect."""
        if self.timeout is not None:
            return self.timeout
        if deadline is not None:
            return max(0.001, deadline - time.monotonic())
        return AUTO_TIMEOUT_BASE + int(body.get("max_tokens") or 0) / MIN_DECODE_RATE

    def _get(self, server: str, path: str) -> Any:
        return self._send("GET", server, path, None, None, self.timeout or DISCOVERY_TIMEOUT)

    def _send(
        self,
        method: str,
        server: str,
        path: str,
        body: dict[str, Any] | None,
        stop_at: float | None,
        limit: float,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One HTTP exchange of at most ``limit`` seconds. ``stop_at`` (time.monotonic()) is the caller's
        deadline: the exchange is dropped there and DeadlinePassed raised."""
        httpx = self._httpx
        url = server + path
        deadline = time.monotonic() + limit  # httpx's timeouts are per phase; this bounds the whole reply
        timeout = limit
        if stop_at is not None:
            timeout = stop_at - time.monotonic()
            if timeout <= 0:
                raise DeadlinePassed(f"{url}: deadline passed before the request was sent")
            deadline = min(deadline, stop_at)
        try:
            with self._client.stream(
                method,
                url,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(min(timeout, limit), connect=min(timeout, self._connect_timeout)),
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise RequestFailed(f"{url} sent more than {MAX_RESPONSE_BYTES} bytes", retry=False)
                    if time.monotonic() > deadline:
                        if stop_at is not None and deadline >= stop_at:
                            raise DeadlinePassed(f"{url}: stopped at the deadline")
                        raise RequestFailed(f"{url} did not finish its reply within {limit:g}s", retry=False)
                raw = b"".join(chunks)
                status = resp.status_code
                retry_after = _retry_after(resp.headers.get("retry-after"))
        except httpx.ConnectTimeout:
            raise RequestFailed(f"could not connect to {server} within the timeout", retry=True, refused=True) from None
        except httpx.ConnectError as exc:
            raise RequestFailed(
                f"cannot connect to {server} (is the server running?): {exc}", retry=True, refused=True
            ) from None
        except httpx.TimeoutException:
            if stop_at is not None and time.monotonic() >= stop_at - 0.05:
                raise DeadlinePassed(f"{url}: stopped at the deadline (connection dropped)") from None
            # A generation that timed out would time out again; retrying only doubles the wait.
            raise RequestFailed(f"{url} timed out after {limit:g}s", retry=False) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise RequestFailed(f"connection to {server} broke: {type(exc).__name__}: {exc}", retry=True) from None
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{url}: {type(exc).__name__}: {exc}", retry=False) from None
        if status >= 400:
            raise RequestFailed(
                f"{url} returned HTTP {status}: {_error_message(raw)}",
                retry=status in RETRY_STATUS or status >= 500,
                wait=retry_after,
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise RequestFailed(f"{url} returned invalid JSON: {_excerpt(raw)}", retry=False) from None

    def _parse(self, data: Any, request: Request, path: str, server: str, seconds: float) -> Result:
        try:
            choice = data["choices"][0]
            if path == "/chat/completions":
                text = choice["message"].get("content") or ""  # null content (e.g. only reasoning) is ""
            else:
                text = choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RequestFailed(
                f"{server}{path} returned a reply without a completion ({exc!r}): "
                f"{_excerpt(json.dumps(data).encode())}",
                retry=False,
            ) from None
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Result(text=text, finish_reason=finish, usage=self._usage(data.get("usage"), request, text, seconds))

    def _usage(self, usage: Any, request: Request, text: str, seconds: float) -> Usage:
        usage = usage if isinstance(usage, dict) else {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(
            calls=1,
            prompt_tokens=int(prompt) if isinstance(prompt, int) else self.count_tokens(self.rendered(request)),
            cached_tokens=int(cached) if isinstance(cached, int) else None,  # null/absent: unknown, not 0
            completion_tokens=int(completion) if isinstance(completion, int) else self.count_tokens(text),
            seconds=seconds,
        )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date; rare from inference servers, fall back to our own backoff
        return None


def _excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip().replace("\n", " ")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _error_message(raw: bytes) -> str:
    """The server's own message where it sent one (OpenAI, vLLM and FastAPI shapes), else the raw body."""
    try:
        data = json.loads(raw)
    except ValueError:
        return _excerpt(raw)
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if isinstance(err, str):
            return err[:500]
    return _excerpt(raw)
