"""Compatibility suite: realistic model-written cells run in order in one sandbox session must print
exactly what plain CPython prints for them (notebook-style echo of the last expression included)."""

from __future__ import annotations

import ast
import contextlib
import io

import pytest

from .compat_cells import CELLS, CONTEXT
from .conftest import echo_handler


def run_plain(cells: list[str]) -> tuple[list[str], list[str | None]]:
    """Reference: the same cells in plain CPython, same names, same handler."""
    final: list[str | None] = [None]
    ns: dict = {"__name__": "__main__", "context": CONTEXT}
    ns.update(
        llm_query=lambda p, model=None: echo_handler([p])[0],
        llm_query_batched=lambda ps, model=None: echo_handler(list(ps)),
        rlm_query=lambda p, context=None, model=None: echo_handler([p])[0],
        FINAL=lambda v: final.__setitem__(0, str(v)),
        FINAL_VAR=lambda name: final.__setitem__(0, str(ns[name])),
    )
    outs, finals = [], []
    for cell in cells:
        final[0] = None
        tree = ast.parse(cell)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(tree, "<cell>", "exec"), ns)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
                if value is not None:
                    print(repr(value))
        outs.append(buf.getvalue())
        finals.append(final[0])
    return outs, finals


@pytest.fixture(scope="module")
def results():
    from rlm_local.sandbox import Limits, Sandbox

    expected, expected_finals = run_plain(CELLS)
    with Sandbox(context=CONTEXT, llm_handler=echo_handler, limits=Limits(wall_seconds=20)) as sb:
        got = [sb.run(cell) for cell in CELLS]
    return expected, expected_finals, got


def test_enough_cells():
    assert len(CELLS) >= 60


@pytest.mark.parametrize("i", range(len(CELLS)))
def test_cell_matches_cpython(i, results):
    expected, expected_finals, got = results
    r = got[i]
    assert r.error is None, f"cell {i} failed in the sandbox:\n{CELLS[i]}\n--> {r.error}"
    assert r.stdout == expected[i], f"cell {i}:\n{CELLS[i]}"
    assert r.final == expected_finals[i]
