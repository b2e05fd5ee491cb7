"""The llama.cpp engine against real xllamacpp on the embedded GGUF (one engine per module: loads in seconds)."""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time

import pytest
from cancelling import STOPPED_CPU_S, cancel_after

from rlm_local import RLM
from rlm_local.engines import EngineError, Request, make_engine
from rlm_local.models import ModelLoadError, ModelNotFoundError, embedded_gguf_path, resolve_gguf

pytest.importorskip("xllamacpp")
pytestmark = pytest.mark.model

WORDS = "apple river stone cloud green quick lamp paper north seven".split()


@pytest.fixture(scope="module")
def engine():
    eng = make_engine("llamacpp", n_parallel=4, context_length=2048)
    yield eng
    eng.close()


def chunk(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return f"Log {seed}:\n" + " ".join(rng.choice(WORDS) for _ in range(words)) + "\n"


def test_loads_the_packaged_gguf_directly(engine):
    path, card = resolve_gguf(None)
    assert path == embedded_gguf_path() and path.stat().st_size > 200_000_000 and card.name == "gemma-3-270m"
    assert engine.model_name == "gemma-3-270m" and engine.prompt_format == "completion"
    assert engine.context_length == 2048 and engine.threads >= 1
    assert engine.chat_template is None  # a base model: chat requests use Gemma's turn format
    chat = Request.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert engine.render(chat) == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_packaged_gguf_is_assembled_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_LOCAL_CACHE", str(tmp_path))
    path, card = resolve_gguf("embedded")
    assert path.parent == tmp_path and card.name == "gemma-3-270m"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [path.name]  # no .partial
    stamp = path.stat().st_mtime_ns
    assert resolve_gguf(None)[0] == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt


def first_word(text: str) -> str:
    return text.split()[0].strip(".,") if text.split() else ""


def test_batch_in_order_equals_one_by_one_greedy(engine):
    reqs = [Request.completion(f"The capital of {c} is", max_tokens=8) for c in ("France", "Italy", "Japan")]
    batch = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    # Results come back in request order. Batched kernels (and a thread count that follows the load) are not
    # bitwise equal to one-by-one decoding, so a near-tie late in a reply may flip ("Tokyo," / "Tokyo."): the
    # confident first word is what must agree.
    assert all(r.ok for r in batch) and [first_word(r.text) for r in batch] == [first_word(r.text) for r in alone]
    assert "Paris" in batch[0].text or "France" in batch[0].text
    assert all(r.usage.calls == 1 and r.usage.completion_tokens == 8 and r.finish_reason == "length" for r in batch)


def test_token_counts_are_exact(engine):
    text = "Hello world, how are you?"
    assert engine.count_tokens(text) == 7 and engine.count_tokens("") == 0
    r = engine.generate([Request.completion(text, max_tokens=3)])[0]
    assert r.usage.prompt_tokens == engine.count_tokens(text) + 1  # + BOS


def test_cached_tokens_on_a_repeated_prefix(engine):
    doc = chunk(1)
    first = engine.generate([Request.completion(doc + "Q: first? A:", max_tokens=4)])[0]
    again = engine.generate([Request.completion(doc + "Q: first? A: yes. Q: second? A:", max_tokens=4)])[0]
    assert first.usage.cached_tokens is not None and again.usage.cached_tokens is not None
    assert first.usage.cached_tokens < 10  # a new document
    assert again.usage.cached_tokens >= engine.count_tokens(doc) - 16  # its slot kept the document


def test_siblings_compute_their_shared_prefix_once(engine):
    doc = chunk(2)
    reqs = [
        Request.completion(f"{doc}Question {i}: how often is {w}? Answer:", max_tokens=4)
        for i, w in enumerate(WORDS[:6])
    ]  # more siblings than slots: two waves
    results = engine.generate(reqs)
    assert all(r.ok for r in results)
    prompt = sum(r.usage.prompt_tokens for r in results)
    computed = sum(r.usage.prompt_tokens - r.usage.cached_tokens for r in results)
    shared = engine.count_tokens(doc)
    # llama.cpp's own counts: the document evaluated once, not six times
    assert computed < shared + 6 * 40, (computed, shared, [r.usage for r in results])
    assert prompt - computed >= 5 * (shared - 16)
    assert sorted(r.usage.cached_tokens for r in results)[1] >= shared - 16

    plain = make_engine("llamacpp", n_parallel=4, context_length=2048, share_prefix=False)
    try:  # llama-server's default behaviour for contrast: every slot computes the document itself
        others = plain.generate(reqs[:4])
    finally:
        plain.close()
    assert sum(r.usage.prompt_tokens - r.usage.cached_tokens for r in others) >= 4 * shared


def test_concurrent_conversations_keep_their_own_slots():
    # Root turns of two runs share the system prompt but each slot holds its run's whole conversation: the
    # next turns must reuse those conversations, not a group prefix restored over them.
    eng = make_engine("llamacpp", n_parallel=4, context_length=2048)
    try:
        system = "System: you answer questions about logs.\n" + chunk(7, 120)
        turns = [f"{system}Run {r}: {chunk(20 + r, 150)}Reply:" for r in range(2)]
        assert all(r.ok for r in eng.generate([Request.completion(t, max_tokens=2) for t in turns]))
        nxt = [f"{t} ok.\nNext question {r}: what follows?" for r, t in enumerate(turns)]
        results = eng.generate([Request.completion(t, max_tokens=2) for t in nxt])
        assert all(r.ok for r in results)
        for r, turn in zip(results, turns):  # each reused (nearly) all of its own first turn
            assert r.usage.cached_tokens >= eng.count_tokens(turn) - 16, [x.usage for x in results]
        # without prefix sharing, a batch whose tasks all prefer one slot still spreads over the idle slots
        plain = make_engine("llamacpp", n_parallel=4, context_length=2048, share_prefix=False)
        try:
            doc = chunk(9, 200)
            assert plain.generate([Request.completion(doc + "Q: a?", max_tokens=2)])[0].ok  # slot 0 holds doc
            out = plain.generate([Request.completion(doc + f"Q{i}: b?", max_tokens=24) for i in range(4)])
            assert all(r.ok for r in out)
            # one of them reuses the held document; the others ran on other slots (they computed it)
            assert sorted(r.usage.cached_tokens for r in out)[:3] == [0, 0, 0], [r.usage for r in out]
        finally:
            plain.close()
    finally:
        eng.close()


def test_a_bad_request_fails_alone(engine):
    good = Request.completion("The capital of France is", max_tokens=4)
    too_long = Request.completion("word " * 3000, max_tokens=4)
    results = engine.generate([too_long, good])
    assert not results[0].ok and "context" in results[0].error and results[0].usage.calls == 1
    assert results[1].ok and results[1].text


def test_deadline_stops_a_generation(engine):
    start = time.monotonic()
    r = engine.generate([Request.completion("Once upon a time", max_tokens=500)], deadline=start + 0.8)[0]
    assert not r.ok and "deadline" in r.error and time.monotonic() - start < 5
    assert r.usage.calls == 1 and r.usage.cached_tokens is None and r.usage.completion_tokens >= 1


def in_thread(fn):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


@pytest.mark.parametrize("phase", ["prompt", "decode"])
def test_a_cancelled_request_stops_using_the_cpu(engine, phase):
    # prompt: a new 1,800-token text (seconds of prompt processing); decode: a short prompt, 1,500 new tokens
    prompt = chunk(40 + len(phase), 1_700) if phase == "prompt" else "Once upon a time"
    request = Request.completion(prompt, max_tokens=1_500)
    (r,), cpu = cancel_after(lambda stop: engine.generate([request], cancel=[stop]), 1.0 if phase == "prompt" else 2.5)
    assert not r.ok and "cancelled" in r.error and r.usage.calls == 1
    if phase == "decode":
        assert r.usage.completion_tokens >= 1
    assert cpu < STOPPED_CPU_S, f"{cpu:.2f} s of CPU from the cancel to 1 s after it returned"
    assert engine.generate([Request.completion("The capital of France is", max_tokens=3)])[0].ok  # slot usable


def test_a_request_cancelled_before_a_slot_takes_it_does_no_work(engine):
    stops = [threading.Event() for _ in range(6)]
    stops[5].set()
    reqs = [Request.completion(f"Count to {i}:", max_tokens=4) for i in range(6)]  # 6 requests, 4 slots
    results = engine.generate(reqs, cancel=stops)
    assert all(r.ok for r in results[:5])
    assert not results[5].ok and "before it started" in results[5].error and results[5].usage.calls == 0


def test_close_stops_prompt_processing():
    eng = make_engine("llamacpp", n_parallel=2, context_length=4096)
    thread, out = in_thread(lambda: eng.generate([Request.completion(chunk(50, 2_500), max_tokens=8)]))
    time.sleep(1.0)
    assert thread.is_alive()
    cpu, started = time.process_time(), time.monotonic()
    eng.close()
    thread.join(10)
    assert time.process_time() - cpu < 1.5 and time.monotonic() - started < 5  # close also frees the server
    (r,) = out[0]
    assert not r.ok and "engine closed" in r.error


def test_concurrent_calls_share_decode_steps(engine):
    # the scheduler hands llama.cpp a batch per free slot: a second call does not wait for the first to end
    assert engine.concurrent_calls == engine.n_parallel == 4
    slow, out = in_thread(lambda: engine.generate([Request.completion("Once upon a time", max_tokens=400)]))
    time.sleep(0.5)
    started = time.monotonic()
    quick = engine.generate([Request.completion("The capital of France is", max_tokens=3)])[0]
    waited = time.monotonic() - started
    assert quick.ok and slow.is_alive(), "the short call waited for the long one"
    slow.join(120)
    assert out[0][0].ok and waited < 10


def test_concurrent_calls_starting_alike_share_their_prefix(engine):
    # the runs of a sweep: each call is one run's first turn, the same system prompt with its own question
    system = "System: you answer questions about the log below.\n" + chunk(60, 900)
    ask = lambda i: engine.generate([Request.completion(f"{system}Run {i}: how often is {WORDS[i]}?", max_tokens=2)])  # noqa: E731
    runs = [in_thread(lambda: ask(0))]
    time.sleep(0.3)  # run 0 is computing the system prompt
    runs += [in_thread(lambda i=i: ask(i)) for i in (1, 2, 3)]
    for thread, _ in runs:
        thread.join(120)
    results = [out[0][0] for _, out in runs]
    assert all(r.ok for r in results), results
    shared = engine.count_tokens(system)
    computed = sum(r.usage.prompt_tokens - r.usage.cached_tokens for r in results)  # the warm-up's work included
    # the prefix is computed twice (by the first run and by one warm task for the others), whatever order the
    # calls arrive in; each run computing its own would be four times
    assert computed < 2 * shared + 4 * 40, (computed, shared, [r.usage for r in results])


def test_explicit_arguments_beat_the_card(monkeypatch):
    from rlm_local.engines import llamacpp_plan

    seen = {}
    real = llamacpp_plan.resolve_settings

    def spy(explicit, card, params, size):
        seen["settings"] = real(explicit, card, params, size)
        raise EngineError("stop here: the quality model is not loaded in this test")

    monkeypatch.setattr("rlm_local.engines.llamacpp.resolve_settings", spy)
    try:
        resolve_gguf("quality")
    except Exception as exc:  # the quality model is an optional extra
        pytest.skip(f"platform: the quality model is not installed here ({exc})")
    with pytest.raises(EngineError, match="stop here"):
        make_engine("llamacpp", model_name="quality", n_parallel=1, context_length=32768)
    s = seen["settings"]
    assert (s.n_parallel, s.context_length) == (1, 32768) and "context_length" not in s.params


def test_missing_or_bad_model_file_is_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"\.gguf file"):
        make_engine("llamacpp", model_name=str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        make_engine("llamacpp", model_name=str(bad))
    truncated = tmp_path / "truncated.gguf"
    with open(embedded_gguf_path(), "rb") as fh:
        truncated.write_bytes(fh.read(5_000_000))  # starts like a GGUF, ends early
    with pytest.raises(ModelLoadError, match="complete GGUF model"):
        make_engine("llamacpp", model_name=str(truncated))
    with pytest.raises(EngineError, match="unknown llama.cpp parameter"):
        make_engine("llamacpp", no_such_param=1)


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import fails as if the extra were not installed
    with pytest.raises(EngineError, match=r"pip install 'rlm-local\[llamacpp\]'"):
        make_engine("llamacpp")


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))  # llama.cpp's threads are not Python threads


def test_close_frees_port_and_threads():
    def cycle() -> int:
        eng = make_engine("llamacpp", n_parallel=2, context_length=512)
        port = eng._port
        assert eng.generate([Request.completion("Hi", max_tokens=2)])[0].ok
        eng.close()
        eng.close()  # twice is fine
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", port))
        assert not eng.generate([Request.completion("Hi", max_tokens=2)])[0].ok  # closed: fails, no crash
        return native_threads()

    first = cycle()  # llama.cpp starts one process-wide log thread the first time; nothing per engine stays
    assert cycle() <= first


def test_rlm_end_to_end_with_llamacpp_sub_calls(engine):
    from rlm_local.engines.scripted import ScriptedEngine

    doc = chunk(3)
    code = (
        "qs = [f'{context}Question {i}: is {w} in the log? Answer:' for i, w in enumerate(['apple', 'stone', "
        "'lamp'])]\nprint(llm_query_batched(qs + ['The capital of France is']))"
    )
    root = ScriptedEngine([f"```repl\n{code}\n```", "FINAL(done)"])
    rlm = RLM(backend="scripted", engine=root, sub_engine=engine, sub_max_tokens=6)
    result = rlm.completion(doc, root_prompt="q")
    subcalls = [e for e in result.trajectory if e["event"] == "subcall"]
    assert result.response == "done" and len(subcalls) == 4
    assert all(not e["error"] and e["usage"]["completion_tokens"] >= 1 for e in subcalls)
    assert subcalls[-1]["response"].strip()  # the base model continues a plain sentence
    cached = sorted(e["usage"]["cached_tokens"] for e in subcalls[:3])
    assert cached[1] >= engine.count_tokens(doc) - 16  # the three siblings shared the document
    assert result.usage_summary.by_model[engine.model_name].calls == 4


def test_cli_demo_runs_on_llamacpp(capsys):
    from rlm_local.cli import main

    assert main(["run", "--demo", "--demo-length", "40000", "--backend", "llamacpp", "--threads", "1", "--quiet"]) == 0
    assert "PASSED" in capsys.readouterr().err


def test_the_side_channel_refuses_other_local_callers(engine):
    import http.client

    conn = http.client.HTTPConnection(engine._host, engine._port, timeout=10)
    try:  # /slots writes files: only this process, which holds the key, may call it
        conn.request("POST", "/slots/0?action=save", '{"filename": "x.bin"}', {"Content-Type": "application/json"})
        assert conn.getresponse().status == 401
    finally:
        conn.close()
    assert engine.count_tokens("hello world") > 0  # the engine's own calls carry the key
