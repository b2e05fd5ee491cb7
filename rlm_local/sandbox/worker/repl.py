"""The REPL namespace of one sandbox session (worker side only; main.py drives it).

Guarantees, each against code that runs "at odd times" (generator ``finally`` blocks, finalizers,
weakref callbacks, run whenever their object is freed):
- Model code runs only inside a cell. Automatic garbage collection is off outside ``exec`` (and while a
  cell waits on a sub-call); at the end of each cell (still under its CPU limit and the parent's wall
  clock) the REPL names are restored and the young generations are collected, repeatedly, until a round
  changes nothing. What a cell frees runs its cleanup code inside that cell; old cyclic garbage (which
  only an automatic full collection finds) runs it inside whichever later cell's ``exec`` collects it,
  never between cells. A full collection per cell would cost ~190 ms with a million live lists.
- The host keeps no model object past a cell: what it holds (output, FINAL value, error text, a variable
  read) is an exact ``str`` copied with str's own methods, whose freeing runs nothing. The one thing the
  host drops between cells, a variable that ``add_context`` rebinds, is kept alive until the next cell
  starts, then freed under that cell's limits and followed by a restore of the REPL names before its
  code runs. Host code in the worker uses no cache that holds model objects (its regexes are compiled
  once, never through ``re``'s cache).
- Each cell starts with its REPL names exactly right: ``context``, the stubs and the guards are the
  session's own objects, because nothing can run between the last settle round and the cell's code.
- A cell that rebinds (or deletes) a name the model is given is told so, and a document name bound to
  a literal is skipped (rebinds.py).
- Text leaving the worker is capped (output, error text, FINAL values, variables read) before it is
  sent; the protocol turns lone surrogates into U+FFFD.
"""

from __future__ import annotations

import gc
import json
import keyword
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this folder as the package rlm_local.sandbox.worker
    from . import guards as G
    from . import protocol
    from . import rebinds as R
    from .policy import compile_cell
else:  # the worker runs as a script, with this folder on its path
    import guards as G
    import protocol
    import rebinds as R
    from policy import compile_cell

STUB_NAMES = protocol.STUB_NAMES
_DELETED = R.DELETED
PRELUDE_FILE = "<cell prelude>"  # a cell's file name: members.sandbox_made trusts the prelude's functions
SETTLE_ROUNDS = 8  # rounds of restore + collect; code that is still rebinding names after that is hostile


class Unsettled(Exception):
    """Code kept running after its cell ended (finalizers fighting the restore of REPL names)."""


def _as_str(value, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return str.__str__(value)  # exact str, never a subclass with tricks


def _json_context(ctx):
    if ctx is None or isinstance(ctx, str):
        return None if ctx is None else _as_str(ctx, "context")
    if isinstance(ctx, (list, tuple)):
        return [_as_str(c, "each context item") for c in ctx]
    if isinstance(ctx, dict):
        return {_as_str(k, "context keys"): _as_str(v, "context values") for k, v in ctx.items()}
    raise TypeError("rlm_query context must be a str, a list of str or a dict of str to str")


def cap_text(text: str, cap: int, what: str) -> str:
    if len(text) <= cap:
        return text
    return text[:cap] + f"\n... [{what} truncated: {len(text) - cap} more characters]"


def _plain(value, depth: int, cap: int):
    """JSON-safe copy of a variable for the parent: str, numbers, bool, None, lists and dicts of them."""
    if value is None or type(value) in (bool, float):
        return value
    if type(value) is int:
        return value if -(1 << 53) < value < (1 << 53) else str(value)
    if depth > 0 and type(value) in (list, tuple):
        return [_plain(v, depth - 1, cap) for v in value[:10_000]]
    if depth > 0 and type(value) is dict:
        return {
            cap_text(G.exact_str(k), cap, "key"): _plain(v, depth - 1, cap) for k, v in list(value.items())[:10_000]
        }
    return cap_text(G.exact_str(value), cap, "value")


def _frozen(value):
    """Read-only copy of JSON data: lists become tuples, dicts read-only mappings."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


def context_names(context) -> dict:
    names = {"context": context}
    if isinstance(context, list):
        names.update({f"context_{i}": c for i, c in enumerate(context)})
    elif isinstance(context, dict):
        names.update(
            {
                k: v
                for k, v in context.items()
                if k.isidentifier()
                and not k.startswith("_")
                and not keyword.iskeyword(k)
                and k not in STUB_NAMES
                and k not in ("print", "printed")
            }
        )
    return names


def prepare_guards() -> G.Guards:
    """The session's guards, module proxies and printer: the costly part of a session that needs no
    context or limits, so a pooled worker builds it before it is handed out."""
    return G.Guards(G.Printer(0), G.make_module_proxies())


class Repl:
    """One REPL: the globals the model's cells share, the names it may not lose, and the stubs.
    ``call(kind, prompts, context)`` sends a sub-call to the parent and returns its answers."""

    def __init__(self, context, call, limits: dict, scrub: list[str], drain_fd_output=None, guards=None):
        self.call = call
        self.drain_fd_output = drain_fd_output  # () -> str: what C code wrote to fds 1 and 2
        self.limits = limits
        self.guards = guards or prepare_guards()
        self.printer = self.guards.printer
        self.printer.reset(int(limits["output_chars"]))
        self.builtins = self.guards.builtins()
        self.scrub = sorted({p for p in scrub if p and len(p) > 1}, key=len, reverse=True)
        self.final: str | None = None
        self.cells: dict[str, list[str]] = {}
        self.reserved = dict(context_names(context))
        self.reserved.update(self._stubs())
        self.reserved.update(self.guards.guard_globals())
        self.reserved["_echo_"] = self._echo
        self.reserved["__builtins__"] = self.builtins
        self.added: set[str] = set()  # names bound by add_context, which it may bind again
        self.prelude_names: set[str] = set()  # top-level names of the prelude: REPL names, not variables
        self.graveyard: list = []  # model objects the host let go of between cells, freed when a cell starts
        self.globals: dict = dict(self.reserved)
        self.globals["answer"] = {"content": "", "ready": False}  # the reference's protocol: an ordinary variable

    # names the model sees ----------------------------------------------------------------------------
    def _reserve(self, name: str, value) -> None:
        if not name.isidentifier() or name.startswith("_") or keyword.iskeyword(name) or name in self.reserved:
            raise ValueError(f"'{name}' cannot be used as a name in the sandbox (taken or invalid)")
        self.reserved[name] = self.globals[name] = value

    def add_context(self, value, name: str | None) -> str:
        """Binds a context added to the live session; returns its name (default: the next context_N).
        ``context`` itself and names added this way before may be bound again (a persistent session's
        newest document, its ``history``); the stubs, guards and tools may not."""
        if name is None:
            count = 1  # context (or context_0.. of a list) came first
            while f"context_{count}" in self.reserved:
                count += 1
            name = f"context_{count}"
        self.graveyard.append(self.globals.get(name))  # a model variable of that name is freed in a cell
        if name == "context" or name in self.added:
            self.reserved[name] = self.globals[name] = value
        else:
            self._reserve(name, value)
        self.added.add(name)
        return name

    def add_tools(self, functions: list[str], data: dict) -> None:
        """Tool functions call the parent (JSON arguments and result); tool data is read-only."""
        for name in functions:
            self._reserve(name, self._tool_stub(name))
        for name, value in data.items():
            self._reserve(name, _frozen(value))

    def _tool_stub(self, name: str):
        call = self.call

        def tool(*args, **kwargs):
            try:
                payload = json.dumps([args, kwargs], ensure_ascii=False)
            except (TypeError, ValueError):
                raise TypeError(f"{name}() takes JSON data (str, numbers, lists, dicts) as arguments") from None
            return json.loads(call("tool", [name, payload])[0])

        tool.__name__ = tool.__qualname__ = name
        return tool

    def _stubs(self) -> dict:
        call = self.call

        def no_model(model, fn: str) -> None:
            if model is not None:
                raise ValueError(
                    f"{fn}(model=...) is not available here: sub-calls go to the RLM's sub-model; drop model="
                )

        def llm_query(prompt, model=None):
            no_model(model, "llm_query")
            return call("llm", [_as_str(prompt, "llm_query prompt")])[0]

        def llm_query_batched(prompts, model=None):
            no_model(model, "llm_query_batched")
            if isinstance(prompts, str):
                raise TypeError("llm_query_batched takes a list of prompts")
            prompts = [_as_str(p, "each llm_query_batched prompt") for p in prompts]
            return call("llm", prompts) if prompts else []

        def rlm_query(prompt, context=None, model=None):
            no_model(model, "rlm_query")
            return call("rlm", [_as_str(prompt, "rlm_query prompt")], [_json_context(context)])[0]

        def rlm_query_batched(prompts, contexts=None, model=None):
            no_model(model, "rlm_query_batched")
            if isinstance(prompts, str):
                raise TypeError("rlm_query_batched takes a list of prompts")
            prompts = [_as_str(p, "each rlm_query_batched prompt") for p in prompts]
            contexts = [None] * len(prompts) if contexts is None else list(contexts)
            if len(contexts) != len(prompts):
                raise ValueError(f"rlm_query_batched: {len(prompts)} prompts but {len(contexts)} contexts")
            return call("rlm", prompts, [_json_context(c) for c in contexts]) if prompts else []

        def FINAL(value):
            self.final = cap_text(G.exact_str(value), self._cap("max_final_chars"), "final answer")

        def FINAL_VAR(name):
            if not isinstance(name, str):
                raise TypeError(
                    "FINAL_VAR takes a variable NAME as a string, e.g. FINAL_VAR('answer'); "
                    "use FINAL(value) to return a value directly"
                )
            name = str.strip(str.strip(str.__str__(name)), "'\"")  # str's own methods: never a subclass's
            if not name.isidentifier() or name.startswith("_") or name in STUB_NAMES or name not in self.globals:
                raise NameError(f"FINAL_VAR: no variable named '{name[:80]}'; define it first")
            FINAL(self.globals[name])

        def SHOW_VARS():
            rows = []
            for k, v in self.globals.items():
                if k.startswith("_") or k in STUB_NAMES or k in self.prelude_names:
                    continue
                desc = (
                    "module" if isinstance(v, G.ModuleProxy) else "class" if isinstance(v, type) else type(v).__name__
                )
                if isinstance(v, (str, list, dict, tuple, set)):
                    desc += f" (len {len(v)})"
                rows.append(f"{k}: {desc}")
            self.printer.write("\n".join(rows or ["(no variables)"]) + "\n")

        return {
            "llm_query": llm_query,
            "llm_query_batched": llm_query_batched,
            "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched,
            "FINAL": FINAL,
            "FINAL_VAR": FINAL_VAR,
            "SHOW_VARS": SHOW_VARS,
        }

    def _cap(self, name: str) -> int:
        return int(self.limits[name])

    def _echo(self, value):
        if value is not None:
            self.printer.write(repr(value) + "\n")

    # running a cell ------------------------------------------------------------------------------------
    def run(self, source: str) -> dict:
        """Compiles and runs one cell; returns the fields of a result message."""
        self._begin()
        filename = f"<cell {len(self.cells) + 1}>"
        source, skipped = R.skip_literal_rebinds(source, self.reserved)
        code, errors = compile_cell(source, filename)
        if errors:
            return self._end(self._clean("\n".join(errors)))
        self.cells[filename] = source.splitlines()
        error = self._exec(code, filename)
        if self.final is None:
            error = self._answer_dict(filename) or error
        return self._end(error, notes=skipped + R.shadow_notes(self.reserved, self.globals))

    def _answer_dict(self, filename: str) -> str | None:
        """The reference's answer dict: ``answer["ready"]`` set ends the run with ``answer["content"]``, taken
        as an exact copy (the built-in types' own methods, never the object's: guards.exact_str)."""
        answer = self.globals.get("answer")
        if type(answer) is not dict:
            return None
        ready = dict.get(answer, "ready")
        if type(ready) not in (bool, int, float, str) or not ready:
            return None
        try:
            self.final = cap_text(
                G.exact_str(dict.get(answer, "content", "")), self._cap("max_final_chars"), "final answer"
            )
        except BaseException as e:
            return self._format_error(e, filename)
        return None

    def _exec(self, code, filename: str) -> str | None:
        gc.enable()  # automatic collection (and the finalizers it triggers) only while the cell runs
        try:
            exec(code, self.globals)
        except BaseException as e:  # the model's SystemExit/KeyboardInterrupt too: the session lives on
            return self._format_error(e, filename)
        finally:
            gc.disable()
        return None

    def run_prelude(self, source: str) -> str | None:
        """Runs the session's prelude once, as a cell (same policy, guards and settling), and makes its
        new top-level names REPL names: restored after every cell, hidden from SHOW_VARS. Returns an
        error text, or None. Its output and any FINAL are dropped."""
        self._begin()
        code, errors = compile_cell(source, PRELUDE_FILE)
        if errors:
            return self._clean("\n".join(errors))
        self.cells[PRELUDE_FILE] = source.splitlines()
        before = set(self.globals)
        error = self._exec(code, PRELUDE_FILE)
        rebound = [k for k, v in self.reserved.items() if self.globals.get(k, _DELETED) is not v]
        self._end(None)
        self.final = None
        if error is not None:
            return error
        if rebound:
            return f"the prelude rebinds names the REPL already defines: {', '.join(sorted(rebound)[:10])}"
        for name in self.globals.keys() - before:
            self.reserved[name] = self.globals[name]
            self.prelude_names.add(name)
        return None

    def read(self, name: str) -> dict:
        """A REPL variable as plain data. str() may run the model's own __str__, so this is a cell too."""
        self._begin()
        if not name.isidentifier() or name.startswith("_") or name not in self.globals:
            return self._end(f"NameError: no variable named '{name[:80]}'")
        try:
            value = json.dumps(_plain(self.globals[name], 4, self._cap("max_final_chars")), ensure_ascii=False)
        except BaseException as e:
            return self._end(self._format_error(e, ""))
        if len(value) > 2 * self._cap("max_final_chars"):
            return self._end(
                f"ValueError: variable '{name}' is too large to read "
                f"({len(value)} characters as JSON); FINAL a smaller value"
            )
        return self._end(None, value)

    def _begin(self) -> None:
        """Starts a cell (under its limits): frees what the host let go of since the last one, then
        restores the REPL names, so the cell's code starts with exact names whatever that freeing ran."""
        self.printer.reset(self._cap("output_chars"))
        if self.graveyard:
            self.graveyard.clear()
            self.settle()
        self.final = None  # after the freeing: a finalizer's FINAL is not this cell's answer

    def _end(self, error: str | None, value: str | None = None, notes: str = "") -> dict:
        """Settles the cell (inside its accounting) and builds the result fields; ``notes`` lead the
        output (the parent clips output at its end)."""
        self.settle()
        if self.drain_fd_output is not None:
            written = self.drain_fd_output()
            if written:
                try:
                    self.printer.write(written)
                except G.OutputFlood:
                    pass
        return {"stdout": self._clean(notes + self.printer.text()), "error": error, "final": self.final, "value": value}

    def settle(self) -> None:
        """Restores the REPL names and collects garbage until nothing runs any more (module docstring).
        Raises Unsettled when code keeps fighting it."""
        for _ in range(SETTLE_ROUNDS):
            try:
                gc.collect(1)
                if not self._restore_names():
                    return
            except BaseException:  # an exception escaping a finalizer: go round again
                continue
        raise Unsettled("code kept running after the cell ended (finalizers or generators rebinding names)")

    def _restore_names(self) -> bool:
        """Puts back every reserved name the model rebound; True if anything changed (and so may have run
        code, since replacing a binding can free an object)."""
        g, changed = self.globals, False
        for k, v in self.reserved.items():
            if g.get(k) is not v:
                g[k] = v
                changed = True
        return changed

    def _format_error(self, e: BaseException, current: str) -> str:
        frames = []
        tb = e.__traceback__
        while tb is not None:
            fname = tb.tb_frame.f_code.co_filename
            if fname in self.cells:
                frames.append((fname, tb.tb_lineno, tb.tb_frame.f_code.co_name))
            tb = tb.tb_next
        cap = self._cap("max_error_chars")
        try:
            text = G.exact_str(e)[:cap]
        except BaseException:
            text = "<unprintable message>"
        msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
        if frames:
            fname, line, _ = frames[-1]
            msg += f" (line {line})" if fname == current else f" ({fname[1:-1]}, line {line})"
        if len(frames) > 1:
            msg = "Traceback (your code only):\n" + "\n".join(self._frame_rows(frames, current)) + "\n" + msg
        return self._clean(cap_text(msg, cap, "error"))

    def _frame_rows(self, frames: list[tuple[str, int, str]], current: str) -> list[str]:
        rows: list[str] = []
        repeats = 0
        for fname, line, func in frames:
            where = f"line {line}" if fname == current else f"{fname[1:-1]}, line {line}"
            if func != "<module>":
                where += f", in {func}"
            lines = self.cells[fname]
            src = lines[line - 1].strip() if 0 < line <= len(lines) else ""
            row = f"  {where}: {src[:200]}"
            if rows and row == rows[-1]:
                repeats += 1
                continue
            if repeats:
                rows.append(f"  [previous line repeated {repeats} more times]")
                repeats = 0
            rows.append(row)
        if repeats:
            rows.append(f"  [previous line repeated {repeats} more times]")
        if len(rows) > 12:
            rows = rows[:4] + [f"  [... {len(rows) - 10} more frames ...]"] + rows[-6:]
        return rows

    def _clean(self, text: str) -> str:
        for path in self.scrub:
            if path in text:
                text = text.replace(path, "<host>")
        return protocol.clean_text(text)
