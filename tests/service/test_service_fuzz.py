"""schemathesis against the service's OpenAPI schema, over real HTTP: whatever it sends, no 5xx, and
every error in OpenAI's shape. Each operation gets ``EXAMPLES`` schema-valid and ``EXAMPLES`` schema-violating
requests (hypothesis); every other generated ``model`` is replaced by a real one so runs and sessions start."""

from __future__ import annotations

import collections
import itertools
import os

import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from service_support import make_config, serving  # noqa: E402

EXAMPLES = int(os.environ.get("RLM_FUZZ_EXAMPLES", "20"))  # per operation and mode; bounded for two cores


def test_no_server_errors_on_any_operation(tmp_path):
    statuses: collections.Counter = collections.Counter()
    failures: list[str] = []
    flip = itertools.cycle([True, False])
    with serving(make_config(tmp_path / "data", max_upload_bytes=32 * 1024)) as (url, service):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 15
        for op, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and next(flip):
                    case.body["model"] = "scripted-rlm"
                response = case.call(base_url=url, timeout=60)
                statuses[f"{response.status_code // 100}xx"] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                    )
                elif response.status_code >= 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]

            try:
                fuzz()
            except Unsatisfiable:  # no way to violate the schema of an operation without parameters
                assert mode == GenerationMode.NEGATIVE
    print(
        f"\nfuzz: {len(operations)} operations, {sum(statuses.values())} requests, by class: "
        f"{dict(sorted(statuses.items()))}"
    )
    assert not failures, failures[:5]
