"""The whole RLM on the real embedded model, on the default engine (llama.cpp) and on transformers: it must
drive the loop end to end and terminate."""

from __future__ import annotations

import pytest

from rlm_local import RLM
from rlm_local.bench.niah import make_needle_task

pytestmark = pytest.mark.model
ENGINES = pytest.mark.parametrize("engine_fixture", ["default_engine", "embedded_engine"])


@ENGINES
def test_completion_on_the_embedded_model_terminates_and_accounts(engine_fixture, request, tmp_path):
    engine = request.getfixturevalue(engine_fixture)
    task = make_needle_task(length=30_000, depth=0.4, seed=3, key="granite bell")
    rlm = RLM(engine=engine, max_iterations=3, trajectory_path=tmp_path / "t.jsonl")
    result = rlm.completion(task.context, root_prompt=task.question)
    assert result.stopped_reason in ("final", "max_iterations")
    assert 1 <= result.iterations <= 3
    usage = result.usage_summary
    assert usage.by_role["root"].calls >= 1 and usage.total.prompt_tokens > 0
    cells = [e for e in result.trajectory if e["event"] == "cell"]
    assert cells, "the model's first reply should contain code that the sandbox ran"
    # greedy decoding on a fixed document: the embedded model finds this needle
    assert task.is_correct(result.response), result.trajectory


@ENGINES
def test_subcalls_reach_the_embedded_model(engine_fixture, request):
    embedded_engine = request.getfixturevalue(engine_fixture)
    from rlm_local.engines.scripted import ScriptedEngine

    root = ScriptedEngine(
        ["```repl\nprint(llm_query_batched(['The capital of France is', 'Two plus two is']))\n```", "FINAL(done)"]
    )
    rlm = RLM(backend="scripted", engine=root, sub_engine=embedded_engine, sub_max_tokens=8)
    result = rlm.completion("some context", root_prompt="q")
    subcalls = [e for e in result.trajectory if e["event"] == "subcall"]
    assert len(subcalls) == 2 and all(e["response"] and not e["error"] for e in subcalls)
    assert result.usage_summary.by_model[embedded_engine.model_name].calls == 2
