"""What the root model sees: a description of the REPL protocol, metadata about the context (never the
context itself), the question, and each cell's output.

Two layouts:
- chat, for instruction-tuned models: a system prompt and alternating user/assistant messages;
- completion, for small base models such as the embedded Gemma 3 270M: one text shaped like a REPL
  transcript with a worked example, so the model continues the pattern instead of following instructions.

Templates are filled with str.replace on named slots, never str.format: a user's custom prompt with a
literal "{" must not crash (the reference library's str.format did).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ContextError
from .toolkit import PROMPT as TOOLKIT_PROMPT

Context = str | list[str] | dict[str, str]


# Above this size the token count is extrapolated from a sample: exact tokenisation of 100 MB would take
# longer than the run's first turn and the model only needs the order of magnitude.
EXACT_TOKEN_LIMIT = 2_000_000
PREVIEW_CHARS = 240
PREVIEW_LINES = 4
PREVIEW_LINE_CHARS = 120

SYSTEM_PROMPT = """You are a Recursive Language Model. You answer a question about a context that is far too long to read at once. The context is NOT in this conversation: it is stored in a persistent Python REPL, and you work on it by writing code.

The REPL gives you:
- `context`: the data (a str; for several documents a list of str, also as `context_0`, `context_1`, ...; for named documents a dict of str).
- `llm_query(prompt: str) -> str`: ask a sub-model (it sees only the prompt you pass; it can read about SUB_CONTEXT_CHARS characters at a time).
- `llm_query_batched(prompts: list[str]) -> list[str]`: many independent sub-queries at once; much faster than a loop of llm_query.
- `rlm_query(prompt: str, context=None) -> str`: hand a sub-task with its own context to a child RLM with its own REPL.
- `rlm_query_batched(prompts: list[str], contexts=None) -> list[str]`: several child RLMs at once (one context per prompt).
- `FINAL(answer)`: call it with your final answer to finish. `FINAL_VAR("name")` finishes with the value of a variable.
- `SHOW_VARS()`: list the variables you have defined.
- These names are already defined: never assign to `context` or to the functions above (they are restored after every block); keep your own data in new variables.
- Modules you can import: re, json, math, collections, itertools, functools, statistics, string, textwrap, datetime, heapq, bisect, random. No files, network or other modules. Names starting with "_", `match` statements and `async` are not available.

How to work:
1. Look before you leap: print the length, a slice, or lines matching a regex. Printed output is truncated to OUTPUT_LIMIT characters, so print summaries, not the whole context.
2. Use code to filter (regex, keyword search, splitting into chunks) and sub-models to read: e.g. split the context into chunks and run `llm_query_batched([f"<instructions>\\n\\n{chunk}" for chunk in chunks])`. Put the shared instructions first and the varying chunk last.
3. Keep intermediate results in variables and build long answers piece by piece.
4. Verify a candidate answer (re-read the relevant part, or ask a sub-model) before finishing.
5. Write code in ```repl blocks; each reply may hold one or more blocks. Variables persist between blocks and turns. You will see each block's output.
6. When you know the answer, call FINAL(answer) inside a ```repl block (or write FINAL(answer) alone on a line). Do not guess before you have looked at the output of your code."""

TASK_IN_CONTEXT = "The task is described inside the context itself: find it there and complete it."

FIRST_TURN = """QUESTION: QUESTION_TEXT

Context metadata:
METADATA

You have not looked at the context yet: `context` is already loaded in the REPL (do not assign it). Start by writing code in a ```repl block."""

CELL_OUTPUT = "Output of your code:\n```\nOUTPUT\n```"

# A reply with neither code nor FINAL: say exactly what to write (small models answer in prose).
PROSE_NUDGE = (
    "Your reply had no ```repl code block and no FINAL(...). If that was your answer, reply with only "
    "FINAL(your answer) on one line, for example FINAL(42). Otherwise write code in a ```repl block."
)

# Escalating nudges for a reply that repeats the previous one with the same output (steering.py).
REPEAT_NUDGES = (
    "Note: this reply and its output are the same as your previous turn (or one just before); repeating it gives "
    "nothing new.",
    "You have sent the same reply TIMES times in a row with the same output. Try a different approach: other "
    "keywords or a case-insensitive regex, print a different part of `context`, or ask llm_query about a chunk.",
    "You are stuck: the same reply TIMES times in a row. Stop searching and give your best answer now from what "
    "you have seen, as FINAL(answer).",
)

RUNAWAY_NOTE = (
    "Note: your last reply repeated the same text TIMES times in a row ('UNIT'); it was cut after "
    "the first time. Write one short ```repl block per reply and wait for its output."
)

LENGTH_NOTE = (
    "Note: your last reply was cut at the length limit (MAX_TOKENS tokens). Keep replies short: one "
    "```repl block, no long explanations."
)

# The ``resample`` lever (levers.py): the model sent the code that just ran once more; it is not run again.
REPEATED_CELL = (
    "You sent the same code as in your previous turn. It already ran, and running it again gives the same "
    "output:\n```\nOUTPUT\n```\nDo something different: search another phrase from the question, print "
    "another part of `context`, or ask a sub-model about chunks. If that output answers the question, give "
    "FINAL(answer)."
)

# The ``ground`` lever: an answer the model wrote out that appears in nothing the run has seen.
UNGROUNDED = (
    "Your answer ANSWER appears in no output you have seen, so it may be a guess. Check it with code first "
    "(search for it, or print the part of the context it comes from). If you are sure, give FINAL(answer) again."
)

# The ``ground`` lever: a FINAL before the model has seen any output of its code.
UNSEEN_FINAL = (
    "You gave the answer ANSWER before seeing any output of your code, so nothing shows it is right. Print "
    "the evidence first (for example the lines it comes from), check it answers the question, then call "
    "FINAL(answer)."
)

# The ``ground`` lever: a number copied from a line while another printed line matches the question better.
CLOSER_LINE = (
    "Check your answer ANSWER: another line you saw matches the question more closely:\n  LINE\nRead the "
    "question again and take the value from the line about exactly what it asks; then call FINAL(answer)."
)

# The ``constrain`` lever: replies are held to this shape by a grammar, so the model is told the shape too.
ONE_BLOCK = "Each reply is exactly one ```repl block, or one line FINAL(answer) when you know the answer: nothing else."

IGNORED_FINAL = (
    "Note: FINAL(...) written in the same reply as code was ignored because it was written "
    "before the code's output was seen. Call FINAL(answer) once you have checked the output."
)

ASK_FOR_FINAL = (
    "STOP: the BUDGET budget of this run is used up. Do not write more code. Based on what you "
    "have found so far, give your best final answer now as FINAL(answer)."
)

# ---- completion layout for base models ----------------------------------------------------------------
# The worked example teaches the whole protocol by demonstration: search with a keyword from the question,
# read the printed hits, copy the answer into FINAL. A 270M base model continues such patterns far more
# reliably than it follows instructions.
COMPLETION_PREAMBLE = """Below are transcripts of a Python REPL. A long document is stored in the variable `context`; it is too long to read, so the analyst writes short code to search it, reads the printed output, and calls FINAL(answer) with the answer.

""" + "".join(
    f'''### Task: {question}
### Context: str, {length} characters.
```python
hits = [line for line in context.split("\\n") if "{keyword}" in line.lower()]
print(hits[:5])
```
Output:
[{hit!r}]
```python
FINAL("{answer}")
```

'''
    for question, length, keyword, hit, answer in (
        # Four examples measured best on the embedded model (9/10 needles vs 6/10 with two): more
        # demonstrations of "copy the distinctive phrase from the question" make a 270M model copy it whole.
        (
            "What is the access code for the north gate?",
            "48,213",
            "north gate",
            "Visitors use the side door. The access code for the north gate is 4471.",
            "4471",
        ),
        (
            "Which city did Maria Lopez move to?",
            "120,904",
            "maria lopez",
            "In 2019 Maria Lopez moved to Lisbon to open a bakery.",
            "Lisbon",
        ),
        (
            "What is the serial number of the blue tractor?",
            "75,330",
            "blue tractor",
            "The serial number of the blue tractor is 88-1302.",
            "88-1302",
        ),
        (
            "What is the password of the hidden cellar?",
            "210,118",
            "hidden cellar",
            "The password of the hidden cellar is: 5521.",
            "5521",
        ),
    )
)

COMPLETION_TASK = """### Task: QUESTION_TEXT
### Context: METADATA_LINE
```python
"""

COMPLETION_OUTPUT = "Output:\nOUTPUT\n```python\n"
# A base model would happily invent the next "Output:" itself; stop it at the end of its code block.
COMPLETION_STOP = ("```", "\n### ")


@dataclass
class ContextInfo:
    """What the root is told about the context: enough to plan, never the content itself."""

    kind: str  # "str", "list", "dict"
    total_chars: int
    total_tokens: int
    tokens_exact: bool
    chunk_chars: list[int]
    names: list[str]
    preview: str

    def what(self) -> str:
        """What ``context`` is, in the REPL's own terms."""
        n = len(self.chunk_chars)
        if self.kind == "str":
            return "str (one document)"
        if self.kind == "list":
            return f"list of {n} str ({n} documents: context[0] .. context[{n - 1}], also context_0 .. context_{n - 1})"
        return f"dict of {n} str ({n} named documents: context[name])"

    def describe(self) -> str:
        tokens = f"{self.total_tokens:,}" if self.tokens_exact else f"about {self.total_tokens:,}"
        lines = [f"- type: {self.what()}", f"- total length: {self.total_chars:,} characters, {tokens} tokens"]
        if self.kind == "list":
            shown = ", ".join(f"{n:,}" for n in self.chunk_chars[:50])
            more = f", ... ({len(self.chunk_chars) - 50} more)" if len(self.chunk_chars) > 50 else ""
            lines.append(f"- lengths of the documents in characters: {shown}{more}")
        if self.kind == "dict":
            shown = ", ".join(f"{k!r} ({n:,} chars)" for k, n in zip(self.names[:50], self.chunk_chars[:50]))
            lines.append(f"- the documents: {shown}")
        lines.append("- its first lines (a preview; `context` holds the whole text):")
        lines.extend(f"    {line}" for line in self.preview.split("\n"))
        return "\n".join(lines)

    def one_line(self) -> str:
        # The str case is the worked examples' own line (the base model copies their pattern).
        if self.kind == "str":
            return f"str, {self.total_chars:,} characters."
        return f"{self.kind} of {len(self.chunk_chars)} str, {self.total_chars:,} characters in all."

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "chars": self.total_chars,
            "tokens": self.total_tokens,
            "tokens_exact": self.tokens_exact,
            "chunk_chars": self.chunk_chars[:1000],
            "names": self.names[:1000],
        }


def context_pieces(context: Context) -> list[str]:
    if isinstance(context, str):
        return [context]
    if isinstance(context, dict):
        return list(context.values())
    return list(context)


def describe_context(context: Context, count_tokens: Callable[[str], int]) -> ContextInfo:
    pieces = context_pieces(context)
    total_chars = sum(len(p) for p in pieces)
    if total_chars <= EXACT_TOKEN_LIMIT:
        tokens, exact = sum(count_tokens(p) for p in pieces), True
    else:  # sample from the first pieces without copying the whole context
        sample, want = "", EXACT_TOKEN_LIMIT // 8
        for p in pieces:
            sample += p[: want - len(sample)]
            if len(sample) >= want:
                break
        tokens, exact = int(count_tokens(sample) * total_chars / max(1, len(sample))), False
    kind = "str" if isinstance(context, str) else "dict" if isinstance(context, dict) else "list"
    first = pieces[0] if pieces else ""
    return ContextInfo(
        kind=kind,
        total_chars=total_chars,
        total_tokens=tokens,
        tokens_exact=exact,
        chunk_chars=[len(p) for p in pieces] if kind != "str" else [total_chars],
        names=list(context) if isinstance(context, dict) else [],
        preview=_preview(first),
    )


def _preview(text: str) -> str:
    """The first lines of a document as they are laid out (up to PREVIEW_LINES lines, PREVIEW_CHARS in all, each
    line clipped), so the root sees the format: collapsing the lines into one hid a line-per-record layout and a
    small model copied the collapsed text into its code as if it were the document."""
    lines, used = [], 0
    for line in text[: PREVIEW_CHARS * 2].split("\n")[:PREVIEW_LINES]:
        line = line.rstrip()
        if len(line) > PREVIEW_LINE_CHARS:
            line = line[:PREVIEW_LINE_CHARS] + " ..."
        lines.append(line)
        used += len(line)
        if used >= PREVIEW_CHARS:
            break
    return "\n".join(lines)


def tools_prompt(tools: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """The lines that tell the root model about the caller's custom tools: the caller's description from
    ``notes``, else the function's first docstring line."""
    rows = []
    for name, value in tools.items():
        if notes and notes.get(name):
            rows.append(f"- `{name}{'(...)' if callable(value) else ''}`: {notes[name]}")
        elif callable(value):
            doc = (getattr(value, "__doc__", None) or "").strip().splitlines()
            rows.append(f"- `{name}(...)`" + (f": {doc[0]}" if doc else ": a function (JSON arguments and result)"))
        else:
            rows.append(f"- `{name}`: read-only data ({type(value).__name__})")
    return "Extra tools in the REPL:\n" + "\n".join(rows) if rows else ""


def system_prompt(
    output_limit: int, sub_context_tokens: int = 32_768, toolkit: bool = False, one_block: bool = False
) -> str:
    """Our chat system prompt: the paper's protocol, then (``toolkit``) the REPL helpers and a worked example
    per task shape, then (``one_block``) the reply shape a grammar holds the model to. A caller's
    ``custom_system_prompt`` replaces all of it (instructions.py)."""
    # ~3 characters a token leaves room for the sub-model's answer and template.
    text = SYSTEM_PROMPT.replace("OUTPUT_LIMIT", f"{output_limit:,}").replace(
        "SUB_CONTEXT_CHARS", f"{max(4_000, sub_context_tokens * 3) // 1000 * 1000:,}"
    )
    return "\n\n".join(p for p in (text, TOOLKIT_PROMPT if toolkit else "", ONE_BLOCK if one_block else "") if p)


# The toolkit lever's hint after the first turn (before the user's prologue), where a small model reads most
# closely.
TOOLKIT_START = (
    "Start with search(...) for a distinctive phrase of the question, or print a part of `context` to see its "
    "layout. When something must be judged by reading each record (a label, a topic, relevance), regex cannot "
    "do it: use ask_each(question, records, choices=[...])."
)


def first_turn(question: str | None, info: ContextInfo) -> str:
    return FIRST_TURN.replace("METADATA", info.describe()).replace("QUESTION_TEXT", question or TASK_IN_CONTEXT)


def cell_feedback(outputs: list[str]) -> str:
    return "\n\n".join(CELL_OUTPUT.replace("OUTPUT", o) for o in outputs)


def completion_task(question: str | None, info: ContextInfo) -> str:
    return COMPLETION_TASK.replace("METADATA_LINE", info.one_line()).replace(
        "QUESTION_TEXT", " ".join((question or TASK_IN_CONTEXT).split())
    )


def completion_output(output: str) -> str:
    return COMPLETION_OUTPUT.replace("OUTPUT", output.rstrip("\n") or "(no output)")


# Base models answer a sub-call on one line: with this frame the embedded model answered 4 of 4 probes
# ("Paris", "4", a looked-up code, a summary); with "\n\nAnswer:" it opened with blank lines and said nothing.
SUBCALL_COMPLETION_STOP = ("\n",)


def flatten_context(context: Context) -> str:
    if isinstance(context, dict):
        return "\n\n".join(f"## {k}\n{v}" for k, v in context.items())
    return context if isinstance(context, str) else "\n\n".join(context)


def check_context(prompt: Any) -> Context:
    """A usable context from what the caller passed, or ContextError. Chat messages (a list of
    ``{"role", "content"}`` dicts, as the reference accepts) become a list of "role: content" strings."""
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, dict) for p in prompt):
        if not all(isinstance(m.get("content"), str) for m in prompt):
            raise ContextError("a list of messages needs a str 'content' in every message")
        prompt = [f"{m['role']}: {m['content']}" if isinstance(m.get("role"), str) else m["content"] for m in prompt]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ContextError("the context is empty")
        return prompt
    if isinstance(prompt, (list, tuple)):
        if not prompt or not all(isinstance(p, str) for p in prompt):
            raise ContextError("a list context must be a non-empty list of str (or of chat messages)")
        if not any(p.strip() for p in prompt):
            raise ContextError("the context is empty")
        return list(prompt)
    if isinstance(prompt, dict):
        if not prompt or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompt.items()):
            raise ContextError("a dict context must map str names to str documents")
        if not any(v.strip() for v in prompt.values()):
            raise ContextError("the context is empty")
        return dict(prompt)
    raise ContextError(
        f"the context must be a str, a list of str, a list of chat messages or a dict of str, "
        f"not {type(prompt).__name__}"
    )
