"""Traces and metrics of the service.

Traces: each finished run becomes OpenTelemetry spans following the GenAI semantic conventions (and the
OpenInference attributes Phoenix reads): ``invoke_agent rlm`` per run at each depth, ``chat {model}`` per
root turn and per sub-call with usage attributes, ``execute_tool repl`` per cell, a ``batch`` span grouping
one ``llm_query_batched``. Spans carry sizes and a sha256 of the context, never the context itself, nor
prompts or replies (message content is opt-in in the conventions; we do not opt in). They are built from the
run's tree when the run ends, with the recorded start and end times. The exporter is OTLP, configured by
the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` (http/protobuf), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``); with
none of them set no spans are exported.

Metrics (``/metrics``, Prometheus text): runs by model and status, runs refused by reason, runs going
now, HTTP requests by method, route and status, sub-calls, batch sizes, cached-token ratio, run and
model-call latency histograms per model, scheduler queue depth.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .viewer import build_tree

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def default_tracer_provider() -> Any:
    """A TracerProvider exporting over OTLP/HTTP when the OTEL_* variables ask for it, else None."""
    wanted = any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if not wanted or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "rlm-local")})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Telemetry:
    def __init__(self, tracer_provider: Any = "default") -> None:
        self.provider = default_tracer_provider() if tracer_provider == "default" else tracer_provider
        self.tracer = self.provider.get_tracer("rlm_local.service") if self.provider is not None else None
        r = self.registry = CollectorRegistry()
        self.runs = Counter("rlm_runs", "RLM runs finished", ["model", "status"], registry=r)
        self.subcalls = Counter(
            "rlm_subcalls", "sub-calls made by runs (llm_query and rlm_query)", ["model"], registry=r
        )
        self.batch = Histogram(
            "rlm_batch_size",
            "prompts per llm_query_batched submission",
            ["model"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.cached_ratio = Histogram(
            "rlm_cached_token_ratio",
            "cached prompt tokens / prompt tokens, per run",
            ["model"],
            registry=r,
            buckets=(0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1),
        )
        self.run_seconds = Histogram("rlm_run_seconds", "run latency", ["model"], registry=r, buckets=BUCKETS)
        self.call_seconds = Histogram(
            "rlm_model_call_seconds",
            "model call latency (root turns, sub-call batches)",
            ["model", "role"],
            registry=r,
            buckets=BUCKETS,
        )
        self.tokens = Counter("rlm_tokens", "tokens used by runs", ["model", "kind"], registry=r)
        self.queue = Gauge("rlm_scheduler_queue_depth", "requests waiting in the engines' schedulers", registry=r)
        self._queues: Callable[[], list[Any]] = lambda: []
        self.queue.set_function(lambda: float(sum(getattr(s, "queued", 0) for s in self._queues())))
        self.http = Counter("rlm_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.rejected = Counter("rlm_runs_rejected", "runs refused before they started", ["reason"], registry=r)
        self.active = Gauge("rlm_runs_active", "runs going now (a session's snapshot included)", registry=r)
        self._active: Callable[[], int] = lambda: 0
        self.active.set_function(lambda: float(self._active()))

    def watch_queues(self, schedulers: Callable[[], list[Any]]) -> None:
        self._queues = schedulers

    def watch_runs(self, active: Callable[[], int]) -> None:
        self._active = active

    def request(self, method: str, route: str, status: int) -> None:
        self.http.labels(method, route, str(status)).inc()

    def refused(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def metrics_response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def model_call(self, model: str, role: str, seconds: float) -> None:
        self.call_seconds.labels(model, role).observe(seconds)

    # ---- a finished run ---------------------------------------------------------------------------------
    def run_finished(self, record: Any) -> None:
        self.runs.labels(record.model, record.status).inc()
        config = next((e.get("config") for e in record.events if e.get("event") == "run_start"), None) or {}
        root_model, sub_model = config.get("model") or record.model, config.get("sub_model") or record.model
        left: dict[int, int] = {}  # depth -> sub-calls still to come of the batch being read
        for e in record.events:
            if e.get("event") == "root_turn":
                self.model_call(root_model, "root", float(e.get("seconds") or 0))
            elif e.get("event") == "subcall":
                self.subcalls.labels(record.model).inc()
                depth = int(e.get("depth") or 0)
                if e.get("query") == "llm" and left.get(depth, 0) > 0:
                    left[depth] -= 1  # a later member of a batch already counted
                elif e.get("query") == "llm":  # one observation per submission: its members are logged together
                    size = int(e.get("batch") or 1)
                    left[depth] = size - 1
                    self.batch.labels(record.model).observe(size)
                    self.model_call(sub_model, "sub", float(e.get("seconds") or 0))
        if record.result is not None:
            total = record.result.usage_summary.total
            self.run_seconds.labels(record.model).observe(record.result.execution_time)
            self.tokens.labels(record.model, "prompt").inc(total.prompt_tokens)
            self.tokens.labels(record.model, "completion").inc(total.completion_tokens)
            if total.prompt_tokens and total.cached_tokens is not None:
                self.cached_ratio.labels(record.model).observe(total.cached_tokens / total.prompt_tokens)
        if self.tracer is not None:
            self.export_spans(record, root_model, sub_model)

    def export_spans(self, record: Any, root_model: str, sub_model: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        tracer = self.tracer
        assert tracer is not None  # run_finished exports only with a tracer
        nodes = build_tree(record.events)
        run_end = max((float(e.get("time") or 0) for e in record.events), default=0.0)

        def ns(t: float | None) -> int | None:
            return int(t * 1e9) if t else None

        def emit(nid: str, parent_ctx: Any, parent_start: float | None, depth: int) -> None:
            n = nodes[nid]
            start = n.get("start") or parent_start or run_end
            end = start + (n.get("seconds") or 0) if n.get("seconds") else None
            kind, attrs = n["kind"], {}
            if kind in ("run", "child"):
                name = "invoke_agent rlm"
                attrs = {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": "rlm",
                    "gen_ai.agent.id": f"{record.id}/{nid}",
                    "gen_ai.conversation.id": record.session or record.id,
                    "gen_ai.request.model": root_model,
                    "rlm.depth": depth,
                    "rlm.run_id": record.id,
                    "openinference.span.kind": "AGENT",
                }
                if n.get("stopped_reason"):
                    attrs["rlm.stopped_reason"] = n["stopped_reason"]
                if kind == "run":
                    meta = n.get("context") or {}
                    attrs.update(
                        {
                            "rlm.context.chars": meta.get("chars") or 0,
                            "rlm.context.sha256": getattr(record, "context_sha256", "") or "",
                            "rlm.iterations": record.result.iterations if record.result else 0,
                        }
                    )
                    for k, v in (n.get("config") or {}).items():
                        if k.startswith("max_") and v is not None:
                            attrs[f"rlm.budget.{k}"] = v
                    end = end or run_end
            elif kind in ("turn", "subcall"):
                model = root_model if kind == "turn" else sub_model
                name = f"chat {model}"
                attrs = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "rlm-local",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "rlm.role": "root" if kind == "turn" else "sub",
                    "openinference.span.kind": "LLM",
                }
                prompt = n.get("prompt_tokens")
                if prompt is not None:
                    attrs.update({"gen_ai.usage.input_tokens": prompt, "llm.token_count.prompt": prompt})
                if n.get("completion_tokens") is not None:
                    attrs.update(
                        {
                            "gen_ai.usage.output_tokens": n["completion_tokens"],
                            "llm.token_count.completion": n["completion_tokens"],
                        }
                    )
                if n.get("cached_tokens") is not None:
                    attrs["gen_ai.usage.cache_read.input_tokens"] = n["cached_tokens"]
            elif kind == "cell":
                name = "execute_tool repl"
                attrs = {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "repl",
                    "gen_ai.tool.call.id": f"{record.id}/{nid}",
                    "openinference.span.kind": "TOOL",
                }
            else:
                name = "batch llm_query_batched"
                attrs = {"rlm.batch.size": len(n["children"]), "openinference.span.kind": "CHAIN"}
            if n.get("error"):
                attrs["error.type"] = str(n["error"]).split(":")[0][:100]
            span = tracer.start_span(name, context=parent_ctx, start_time=ns(start), attributes=attrs)
            if n.get("error"):
                span.set_status(Status(StatusCode.ERROR, str(n["error"])[:200]))
            ctx = trace.set_span_in_context(span)
            for child in n["children"]:
                emit(child, ctx, start, depth + (1 if nodes[child]["kind"] == "child" else 0))
            span.end(end_time=ns(end) or ns(max(start, run_end)))

        emit("run", None, None, 0)

    def shutdown(self) -> None:
        if self.provider is not None and hasattr(self.provider, "force_flush"):
            self.provider.force_flush()
