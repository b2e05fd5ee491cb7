"""The prompt format is chosen once, from the model card, and used for the root conversation and the
sub-calls; a root turn is rendered (and tokenised) once."""

from __future__ import annotations

from rlm_local import RLM
from rlm_local.engines import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.loop.formats import ChatFormat, CompletionFormat

DOC = "the code word is heron\n" * 20


class Counting(ScriptedEngine):
    def __init__(self, replies, **kwargs) -> None:
        super().__init__(replies, **kwargs)
        self.renders = 0
        self.counted: list[str] = []

    def render(self, request: Request) -> str:
        self.renders += 1
        return super().render(request)

    def count_tokens(self, text: str) -> int:
        self.counted.append(text)
        return super().count_tokens(text)


def test_the_card_decides_the_format_for_root_and_sub_calls():
    # The embedded model's card says "completion"; the engine object claims chat: the card wins, once.
    def reply(req: Request) -> str:
        if req.prompt is not None and req.prompt.startswith("Question:"):
            return "Paris\nand more"
        if "Output:" in req.prompt.split("### Task: What")[-1]:
            return 'FINAL("done")'
        return "print(llm_query('Capital of France?'))"

    engine = ScriptedEngine(reply, model_name="gemma-3-270m", prompt_format="chat")
    rlm = RLM(backend="scripted", engine=engine)
    assert isinstance(rlm.settings.root.format, CompletionFormat)
    result = rlm.completion(DOC, "What is the code word?")
    assert result.response == "done"
    sub = [r for r in engine.requests if r.prompt.startswith("Question:")]
    assert sub and sub[0].prompt == "Question: Capital of France?\nAnswer:" and sub[0].sampling.stop == ("\n",)
    cell = next(e for e in result.trajectory if e["event"] == "cell")
    assert cell["stdout"].strip() == "Paris"  # the one-line answer frame cut the ramble
    assert all(r.messages is None for r in engine.requests)


def test_unregistered_models_use_the_engines_format():
    rlm = RLM(backend="scripted", engine=ScriptedEngine(["FINAL(x)"], model_name="my-chat-model"))
    assert isinstance(rlm.settings.root.format, ChatFormat)


def test_a_root_turn_is_rendered_and_tokenised_once():
    replies = [f"```repl\nprint('step {i}')\n```" for i in range(4)] + ["FINAL(done)"]
    engine = Counting(replies)
    result = RLM(backend="scripted", engine=engine).completion(DOC, "q")
    assert result.response == "done" and len(engine.requests) == 5
    assert engine.renders == len(engine.requests)  # scheduler and engine share one render per request
    # Whole prompts are tokenised only by the engine (for its usage), each once; the conversation counted
    # each piece once as it joined instead of re-tokenising the growing prompt every turn.
    whole = [t for t in engine.counted if t.startswith("<system>")]
    assert sorted(whole) == sorted(engine.render(r) for r in engine.requests)
    feedback = [t for t in engine.counted if t.startswith("Output of your code")]
    assert len(feedback) == len(set(feedback)) == 4
    assert sum(t.startswith("You are a Recursive Language Model") for t in engine.counted) == 1


def test_the_root_prompt_budget_leaves_room_for_the_reply_in_the_engines_window():
    from rlm_local import RLM
    from rlm_local.engines.scripted import ScriptedEngine

    engine = ScriptedEngine(["FINAL(x)"])
    engine.context_length = 4096  # e.g. one llama.cpp slot
    with RLM(engine=engine) as rlm:
        root = rlm.settings.root
        assert root.prompt_tokens + root.root_sampling["max_tokens"] <= 4096
    engine.context_length = 0  # unknown window: the card's (or the default) budget stands
    with RLM(engine=engine) as rlm:
        assert rlm.settings.root.prompt_tokens == 32768
