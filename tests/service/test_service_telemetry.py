"""Traces (OpenTelemetry GenAI conventions: in-memory exporter, and one real OTLP/HTTP round trip to a
receiver the test starts), /metrics in Prometheus format, /health."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from service_support import make_config, serving  # noqa: E402

SECRET = "CONTEXT-SECRET-7731"


def test_spans_follow_the_genai_conventions_and_never_carry_the_context(tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with serving(make_config(tmp_path), tracer_provider=provider) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="deep-rlm",
            messages=[
                {"role": "user", "content": f"a document with {SECRET} inside"},
                {"role": "user", "content": "!child go"},
            ],
        )
        run_id = r.model_extra["rlm"]["run_id"]
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    agents = by_name["invoke_agent rlm"]
    assert len(agents) == 2  # the run and its child
    root = next(s for s in agents if s.parent is None)
    child = next(s for s in agents if s.parent is not None)
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent" and root.attributes["rlm.run_id"] == run_id
    assert root.attributes["rlm.depth"] == 0 and child.attributes["rlm.depth"] == 1
    assert len(root.attributes["rlm.context.sha256"]) == 64 and root.attributes["rlm.context.chars"] > 0
    assert root.attributes["openinference.span.kind"] == "AGENT"
    chats = by_name["chat scripted-model"]
    assert len(chats) == 3  # the root turn, the child's turn and the child's sub-call
    sub = [s for s in chats if s.attributes["rlm.role"] == "sub"]
    assert sub and all(
        s.attributes["gen_ai.usage.input_tokens"] > 0 and "gen_ai.usage.output_tokens" in s.attributes for s in sub
    )
    root_turns = [s for s in chats if s.attributes["rlm.role"] == "root"]
    assert root_turns and all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in root_turns)
    assert all(s.attributes["gen_ai.request.model"] == "scripted-model" for s in chats)
    tools = by_name["execute_tool repl"]
    assert tools and all(s.attributes["gen_ai.tool.name"] == "repl" for s in tools)
    ids = {s.context.span_id: s for s in spans}
    assert all(ids[s.parent.span_id].name == "execute_tool repl" for s in agents if s.parent)  # child under its cell
    assert all(s.context.trace_id == root.context.trace_id for s in spans)
    assert all(s.end_time >= s.start_time for s in spans)
    for s in spans:
        assert all(SECRET not in str(v) for v in s.attributes.values()), s.name


class Receiver(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.got.append((self.path, self.headers.get("content-type"), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_one_real_otlp_http_round_trip(tmp_path, monkeypatch):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rlm-test")
    Receiver.got = []
    try:
        with serving(make_config(tmp_path)) as (url, service):
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            client.chat.completions.create(
                model="scripted-rlm", messages=[{"role": "user", "content": "doc"}, {"role": "user", "content": "q"}]
            )
        # closing the service flushed the batch exporter
        assert Receiver.got, "no OTLP request arrived"
        path, ctype, body = Receiver.got[0]
        assert path == "/v1/traces" and ctype == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        resource = request.resource_spans[0].resource
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "rlm-test"
        names = {s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert {"invoke_agent rlm", "chat scripted-model", "execute_tool repl"} <= names
    finally:
        receiver.shutdown()


def test_metrics_and_health(tmp_path):
    with serving(make_config(tmp_path)) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "doc"}, {"role": "user", "content": "!batch 6"}]
        )
        with httpx.Client(base_url=url) as http:
            health = http.get("/health").json()
            assert health["status"] == "ok" and "scripted-rlm" in health["models"]
            text = http.get("/metrics").text
    assert 'rlm_runs_total{model="scripted-rlm",status="done"} 1.0' in text
    assert 'rlm_subcalls_total{model="scripted-rlm"} 6.0' in text
    assert 'rlm_batch_size_bucket{le="8.0",model="scripted-rlm"} 1.0' in text
    assert 'rlm_batch_size_count{model="scripted-rlm"} 1.0' in text
    assert 'rlm_model_call_seconds_count{model="scripted-model",role="root"} 1.0' in text
    assert 'rlm_model_call_seconds_count{model="scripted-model",role="sub"} 1.0' in text
    assert 'rlm_cached_token_ratio_count{model="scripted-rlm"} 1.0' in text
    assert "rlm_scheduler_queue_depth 0.0" in text and "rlm_run_seconds_bucket" in text
