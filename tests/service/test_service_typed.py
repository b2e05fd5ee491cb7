"""OpenAI's ``response_format: json_schema`` on an RLM model: the run's answer is validated (and retried),
the content is the answer as JSON; a bad schema is a 400."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

from scripting import repl  # noqa: E402

from rlm_local.engines import Request  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service import RLMConfig, ServiceConfig  # noqa: E402

CITY = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def script(req: Request) -> str:
    """First a wrong shape, then the right one after being told what failed."""
    if "does not match the required format" in req.messages[-1]["content"]:
        return repl("FINAL({'city': 'Paris'})")
    return repl("FINAL({'town': 'Paris'})")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from service_support import serving

    engine = ScriptedEngine(script, model_name="typed-model")
    config = ServiceConfig(
        rlms={"rlm": RLMConfig(name="rlm", engine=engine, budgets={"max_iterations": 3})},
        data_dir=tmp_path_factory.mktemp("data"),
    )
    with serving(config) as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_json_schema_answers_are_validated_and_returned_as_json(client):
    r = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "The capital of France is Paris."}],
        response_format=CITY,
    )
    assert json.loads(r.choices[0].message.content) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "stop" and r.usage.model_extra["rlm"]["iterations"] == 2


def test_a_bad_schema_is_a_400(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError, match="response_format: not a valid JSON schema"):
        client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "x"}], response_format=bad)
