"""Implicit batching: rewritten cells behave exactly like the originals (same variables, same prompts in the
same order) with one batched call per rewrite; cells that are not provably independent stay byte-identical.
The rewrite is what is under test, so cells run with plain exec and recording sub-call functions; the
rewritten text is also compiled with RestrictedPython, as the sandbox will."""

from __future__ import annotations

import contextlib
import copy
import io
import random
import textwrap

import pytest
from RestrictedPython import compile_restricted_exec

from rlm_local.loop.batching import rewrite_sibling_calls

CHUNKS = ["alpha text", "beta", "gamma needle", "delta needle text"]


def run(code: str, env: dict) -> tuple[dict, list]:
    calls: list = []

    def llm_query(prompt):
        calls.append(("one", prompt))
        return f" A<{prompt}> "

    def llm_query_batched(prompts):
        calls.append(("batch", list(prompts)))
        return [f" A<{p}> " for p in prompts]

    ns = {"llm_query": llm_query, "llm_query_batched": llm_query_batched, **copy.deepcopy(env)}
    exec(compile(code, "<cell>", "exec"), ns)
    visible = {k: v for k, v in ns.items() if not k.startswith("__") and not callable(v)}
    return visible, calls


def prompts_of(calls: list) -> list[str]:
    return [p for kind, arg in calls for p in ([arg] if kind == "one" else arg)]


REWRITTEN = {
    "listcomp": ("answers = [llm_query(f'Summarize: {c}') for c in chunks]\n", 1),
    "listcomp_filter_nested": (
        "pairs = [llm_query(a + ' vs ' + b) for a in chunks for b in chunks if a < b if 'needle' in a + b]\n",
        1,
    ),
    "list_of_generator": ("out = list(llm_query(c.upper()) for c in chunks)\nn = len(out)\n", 1),
    "tuple_and_join": (
        "t = tuple(llm_query(c) for c in chunks)\n"
        "joined = '\\n'.join(llm_query(\n    'Q ' + c  # a comment\n) for c in chunks)\n",
        2,
    ),
    "loop_append": (
        """
        results = []
        for c in chunks:
            results.append(llm_query(f"Find the needle in: {c}"))
        total = len(results)
        """,
        1,
    ),
    "loop_store_dict": (
        """
        out = {}
        for k, v in table.items():
            out[k] = llm_query(f"{k} means {v}?")
        """,
        1,
    ),
    "loop_assign_then_append": (
        """
        results = []
        for i, c in enumerate(chunks):
            prompt = f"Chunk {i} of {len(chunks)}:\\n{c}"
            prompt = prompt.strip() + "\\nAnswer briefly."
            answer = llm_query(prompt)
            cleaned = answer.strip()
            results.append((i, cleaned))
            if "needle" in cleaned:
                found.append(i)
        """,
        1,
    ),
    "loop_if_filter": (
        """
        hits = []
        for c in chunks:
            if "needle" in c:
                hits.append(llm_query("Where is the needle? " + c))
            else:
                skipped.append(c)
        """,
        1,
    ),
    "loop_in_function": (
        """
        def ask_all(items):
            acc = []
            for it in items:
                acc.append(llm_query("about " + it))
            return acc
        result = ask_all(chunks)
        again = ask_all(chunks[:1])
        """,
        1,
    ),
    "nested_inner_loop": (
        """
        grid = []
        for row in range(2):
            line = []
            for c in chunks:
                line.append(llm_query(f"{row}:{c}"))
            grid.append(line)
        """,
        1,
    ),
    "empty_iterable": (
        """
        c = "untouched"
        res = []
        for c in []:
            res.append(llm_query(c))
        """,
        1,
    ),
    "two_loops_blank_lines": (
        """
        a = []

        for c in chunks:
            a.append(llm_query("one " + c))

        b = {}
        for n, c in enumerate(chunks):
            b[n] = llm_query("two " + c)

        done = True
        """,
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_rewrite_behaves_like_the_original(name):
    code, expected = REWRITTEN[name]
    code = textwrap.dedent(code).lstrip("\n")
    env = {"chunks": list(CHUNKS), "table": {"x": "ex", "y": "why"}, "found": [], "skipped": []}
    new, n = rewrite_sibling_calls(code)
    assert n == expected, new
    assert "llm_query(" not in new.replace("llm_query_batched(", "")
    ns_old, calls_old = run(code, env)
    ns_new, calls_new = run(new, env)
    assert ns_new == ns_old  # every variable, loop variables and helper variables included; no leftovers
    assert prompts_of(calls_new) == prompts_of(calls_old)
    assert all(kind == "batch" for kind, _ in calls_new)
    assert all(kind == "one" for kind, _ in calls_old)
    restricted = compile_restricted_exec(new, "<cell>")
    assert not restricted.errors, restricted.errors


def test_one_batched_call_per_loop_and_line_numbers_kept():
    code = textwrap.dedent("""
        results = []

        for c in chunks:
            results.append(llm_query("Q: " + c))

        x = 1 / 0
        """).lstrip("\n")
    new, n = rewrite_sibling_calls(code)
    assert n == 1
    assert new.count("\n") == code.count("\n")  # the helper statements share existing lines
    _, calls = run(new.replace("x = 1 / 0", "x = 0"), {"chunks": CHUNKS})
    assert calls == [("batch", [f"Q: {c}" for c in CHUNKS])]
    with pytest.raises(ZeroDivisionError) as info:
        run(new, {"chunks": CHUNKS})
    assert info.traceback[-1].lineno + 1 == 6  # the error is reported on the line the model wrote it


def test_loop_helpers_use_blank_lines_or_add_lines_only_when_needed():
    code = "if flag:\n\n    for c in chunks:\n        res.append(llm_query(c))\n\nelse:\n    pass\n"
    new, n = rewrite_sibling_calls(code)
    assert n == 1 and new.count("\n") == code.count("\n")
    ns_old, _ = run(code, {"chunks": CHUNKS, "flag": True, "res": []})
    ns_new, _ = run(new, {"chunks": CHUNKS, "flag": True, "res": []})
    assert ns_new == ns_old
    bare = "def f():\n    for c in chunks:\n        res.append(llm_query(c))\nf()"
    new, n = rewrite_sibling_calls(bare)
    assert n == 1 and new.count("\n") == bare.count("\n") + 2
    assert run(new, {"chunks": CHUNKS, "res": []})[0] == run(bare, {"chunks": CHUNKS, "res": []})[0]


def test_comprehension_rewrite_keeps_the_line_count():
    code = "ys = [llm_query(\n    'p ' + c\n) for c in chunks]\nz = 2\n"
    new, n = rewrite_sibling_calls(code)
    assert n == 1 and new.count("\n") == code.count("\n") and "llm_query_batched(" in new.splitlines()[2]


@pytest.mark.parametrize("shape", ["listcomp", "generator", "loop"])
def test_long_lists_are_asked_in_slices_of_max_prompts(shape):
    cell = {
        "listcomp": "ys = [llm_query('q' + str(i)) for i in range(600)]\n",
        "generator": "ys = '|'.join(llm_query('q' + str(i)) for i in range(600))\n",
        "loop": "ys = []\nfor i in range(600):\n    ys.append(llm_query('q' + str(i)))\n",
    }[shape]
    new, n = rewrite_sibling_calls(cell, max_prompts=256)
    assert n == 1
    ns_old, calls_old = run(cell, {})
    ns_new, calls_new = run(new, {})
    assert ns_new == ns_old and prompts_of(calls_new) == prompts_of(calls_old)
    assert [len(arg) for _, arg in calls_new] == [256, 256, 88]
    assert run(rewrite_sibling_calls("ys = [llm_query(c) for c in []]\n")[0], {})[1] == []  # no empty batch


NOT_REWRITTEN = {
    "depends_on_previous_result": """
        summary = ""
        for c in chunks:
            summary = llm_query(f"Previous summary: {summary}\\nNew chunk: {c}")
        """,
    "prompt_reads_results_list": """
        results = []
        for c in chunks:
            results.append(llm_query(f"{results[-1] if results else ''} {c}"))
        """,
    "helper_reads_results": """
        results = []
        for c in chunks:
            p = str(len(results)) + c
            results.append(llm_query(p))
        """,
    "break_in_loop": """
        results = []
        for c in chunks:
            results.append(llm_query(c))
            break
        """,
    "continue_in_loop": """
        results = []
        for c in chunks:
            if not c:
                continue
            results.append(llm_query(c))
        """,
    "early_exit_on_answer": """
        for c in chunks:
            r = llm_query(c)
            if "yes" in r:
                FINAL(r)
        """,
    "nested_llm_query_in_prompt": "xs = [llm_query(llm_query(c)) for c in chunks]\n",
    "while_loop": """
        i = 0
        out = []
        while i < len(chunks):
            out.append(llm_query(chunks[i]))
            i += 1
        """,
    "print_in_loop": """
        out = []
        for c in chunks:
            out.append(llm_query(c))
            print(c)
        """,
    "for_else": """
        out = []
        for c in chunks:
            out.append(llm_query(c))
        else:
            out.append("end")
        """,
    "two_calls_per_iteration": """
        out = []
        for c in chunks:
            out.append(llm_query(c))
            out.append(llm_query(c + "?"))
        """,
    "user_function_builds_prompt": "xs = [llm_query(make_prompt(c)) for c in chunks]\n",
    "user_function_iterable": """
        out = []
        for c in produce():
            out.append(llm_query(c))
        """,
    "llm_query_redefined": "llm_query = lambda p: p\nxs = [llm_query(c) for c in chunks]\n",
    "batched_redefined": "def llm_query_batched(ps):\n    return ps\nxs = [llm_query(c) for c in chunks]\n",
    "keyword_arguments": "xs = [llm_query(c, model='big') for c in chunks]\n",
    "walrus_in_comprehension": "xs = [llm_query(last := c) for c in chunks]\n",
    "rlm_query_in_loop": """
        out = []
        for c in chunks:
            out.append(rlm_query(c))
            out.append(llm_query(c))
        """,
    "store_into_attribute": """
        for c in chunks:
            state.last = llm_query(c)
        """,
    "append_to_attribute_container": """
        for c in chunks:
            state.items.append(llm_query(c))
        """,
    "body_mutates_what_prompt_reads": """
        seen = []
        out = []
        for c in chunks:
            out.append(llm_query(f"{seen} {c}"))
            seen.append(c)
        """,
    "iterating_the_results": """
        for c in out:
            out.append(llm_query(c))
        """,
    "accumulating_helper": """
        acc = ""
        out = []
        for c in chunks:
            acc = acc + c
            out.append(llm_query(acc))
        """,
    "conditional_helper_before_call": """
        out = []
        for c in chunks:
            if c:
                p = c
            out.append(llm_query(p))
        """,
    "return_in_function_loop": """
        def f():
            for c in chunks:
                r = llm_query(c)
                return r
        """,
    "any_short_circuits": "hit = any(llm_query(c) for c in chunks)\n",
    "loop_in_class_body": """
        class K:
            out = []
            for c in ["a", "b"]:
                out.append(llm_query(c))
        """,
    "async_loop": """
        async def f():
            out = []
            async for c in stream:
                out.append(llm_query(c))
        """,
    "loop_target_is_attribute": """
        out = []
        for state.x in chunks:
            out.append(llm_query(state.x))
        """,
    "inside_fstring": 's = f"{[llm_query(c) for c in chunks]}"\n',
    "syntax_error": "for c in chunks\n    out.append(llm_query(c))\n",
}


@pytest.mark.parametrize("name", sorted(NOT_REWRITTEN))
def test_not_provably_independent_is_left_byte_identical(name):
    code = textwrap.dedent(NOT_REWRITTEN[name]).lstrip("\n")
    new, n = rewrite_sibling_calls(code)
    assert n == 0 and new is code


def test_only_the_independent_part_of_a_cell_is_rewritten():
    code = textwrap.dedent("""
        summary = ""
        for c in chunks:
            summary = llm_query(summary + c)
        answers = [llm_query("Q " + c) for c in chunks]
        """).lstrip("\n")
    new, n = rewrite_sibling_calls(code)
    assert n == 1
    assert "summary = llm_query(summary + c)" in new
    ns_old, calls_old = run(code, {"chunks": CHUNKS})
    ns_new, calls_new = run(new, {"chunks": CHUNKS})
    assert ns_new == ns_old and prompts_of(calls_new) == prompts_of(calls_old)


def test_helper_names_never_clash_with_user_names():
    code = "rlm_batch_0_out = 5\nres = []\nfor c in chunks:\n    res.append(llm_query(c))\n"
    new, n = rewrite_sibling_calls(code)
    assert n == 1 and "rlm_batch_1_out" in new
    ns_old, _ = run(code, {"chunks": CHUNKS})
    ns_new, _ = run(new, {"chunks": CHUNKS})
    assert ns_new == ns_old and ns_new["rlm_batch_0_out"] == 5


def test_untouched_inputs():
    assert rewrite_sibling_calls("") == ("", 0)
    code = "x = 1  # no sub-calls here\n"
    assert rewrite_sibling_calls(code)[0] is code
    with pytest.raises(TypeError):
        rewrite_sibling_calls(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_prompts"):
        rewrite_sibling_calls(code, max_prompts=0)
    shadowed = "def range(n):\n    return []\nys = [llm_query(c) for c in chunks]\n"
    assert rewrite_sibling_calls(shadowed) == (shadowed, 0)  # the generated code needs the real range


FUZZ_STATEMENTS = [
    "p = f'<{c}>'",
    "p = p + c",
    "p = c.upper() + str(len(c))",
    "x = llm_query(p)",
    "x = llm_query(c)",
    "results.append(x)",
    "results.append(llm_query(c + str(len(results))))",
    "out[c] = x",
    "out[c] = llm_query(p)",
    "if 'e' in c:\n    results.append(llm_query(c))",
    "if 'a' in c:\n    x = llm_query(p)\nelse:\n    acc.append(x)",
    "results.append(llm_query(c))",
    "x = x + '!'",
    "print(c, x)",
    "acc.append(c)",
    "p = str(acc)",
    "results.append((c, x))",
    "if x:\n    acc.append(x.strip())",
]


def test_random_cells_behave_like_the_original():
    rng = random.Random(1234)
    rewritten = 0
    for _ in range(400):
        body = "\n".join(rng.choice(FUZZ_STATEMENTS) for _ in range(rng.randint(1, 4)))
        head = rng.choice(["for c in chunks:", "for n, c in enumerate(chunks):", "for c in chunks[1:]:"])
        code = (
            "p = ''\nx = ''\nresults = []\nout = {}\nacc = []\n"
            + head
            + "\n"
            + textwrap.indent(body, "    ")
            + "\ndone = 1\n"
        )
        new, n = rewrite_sibling_calls(code)
        outcomes = []
        for text in (code, new):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                ns, calls = run(text, {"chunks": list(CHUNKS)})
            outcomes.append((ns, prompts_of(calls), buf.getvalue()))
        assert outcomes[1] == outcomes[0], (code, new)
        rewritten += n
    assert rewritten > 50  # the generator must exercise the rewrite, not only the refusals


def test_rewritten_cell_runs_in_the_real_sandbox():
    from rlm_local.sandbox import Sandbox

    batches: list[list[str]] = []

    def handler(prompts: list[str]) -> list[str]:
        batches.append(list(prompts))
        return [f"A<{p}>" for p in prompts]

    code = textwrap.dedent("""
        chunks = [context[i:i + 5] for i in range(0, len(context), 5)]
        results = []
        for i, c in enumerate(chunks):
            p = f"Chunk {i}: {c}"
            results.append(llm_query(p))
        answers = [llm_query("Q " + c) for c in chunks if c]
        print(len(results), results[-1], answers[0], i, p)
        print(undefined_name)
        """).lstrip("\n")
    new, n = rewrite_sibling_calls(code)
    assert n == 2
    outs = []
    for text in (code, new):
        batches.clear()
        with Sandbox(context="abcdefghijklmnopqrstuvwxyz", llm_handler=handler) as sb:
            cell = sb.run(text)
        outs.append((cell.stdout, cell.error, [p for b in batches for p in b]))
        sizes = [len(b) for b in batches]
    assert outs[1] == outs[0]  # same output, same error (same line number), same prompts in order
    assert "line 8" in outs[0][1]
    assert sizes == [6, 6]
