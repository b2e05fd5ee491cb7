"""Implicit batching: rewrite sibling ``llm_query`` calls that cannot depend on each other into one
``llm_query_batched`` call, before the sandbox compiles a cell.

Two shapes are rewritten:
  (a) ``[llm_query(P) for ...]`` anywhere, and ``list(...)`` / ``tuple(...)`` / ``sep.join(...)`` of a
      generator whose element is ``llm_query(P)``: the prompts ``[P for ...]`` are built first, then asked
      with ``llm_query_batched`` in slices of at most ``max_prompts`` (the sandbox's per-call limit);
  (b) a ``for`` loop whose body, besides pure helper assignments and ``if`` filters, makes exactly one
      ``llm_query(P)`` call and stores its result (``R.append(...)``, ``R[K] = ...``, ``x = ...`` then
      ``R.append(x)``), where no prompt can read anything the body writes. It becomes
          rlm_batch_0_items = [...the iterable, evaluated once...]; rlm_batch_0_out = <answers, batched>
          for <target> in rlm_batch_0_items:      # the original body, the call replaced by
              ...rlm_batch_0_out.pop()...         # the next answer (the list is reversed first)
          del rlm_batch_0_items, rlm_batch_0_out
      so the loop variable, every helper variable and the containers end exactly as before.

Everything hoisted out of the loop (prompts, filters, helper assignments, the iterable) must be built from a
whitelist of side-effect-free operations; anything not provably independent is left as written, and code
that does not parse is returned byte-identical. Edits are spliced into the original text, so comments and
line numbers survive: the two helper statements of a loop rewrite share the lines of the statements
around the loop (or blank lines); only where there are none does the rewrite add a line.
Known difference: if building a prompt raises part-way, the rewritten code raises before any sub-call
instead of after the earlier ones. The generated code uses only ``llm_query_batched``, ``range``, ``len``,
list slicing/``reverse``/``pop``, ``del`` and names ``rlm_batch_<k>_*`` (no leading underscores, which
RestrictedPython refuses).
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from typing import TypeGuard

CALL = "llm_query"
BATCHED = "llm_query_batched"

# Calls that read their arguments and change nothing (on the types model code passes them).
PURE_FUNCTIONS = frozenset(
    {
        "str",
        "repr",
        "len",
        "int",
        "float",
        "bool",
        "round",
        "abs",
        "min",
        "max",
        "sorted",
        "list",
        "tuple",
        "set",
        "frozenset",
        "dict",
        "range",
        "enumerate",
        "zip",
        "reversed",
        "sum",
        "any",
        "all",
        "format",
        "isinstance",
        "ord",
        "chr",
        "hex",
        "oct",
        "bin",
        "divmod",
    }
)
PURE_METHODS = frozenset(
    {
        "format",
        "join",
        "strip",
        "lstrip",
        "rstrip",
        "lower",
        "upper",
        "title",
        "capitalize",
        "casefold",
        "replace",
        "split",
        "rsplit",
        "splitlines",
        "startswith",
        "endswith",
        "find",
        "rfind",
        "count",
        "index",
        "rindex",
        "get",
        "keys",
        "values",
        "items",
        "zfill",
        "center",
        "ljust",
        "rjust",
        "partition",
        "rpartition",
        "removeprefix",
        "removesuffix",
        "expandtabs",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "isupper",
        "islower",
        "dumps",
        "encode",
        "decode",
    }
)
_PURE_NODES = (
    ast.Constant,
    ast.Name,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Subscript,
    ast.Slice,
    ast.Tuple,
    ast.List,
    ast.Set,
    ast.Dict,
    ast.Attribute,
    ast.Starred,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.Call,
    ast.keyword,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)
_SIMPLE = (
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Expr,
    ast.Pass,
    ast.Import,
    ast.ImportFrom,
    ast.Delete,
    ast.Global,
    ast.Nonlocal,
    ast.Assert,
)
_JOINERS = ("list", "tuple")  # plus any ``<expr>.join``: they consume the whole generator, in order


def rewrite_sibling_calls(code: str, max_prompts: int = 256) -> tuple[str, int]:
    """Return ``(new_code, number_of_rewrites)``; ``code`` itself when nothing is rewritten. Each batched
    call carries at most ``max_prompts`` prompts (the sandbox's prompts-per-call limit); longer lists are
    sent as consecutive batched calls."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(max_prompts, int) or max_prompts < 1:
        raise ValueError(f"max_prompts must be an int >= 1, got {max_prompts!r}")
    if CALL not in code or "\r" in code:
        return code, 0
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code, 0
    try:
        rewriter = _Rewriter(code, tree, max_prompts)
        if not rewriter.usable:
            return code, 0
        rewriter.visit(tree, in_class=False)
        if not rewriter.edits:
            return code, 0
        new_code = rewriter.apply()
        ast.parse(new_code)
    except Exception:  # an optimisation must never break the model's cell: run it as written
        return code, 0
    return new_code, rewriter.count


# ------------------------------------------------------------------------------------------ analysis


def _bound_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names the cell binds anywhere, every identifier it mentions)."""
    bound: set[str] = set()
    seen: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            seen.add(node.id)
            if not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        elif isinstance(node, ast.Attribute):
            seen.add(node.attr)
    return bound, seen | bound


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _is_call(node: ast.AST | None) -> TypeGuard[ast.Call]:
    """``llm_query(P)`` with exactly one positional argument."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == CALL
        and len(node.args) == 1
        and not node.keywords
        and not isinstance(node.args[0], ast.Starred)
    )


def _target_names(target: ast.AST) -> set[str] | None:
    """Names bound by a for target made only of names, tuples, lists and starred names; else None."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        out: set[str] = set()
        for elt in target.elts:
            sub = _target_names(elt)
            if sub is None:
                return None
            out |= sub
        return out
    return None


class _Subst(ast.NodeTransformer):
    """Replace reads of helper variables with the expressions assigned to them earlier in the body."""

    def __init__(self, env: dict[str, ast.expr]) -> None:
        self.env = env

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            return copy.deepcopy(self.env[node.id])
        return node


def _subst(node: ast.expr, env: dict[str, ast.expr]) -> ast.expr:
    return _Subst(env).visit(copy.deepcopy(node)) if env else node


@dataclass
class _LoopPlan:
    env: dict[str, ast.expr] = field(default_factory=dict)  # helper assignments before the call
    stored: set[str] = field(default_factory=set)  # names the loop assigns (its target included)
    containers: set[str] = field(default_factory=set)  # variables the loop appends or stores into
    call: ast.Call | None = None
    prompt: ast.expr | None = None  # with helpers substituted
    test: ast.expr | None = None  # the filter guarding the call, substituted


class _Rewriter:
    def __init__(self, code: str, tree: ast.Module, max_prompts: int) -> None:
        self.max_prompts = max_prompts
        self.src = code.encode("utf-8")
        self.line_starts = [0]
        for i, b in enumerate(self.src):
            if b == 0x0A:
                self.line_starts.append(i + 1)
        bound, self.identifiers = _bound_names(tree)
        self.usable = not ({CALL, BATCHED, "range", "len"} & bound)  # names the generated code relies on
        self.pure_functions = PURE_FUNCTIONS - bound
        self.siblings: dict[ast.For, tuple[ast.stmt | None, ast.stmt | None]] = {}
        for node in ast.walk(tree):
            for value in ast.iter_fields(node):
                body = value[1]
                if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                    for i, stmt in enumerate(body):
                        if isinstance(stmt, ast.For):
                            self.siblings[stmt] = (
                                body[i - 1] if i else None,
                                body[i + 1] if i + 1 < len(body) else None,
                            )
        self.edits: list[tuple[int, int, bytes]] = []
        self.used_lines: set[int] = set()
        self.count = 0
        self.next_id = 0

    # -------------------------------------------------------------------- purity

    def pure(self, node: ast.AST | None) -> bool:
        if node is None:
            return True
        for n in ast.walk(node):
            if not isinstance(n, _PURE_NODES):
                return False
            if isinstance(n, ast.comprehension) and n.is_async:
                return False
            if isinstance(n, ast.Call):
                f = n.func
                ok = (isinstance(f, ast.Name) and f.id in self.pure_functions) or (
                    isinstance(f, ast.Attribute) and f.attr in PURE_METHODS
                )
                if not ok:
                    return False
        return True

    # -------------------------------------------------------------------- traversal

    def visit(self, node: ast.AST, in_class: bool) -> None:
        if isinstance(node, ast.JoinedStr):
            return  # positions inside f-strings are unreliable before Python 3.12
        if isinstance(node, ast.For) and not in_class and self.try_loop(node):
            return
        if isinstance(node, ast.ListComp) and self.try_listcomp(node):
            return
        if isinstance(node, ast.Call) and self.try_generator_call(node):
            return
        if isinstance(node, ast.ClassDef):
            in_class = True
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_class = False
        for child in ast.iter_child_nodes(node):
            self.visit(child, in_class)

    # -------------------------------------------------------------------- (a) comprehensions

    def comprehension_ok(self, elt: ast.AST, generators: list[ast.comprehension]) -> TypeGuard[ast.Call]:
        return (
            _is_call(elt)
            and self.pure(elt.args[0])
            and all(not g.is_async and self.pure(g.iter) and all(self.pure(c) for c in g.ifs) for g in generators)
        )

    def try_listcomp(self, node: ast.ListComp) -> bool:
        if not self.comprehension_ok(node.elt, node.generators):
            return False
        start, end = self.span(node)
        if self.src[start : start + 1] != b"[" or self.src[end - 1 : end] != b"]":
            return False
        prefix, suffix = self.chunked_call()
        self.edits.append((start, start, prefix.encode()))
        self.replace_call_with_prompt(node.elt)
        self.edits.append((end, end, suffix.encode()))
        self.count += 1
        return True

    def try_generator_call(self, node: ast.Call) -> bool:
        f = node.func
        consumer = (isinstance(f, ast.Name) and f.id in _JOINERS and f.id in self.pure_functions) or (
            isinstance(f, ast.Attribute) and f.attr == "join"
        )
        if not consumer or len(node.args) != 1 or node.keywords:
            return False
        gen = node.args[0]
        if not isinstance(gen, ast.GeneratorExp) or not self.comprehension_ok(gen.elt, gen.generators):
            return False
        start, end = self.span(gen)
        if self.src[start : start + 1] != b"(" or self.src[end - 1 : end] != b")":
            return False  # positions not as this interpreter version reports them: leave it
        prefix, suffix = self.chunked_call()
        self.edits.append((start + 1, start + 1, (prefix + "[").encode()))
        self.replace_call_with_prompt(gen.elt)
        self.edits.append((end - 1, end - 1, ("]" + suffix).encode()))
        self.count += 1
        return True

    def chunked_call(self) -> tuple[str, str]:
        """Text to put around a list display of prompts so that it becomes the list of answers, asked in
        batched calls of at most max_prompts (all names are local to the comprehension)."""
        items, _, item, k = self.fresh_names()
        n = self.max_prompts
        return (
            f"[{item} for {items} in [",
            f"] for {k} in range(0, len({items}), {n}) for {item} in {BATCHED}({items}[{k}:{k} + {n}])]",
        )

    def replace_call_with_prompt(self, call: ast.Call) -> None:
        start, end = self.span(call)
        pstart, pend = self.span(call.args[0])
        assert self.src[start:end].startswith(CALL.encode()) and start < pstart <= pend <= end
        text = self.src[pstart:pend]
        # Inside brackets, so dropped line breaks can be put back after the prompt to keep line numbers.
        pad = self.src[start:end].count(b"\n") - text.count(b"\n")
        self.edits.append((start, end, text + b"\n" * pad))

    # -------------------------------------------------------------------- (b) for loops

    def try_loop(self, loop: ast.For) -> bool:
        targets = _target_names(loop.target)
        if loop.orelse or targets is None or not self.pure(loop.iter):
            return False
        plan = _LoopPlan(stored=set(targets))
        for node in ast.walk(loop):  # names bound inside comprehensions stay local to them
            if isinstance(node, ast.Assign):
                plan.stored.update(n.id for n in node.targets if isinstance(n, ast.Name))
        if not self.plan_block(loop.body, plan, guarded=False) or plan.call is None:
            return False
        assert plan.prompt is not None  # take_call sets call and prompt together
        hoisted = _names(plan.prompt) | (_names(plan.test) if plan.test is not None else set())
        written = plan.stored | plan.containers
        if hoisted & (written - targets) or _names(loop.iter) & written:
            return False  # a prompt could read what an earlier iteration wrote
        prompt_src = self.unparse(plan.prompt)
        test_src = self.unparse(plan.test) if plan.test is not None else ""
        if prompt_src is None or test_src is None:
            return False
        items, out, item, k = self.fresh_names()
        indent = self.line_text(loop.lineno)[: loop.col_offset].decode("utf-8")
        if indent.strip():
            return False
        target_src = self.unparse(loop.target, as_target=True)
        iter_src = self.unparse(loop.iter)
        if target_src is None or iter_src is None:
            return False
        cond = f" if {test_src}" if plan.test is not None else ""
        n = self.max_prompts
        prelude = (
            f"{items} = [{item} for {item} in {iter_src}]; {out} = [{prompt_src} for {target_src} in {items}{cond}]; "
            f"{out} = [{item} for {k} in range(0, len({out}), {n}) for {item} in {BATCHED}({out}[{k}:{k} + {n}])]; "
            f"{out}.reverse()"
        )
        # Helper statements ride on the neighbouring simple statements where there are some (same block,
        # same line numbers), else on blank lines, else on lines of their own.
        prev, nxt = self.siblings.get(loop, (None, None))
        if isinstance(prev, _SIMPLE):
            end = self.span(prev)[1]
            self.edits.append((end, end, f"; {prelude}".encode()))
        else:
            self.insert_line(loop.lineno - 1, indent + prelude, before=True)
        self.replace_expr(loop.iter, items)
        self.replace_expr(plan.call, f"{out}.pop()")
        if isinstance(nxt, _SIMPLE):
            start = self.span(nxt)[0]
            self.edits.append((start, start, f"del {items}, {out}; ".encode()))
        else:
            assert loop.end_lineno is not None  # ast.parse sets positions
            self.insert_line(loop.end_lineno + 1, f"{indent}del {items}, {out}", before=False)
        self.count += 1
        return True

    def plan_block(self, body: list[ast.stmt], plan: _LoopPlan, guarded: bool) -> bool:
        """Check a loop body statement by statement; fills ``plan``. False means: leave the loop alone."""
        for stmt in body:
            before = plan.call is None
            if isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, ast.If):
                holds_call = any(_is_call(n) for n in ast.walk(stmt))
                if not self.pure(stmt.test):
                    return False
                if holds_call:
                    if not before or guarded:
                        return False
                    plan.test = _subst(stmt.test, plan.env)
                    env = dict(plan.env)
                    if not self.plan_block(stmt.body, plan, guarded=True) or plan.call is None:
                        return False
                    plan.env = env
                    if not self.plan_block(stmt.orelse, plan, guarded=True):
                        return False
                    continue
                if before:
                    return False  # a condition before the call could change what the prompt reads
                if not self.plan_block(stmt.body, plan, guarded=True) or not self.plan_block(
                    stmt.orelse, plan, guarded=True
                ):
                    return False
                continue
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
                if isinstance(target, ast.Name):
                    if _is_call(value):
                        if not self.take_call(value, plan):
                            return False
                    elif not self.pure(value):
                        return False
                    elif before:
                        plan.env[target.id] = _subst(value, plan.env)
                    continue
                if isinstance(target, ast.Subscript) and self.container_ok(target.value, plan):
                    if not self.pure(target.slice):
                        return False
                    if _is_call(value):
                        if not self.take_call(value, plan):
                            return False
                    elif before or not self.pure(value):
                        return False
                    continue
                return False
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = stmt.value
                f = call.func
                if (
                    isinstance(f, ast.Attribute)
                    and f.attr == "append"
                    and self.container_ok(f.value, plan)
                    and len(call.args) == 1
                    and not call.keywords
                ):
                    arg = call.args[0]
                    if _is_call(arg):
                        if not self.take_call(arg, plan):
                            return False
                    elif before or not self.pure(arg):
                        return False
                    continue
            return False
        return True

    def container_ok(self, node: ast.expr, plan: _LoopPlan) -> bool:
        """A plain variable the loop writes into; it counts as written (prompts may not read it)."""
        if not isinstance(node, ast.Name) or node.id in plan.stored:
            return False
        plan.containers.add(node.id)
        return True

    def take_call(self, call: ast.Call, plan: _LoopPlan) -> bool:
        if plan.call is not None or not self.pure(call.args[0]):
            return False
        plan.call = call
        plan.prompt = _subst(call.args[0], plan.env)
        return True

    # -------------------------------------------------------------------- text edits

    def span(self, node: ast.expr | ast.stmt) -> tuple[int, int]:
        assert node.end_lineno is not None and node.end_col_offset is not None  # ast.parse sets positions
        return (
            self.line_starts[node.lineno - 1] + node.col_offset,
            self.line_starts[node.end_lineno - 1] + node.end_col_offset,
        )

    def line_text(self, lineno: int) -> bytes:
        start = self.line_starts[lineno - 1]
        end = self.src.find(b"\n", start)
        return self.src[start:] if end < 0 else self.src[start:end]

    def unparse(self, node: ast.AST, as_target: bool = False) -> str | None:
        """One-line source for ``node``, or None unless it parses back to the same tree."""
        text = ast.unparse(node)
        try:
            if as_target:
                back = ast.parse(f"for {text} in x: pass").body[0].target  # type: ignore[attr-defined]
            else:
                back = ast.parse(text, mode="eval").body
        except SyntaxError:
            return None
        return text if ast.dump(back) == ast.dump(node) else None

    def replace_expr(self, node: ast.expr, text: str) -> None:
        start, end = self.span(node)
        lines = self.src[start:end].count(b"\n")
        new = text if not lines else "(" + text + "\n" * lines + ")"  # keep line numbers after it
        self.edits.append((start, end, new.encode("utf-8")))

    def insert_line(self, lineno: int, text: str, before: bool) -> None:
        """Put a statement on line ``lineno`` when that line is blank and not yet used; otherwise on a new
        line just above the loop (``before``: lineno is the line above it) or just below it."""
        data = text.encode("utf-8")
        n_lines = len(self.line_starts)  # the last entry is the empty line after a final newline, if any
        if 1 <= lineno <= n_lines and lineno not in self.used_lines and not self.line_text(lineno).strip():
            self.used_lines.add(lineno)
            start = self.line_starts[lineno - 1]
            if start == len(self.src):
                self.edits.append((start, start, data + b"\n"))
            else:
                self.edits.append((start, start + len(self.line_text(lineno)), data))
            return
        if before:
            pos = self.line_starts[lineno]  # start of the loop's own line
            self.edits.append((pos, pos, data + b"\n"))
        elif lineno <= n_lines:
            pos = self.line_starts[lineno - 1]
            self.edits.append((pos, pos, data + b"\n"))
        else:  # the loop ends the text without a final newline
            self.edits.append((len(self.src), len(self.src), b"\n" + data + b"\n"))

    def fresh_names(self) -> tuple[str, str, str, str]:
        while True:
            base = f"rlm_batch_{self.next_id}"
            self.next_id += 1
            names = (f"{base}_items", f"{base}_out", f"{base}_item", f"{base}_k")
            if not any(n in self.identifiers for n in names):
                return names

    def apply(self) -> str:
        out = self.src
        last = len(out) + 1
        # Same position: later edits are applied first so that the earlier ones end up in front of them.
        order = sorted(range(len(self.edits)), key=lambda i: (self.edits[i][0], self.edits[i][1], i), reverse=True)
        for start, end, text in (self.edits[i] for i in order):
            if end > last:
                raise AssertionError("overlapping edits")
            out = out[:start] + text + out[end:]
            last = start
        return out.decode("utf-8")
