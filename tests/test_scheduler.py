"""Scheduler tests with a recording engine: grouping, ordering, memo, fairness, cancellation, backpressure,
failure isolation and shutdown. Engines are gated with events, never timed sleeps."""

from __future__ import annotations

import threading
import time

import pytest

from rlm_local.engines.base import Engine, Request, Result, Usage
from rlm_local.scheduling.prefix import common_prefix_len, plan_calls, shared_prefix_first, shared_prefix_prompt
from rlm_local.scheduling.scheduler import Scheduler


class RecordingEngine(Engine):
    """Echoes prompts, records every generate() call, can fail or raise on chosen prompts, and can be held
    inside generate() until the test opens its gate."""

    backend = "recording"

    def __init__(
        self, fail: tuple[str, ...] = (), raise_on: tuple[str, ...] = (), gate_on: tuple[str, ...] = ()
    ) -> None:
        self.batches: list[list[str]] = []
        self.fail = set(fail)
        self.raise_on = set(raise_on)
        self.gate_on = set(gate_on)  # a batch holding one of these waits for self.gate
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.thread_ids: set[int] = set()

    def generate(self, requests: list[Request]) -> list[Result]:
        texts = [self.render(r) for r in requests]
        self.batches.append(texts)
        self.thread_ids.add(threading.get_ident())
        self.entered.set()
        if self.gate_on & set(texts):
            assert self.gate.wait(5), "test never opened the gate"
        if self.raise_on & set(texts):
            raise RuntimeError("whole batch exploded")
        return [
            Result.failed(f"bad prompt {t}")
            if t in self.fail
            else Result(
                text=f"echo:{t}", usage=Usage(calls=1, prompt_tokens=len(t), cached_tokens=0, completion_tokens=2)
            )
            for t in texts
        ]


def reqs(*prompts: str, **sampling) -> list[Request]:
    return [Request.completion(p, **sampling) for p in prompts]


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        box["value"] = fn(*args, **kwargs)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.002)


def hold_engine(sched: Scheduler, engine: RecordingEngine, run_id: str = "holder"):
    """Occupy the worker with a gated request so that later submissions queue up deterministically."""
    engine.gate_on.add("HOLD")
    engine.entered.clear()
    t, box = in_thread(sched.submit, reqs("HOLD"), run_id)
    assert engine.entered.wait(5) and engine.batches[-1] == ["HOLD"]
    return t, box


def test_batched_submit_is_one_engine_call_in_order():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=1) as s:
        prompts = [f"prompt {i}" for i in range(8)]
        out = s.submit(reqs(*prompts))
        assert [r.text for r in out] == [f"echo:{p}" for p in prompts]
        assert eng.batches == [prompts]
        assert s.stats.engine_calls == 1 and s.stats.mean_batch_size == 8


def test_submission_larger_than_max_batch_is_cut_into_pieces():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, max_batch=4) as s:
        prompts = [f"p{i:02d}" for i in range(10)]
        out = s.submit(reqs(*prompts))
        assert [r.text for r in out] == [f"echo:{p}" for p in prompts]
        assert [len(b) for b in eng.batches] == [4, 4, 2]
        assert [p for b in eng.batches for p in b] == prompts


def test_concurrent_callers_are_gathered_and_engine_runs_on_one_thread():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=1) as s:
        holder, _ = hold_engine(s, eng)
        threads = [in_thread(s.submit, reqs(f"q{i}"), f"run{i}") for i in range(3)]
        wait_until(lambda: s.queued == 3)
        eng.gate.set()
        for t, _box in threads:
            t.join(5)
        holder.join(5)
        assert [box["value"][0].text for _, box in threads] == ["echo:q0", "echo:q1", "echo:q2"]
        assert sorted(eng.batches[1]) == ["q0", "q1", "q2"] and len(eng.batches) == 2
        assert len(eng.thread_ids) == 1


def test_split_by_prefix_gives_each_prefix_group_its_own_call_and_siblings_stay_together():
    eng = RecordingEngine()
    doc_a, doc_b = "A" * 400, "B" * 400
    with Scheduler(eng, window_ms=1, min_shared_prefix=256, split_by_prefix=True) as s:
        holder, _ = hold_engine(s, eng)
        subs = [
            in_thread(s.submit, reqs(*(f"{doc_a} question {i}" for i in range(3))), "ra"),
            in_thread(s.submit, reqs(*(f"{doc_b} question {i}" for i in range(3))), "rb"),
            in_thread(s.submit, reqs("short x", "short y"), "rc"),  # siblings with no long shared prefix
            in_thread(s.submit, reqs("lonely"), "rd"),
            in_thread(s.submit, reqs(f"{doc_a} late question"), "re"),  # another run, same document
        ]
        wait_until(lambda: s.queued == 10)
        eng.gate.set()
        for t, _ in subs:
            t.join(5)
        calls = [sorted(b) for b in eng.batches[1:]]
        assert len(calls) == 3
        assert sorted([f"{doc_a} question {i}" for i in range(3)] + [f"{doc_a} late question"]) in calls
        assert sorted(f"{doc_b} question {i}" for i in range(3)) in calls
        assert ["lonely", "short x", "short y"] in calls
        for _, box in subs:
            assert all(r.ok and r.text.startswith("echo:") for r in box["value"])


def test_plan_calls_keeps_long_documents_apart_and_pools_the_rest():
    instr = "Answer from this chunk. " * 12  # ~290 chars shared by everything
    a = [instr + "chunk A " * 100 + f"q{i}" for i in range(3)]
    b = [instr + "chunk B " * 100 + f"q{i}" for i in range(2)]
    plan = plan_calls([a, b, ["x"], ["y", "z"]], max_batch=32, min_shared_prefix=256)
    # merging A and B would only share the instructions: they stay separate; x and y,z are pooled
    assert sorted(sorted(c) for c in plan) == [[0], [1], [2, 3]]
    assert plan_calls([a, b], max_batch=4, min_shared_prefix=10_000) == [[0], [1]]  # pool respects max_batch
    assert common_prefix_len("abcdef" * 1000 + "x", "abcdef" * 1000 + "y") == 6000
    assert common_prefix_len("", "abc") == 0 and common_prefix_len("abc", "abd") == 2


def test_default_is_one_call_with_prefix_groups_side_by_side():
    eng = RecordingEngine()
    doc_a, doc_b = "A" * 300, "B" * 300
    with Scheduler(eng, window_ms=1) as s:
        holder, _ = hold_engine(s, eng)
        subs = [
            in_thread(s.submit, reqs(doc_b + "1"), "r1"),
            in_thread(s.submit, reqs(doc_a + "1", doc_a + "2"), "r2"),
            in_thread(s.submit, reqs("other"), "r3"),
            in_thread(s.submit, reqs(doc_a + "3"), "r4"),
            in_thread(s.submit, reqs(doc_b + "2"), "r5"),
        ]
        wait_until(lambda: s.queued == 6)
        eng.gate.set()
        for t, _ in subs:
            t.join(5)
        assert len(eng.batches) == 2
        call = [t[0] + t[-1] for t in eng.batches[1]]  # first and last character of each prompt
        # the A siblings (one submission) stay together, and requests of different runs sharing a
        # document are put side by side
        assert call.index("A2") == call.index("A1") + 1
        assert {call.index("A3") - call.index("A1")} & {-1, 2}
        assert abs(call.index("B1") - call.index("B2")) == 1
        assert sorted(call) == ["A1", "A2", "A3", "B1", "B2", "or"]


def test_memo_answers_identical_greedy_requests_once():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0) as s:
        first = s.submit(reqs("same"))[0]
        again = s.submit(reqs("same"))[0]
        pair = s.submit(reqs("dup", "dup"))
        assert [b for b in eng.batches] == [["same"], ["dup"]]
        assert first.usage.calls == 1 and first.usage.prompt_tokens == 4
        assert again.text == "echo:same" and again.usage.calls == 0 and again.usage.total_tokens == 0
        assert [r.text for r in pair] == ["echo:dup", "echo:dup"]
        assert sum(r.usage.calls for r in pair) == 1
        assert s.stats.memo_hits == 2
        # sampling requests are never shared
        s.submit(reqs("hot", temperature=0.7))
        s.submit(reqs("hot", temperature=0.7))
        assert eng.batches[-2:] == [["hot"], ["hot"]]


def test_memo_off_and_memo_bounded():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, memo=False) as s:
        s.submit(reqs("a"))
        s.submit(reqs("a", "a"))
        assert eng.batches == [["a"], ["a", "a"]] and s.stats.memo_hits == 0
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, memo_size=2) as s:
        for p in ("a", "b", "c", "a", "c"):
            s.submit(reqs(p))
        assert eng.batches == [["a"], ["b"], ["c"], ["a"]]  # a was evicted, c was still remembered
        assert s.stats.memo_hits == 1


def test_failed_results_are_not_memoised():
    eng = RecordingEngine(fail=("bad",))
    with Scheduler(eng, window_ms=0) as s:
        assert not s.submit(reqs("bad"))[0].ok
        assert not s.submit(reqs("bad"))[0].ok
        assert eng.batches == [["bad"], ["bad"]]


def test_identical_request_in_flight_is_computed_once():
    eng = RecordingEngine(gate_on=("slow",))
    with Scheduler(eng, window_ms=0) as s:
        t1, box1 = in_thread(s.submit, reqs("slow"), "r1")
        assert eng.entered.wait(5)
        t2, box2 = in_thread(s.submit, reqs("slow"), "r2")
        wait_until(lambda: s.stats.submitted == 2)
        eng.gate.set()
        t1.join(5)
        t2.join(5)
        assert eng.batches == [["slow"]]
        r1, r2 = box1["value"][0], box2["value"][0]
        assert r1.text == r2.text == "echo:slow"
        assert r1.usage.calls + r2.usage.calls == 1
        assert s.stats.memo_hits == 1


def test_round_robin_does_not_starve_a_small_run():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, max_batch=4, memo=False) as s:
        holder, _ = hold_engine(s, eng)
        big_t, big = in_thread(s.submit, reqs(*(f"big{i:03d}" for i in range(40))), "big")
        wait_until(lambda: s.queued == 40)
        small_t, small = in_thread(s.submit, reqs("small"), "small")
        wait_until(lambda: s.queued == 41)
        eng.gate.set()
        small_t.join(5)
        big_t.join(5)
        where = next(i for i, b in enumerate(eng.batches) if "small" in b)
        assert where <= 2, eng.batches  # first-come-first-served would put it after all 10 big batches
        assert [r.text for r in big["value"]] == [f"echo:big{i:03d}" for i in range(40)]
        assert small["value"][0].text == "echo:small"


def test_cancel_drops_queued_requests_and_answers_waiters_promptly():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0) as s:
        holder, hold_box = hold_engine(s, eng, run_id="victim")
        queued_t, queued = in_thread(s.submit, reqs("v1", "v2", "v3"), "victim")
        other_t, other = in_thread(s.submit, reqs("o1"), "other")
        wait_until(lambda: s.queued == 4)
        assert s.cancel("victim") == 4  # 3 queued + the one in the engine
        assert s.queued == 1  # only the other run's request is left in the queue
        queued_t.join(5)
        holder.join(5)
        assert not queued_t.is_alive() and not holder.is_alive()  # answered while the engine is still busy
        assert all(not r.ok and "cancelled" in r.error and r.usage.calls == 0 for r in queued["value"])
        assert "cancelled" in hold_box["value"][0].error
        eng.gate.set()
        other_t.join(5)
        assert other["value"][0].text == "echo:o1"
        seen = [p for b in eng.batches for p in b]
        assert not {"v1", "v2", "v3"} & set(seen)
        assert s.stats.cancelled == 4
        # without reject_new the id may be reused; with it, later submits are refused at once
        assert s.submit(reqs("again"), "victim")[0].text == "echo:again"
        s.cancel("victim", reject_new=True)
        late = s.submit(reqs("later"), "victim")[0]
        assert not late.ok and "cancelled" in late.error and "later" not in [p for b in eng.batches for p in b]


def test_cancel_keeps_a_shared_request_for_the_other_run():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0) as s:
        holder, _ = hold_engine(s, eng)
        a_t, a = in_thread(s.submit, reqs("shared"), "a")
        wait_until(lambda: s.queued == 1)
        b_t, b = in_thread(s.submit, reqs("shared"), "b")
        wait_until(lambda: s.stats.submitted == 3)
        s.cancel("a")
        a_t.join(5)
        eng.gate.set()
        b_t.join(5)
        assert "cancelled" in a["value"][0].error
        assert b["value"][0].text == "echo:shared" and b["value"][0].usage.calls == 1


def test_backpressure_blocks_then_refuses_with_a_clear_error():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, max_queue=2, queue_timeout=0.1) as s:
        holder, _ = hold_engine(s, eng)
        t, box = in_thread(s.submit, reqs("q1", "q2"), "r1")
        wait_until(lambda: s.queued == 2)
        start = time.monotonic()
        refused = s.submit(reqs("q3"), "r2")[0]
        assert 0.09 <= time.monotonic() - start < 2
        assert not refused.ok and "queue full" in refused.error and "max_queue=2" in refused.error
        assert s.stats.refused == 1
        eng.gate.set()
        t.join(5)
        assert [r.text for r in box["value"]] == ["echo:q1", "echo:q2"]


def test_backpressure_blocks_until_room():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, max_queue=1, queue_timeout=None) as s:
        holder, _ = hold_engine(s, eng)
        t1, box1 = in_thread(s.submit, reqs("q1"), "r1")
        wait_until(lambda: s.queued == 1)
        t2, box2 = in_thread(s.submit, reqs("q2"), "r2")
        t2.join(0.05)
        assert t2.is_alive()  # blocked: the queue is full
        eng.gate.set()
        t1.join(5)
        t2.join(5)
        assert box1["value"][0].text == "echo:q1" and box2["value"][0].text == "echo:q2"


def test_max_inflight_per_run():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0, max_inflight_per_run=1, queue_timeout=0.05) as s:
        holder, _ = hold_engine(s, eng, run_id="r")
        refused = s.submit(reqs("second"), "r")[0]
        assert "max_inflight_per_run=1" in refused.error
        eng.gate.set()
        holder.join(5)
        assert s.submit(reqs("third"), "r")[0].ok


def test_one_failing_request_does_not_sink_its_batch():
    eng = RecordingEngine(raise_on=("bad",), fail=("soft",))
    with Scheduler(eng, window_ms=0) as s:
        out = s.submit(reqs("a", "bad", "soft", "c"))
        assert [r.ok for r in out] == [True, False, False, True]
        assert [out[0].text, out[3].text] == ["echo:a", "echo:c"]
        assert "RuntimeError" in out[1].error and "whole batch exploded" in out[1].error
        assert out[2].error == "bad prompt soft"
        assert eng.batches == [["a", "bad", "soft", "c"], ["a"], ["bad"], ["soft"], ["c"]]
        assert s.stats.batch_failures == 1


def test_engine_returning_wrong_count_is_isolated():
    class Short(RecordingEngine):
        def generate(self, requests):
            out = super().generate(requests)
            return out[:-1] if len(out) > 1 else out

    eng = Short()
    with Scheduler(eng, window_ms=0) as s:
        out = s.submit(reqs("x", "y"))
        assert [r.text for r in out] == ["echo:x", "echo:y"]


def test_render_failure_and_scheduler_bug_fail_only_what_they_touch(monkeypatch):
    class BadRender(RecordingEngine):
        def render(self, request):
            if request.prompt == "unrenderable":
                raise ValueError("no template")
            return super().render(request)

    eng = BadRender()
    with Scheduler(eng, window_ms=0) as s:
        out = s.submit(reqs("fine", "unrenderable"))
        assert out[0].text == "echo:fine" and "no template" in out[1].error
        assert eng.batches == [["fine"]]

        import rlm_local.scheduling.scheduler as scheduler_module

        def broken_plan(*args, **kwargs):
            raise RuntimeError("planner bug")

        holder, _ = hold_engine(s, eng)
        monkeypatch.setattr(scheduler_module, "plan_calls", broken_plan)
        subs = [in_thread(s.submit, reqs(f"x{i}"), f"r{i}") for i in range(2)]
        wait_until(lambda: s.queued == 2)
        eng.gate.set()
        for t, box in subs:
            t.join(5)
            assert "planner bug" in box["value"][0].error
        monkeypatch.undo()
        assert s.submit(reqs("still alive"))[0].text == "echo:still alive"


def test_close_answers_waiters_and_stops_the_thread():
    eng = RecordingEngine()
    s = Scheduler(eng, window_ms=0)
    holder, hold_box = hold_engine(s, eng)
    t, box = in_thread(s.submit, reqs("queued"), "r")
    wait_until(lambda: s.queued == 1)
    closer, _ = in_thread(s.close)
    holder.join(5)
    t.join(5)
    assert "closed" in hold_box["value"][0].error and "closed" in box["value"][0].error
    assert closer.is_alive()  # still waiting for the engine call in progress
    eng.gate.set()
    closer.join(5)
    assert not closer.is_alive() and not s._thread.is_alive()
    s.close()  # idempotent
    after = s.submit(reqs("late"))[0]
    assert not after.ok and "closed" in after.error
    assert "queued" not in [p for b in eng.batches for p in b]


def test_submit_timeout_and_bad_input():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=0) as s:
        holder, _ = hold_engine(s, eng)
        r = s.submit(reqs("waits"), "r", timeout=0.05)[0]
        assert not r.ok and "timeout" in r.error
        eng.gate.set()
        assert s.submit([]) == []
        with pytest.raises(TypeError):
            s.submit(["not a request"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_batch"):
        Scheduler(eng, max_batch=0)
    with pytest.raises(ValueError, match="window_ms"):
        Scheduler(eng, window_ms=-1)


def test_many_threads_get_their_own_answers_and_usage_adds_up():
    eng = RecordingEngine()
    with Scheduler(eng, window_ms=1, max_batch=8) as s:

        def worker(k: int) -> list[Result]:
            out = []
            for j in range(15):
                out += s.submit(reqs(f"t{k}-{j}", f"common{j % 3}"), f"run{k}")
            return out

        threads = [in_thread(worker, k) for k in range(6)]
        for t, _ in threads:
            t.join(10)
        for k, (_, box) in enumerate(threads):
            texts = [r.text for r in box["value"]]
            assert texts[0::2] == [f"echo:t{k}-{j}" for j in range(15)]
            assert texts[1::2] == [f"echo:common{j % 3}" for j in range(15)]
        calls = sum(r.usage.calls for _, box in threads for r in box["value"])
        assert calls == s.stats.engine_requests == sum(len(b) for b in eng.batches)
        assert s.stats.engine_requests == 6 * 15 + 3  # the three common prompts ran once each


def test_shared_prefix_first_layout_keeps_siblings_on_a_common_prefix():
    eng = RecordingEngine()
    instr, doc = "Find the date mentioned.", "some long chunk of text " * 20
    texts = [eng.render(Request.chat(shared_prefix_first(instr, doc, q))) for q in ("Who?", "When?")]
    assert common_prefix_len(*texts) >= len(instr) + len(doc)
    assert shared_prefix_prompt(instr, "", "Q") == instr + "\n\nQ"
    with pytest.raises(TypeError):
        shared_prefix_first(instr, None)  # type: ignore[arg-type]
