"""Sandbox worker: a fresh interpreter that runs one REPL session (process main, never imported by the
parent). Started as ``python -I -S worker.py SITE_DIR``; it imports only the stdlib, RestrictedPython and
its sibling files, so it starts fast and never sees the parent's modules or secrets.

Life of a worker: read ``init`` (context memfd or file, limits) -> load the context (deleting the file) ->
harden the process -> loop { fork a paused snapshot; send ``ready``/``restored``; read ``run``; execute
the cell under a CPU rlimit; send ``result``; release the snapshot }. When the parent kills us for wall
time, or the kernel does for CPU time, the snapshot sees its pipe close and carries on as the worker, in
the state from before the cell.
"""
from __future__ import annotations

import codecs
import json
import keyword
import math
import mmap
import os
import resource
import sys
import time

if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, sys.argv[1]]
    import RestrictedPython  # noqa: F401,E402  (load it while its directory is on the path)
    sys.path.remove(sys.argv[1])

import guards as G  # noqa: E402
import hardening  # noqa: E402
import protocol  # noqa: E402
from policy import compile_cell  # noqa: E402

STUB_NAMES = ("llm_query", "llm_query_batched", "rlm_query", "FINAL", "FINAL_VAR", "SHOW_VARS")


class Channel:
    def __init__(self):
        self.reader = protocol.LineReader(0, 1 << 40)  # the parent is trusted
        self.limits: dict = {}

    def send(self, msg: dict, fresh_line: bool = False) -> None:
        protocol.write_all(1, (b"\n" if fresh_line else b"") + protocol.encode(msg))

    def read(self) -> dict:
        msg = self.reader.read()
        if msg is None:
            raise protocol.ChannelClosed("garbled message")
        return msg

    def call(self, kind: str, prompts: list[str], context=None) -> list[str]:
        self._precheck(prompts, context)
        self.send({"type": "call", "kind": kind, "prompts": prompts, "context": context})
        reply = self.read()
        if reply.get("op") != "reply":
            raise RuntimeError("sandbox protocol error")
        if not reply.get("ok"):
            raise RuntimeError(str(reply.get("error")))
        return reply["results"]


    def _precheck(self, prompts: list[str], context) -> None:
        """Early, readable refusals (the parent enforces the same limits; this only avoids shipping
        hundreds of megabytes just to be told no)."""
        lim = self.limits
        if len(prompts) > lim.get("max_prompts_per_call", len(prompts)):
            raise RuntimeError(f"ValueError: too many prompts in one call: {len(prompts)} "
                               f"(limit {lim['max_prompts_per_call']}); split them into smaller batches")
        longest = max(map(len, prompts))
        if longest > lim.get("max_prompt_chars", longest):
            raise RuntimeError(f"ValueError: prompt too long: {longest} characters "
                               f"(limit {lim['max_prompt_chars']}); send a smaller chunk")
        size = sum(map(len, prompts))
        if context:
            size += len(context) if isinstance(context, str) else sum(
                map(len, context.values() if isinstance(context, dict) else context))
        if size > lim.get("max_call_chars", size):
            raise RuntimeError(f"ValueError: sub-call too large: {size} characters of prompt and context "
                               f"(limit {lim['max_call_chars']})")


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


MAX_FINAL_CHARS = 50_000_000


def _cap_final(text: str) -> str:
    if len(text) <= MAX_FINAL_CHARS:
        return text
    return text[:MAX_FINAL_CHARS] + f"\n... [final answer truncated: {len(text) - MAX_FINAL_CHARS} more characters]"


def _plain(value, depth: int):
    """JSON-safe copy of a variable for the parent (capped like FINAL values)."""
    if value is None or type(value) in (bool, float):
        return value
    if type(value) is int:
        return value if -(1 << 53) < value < (1 << 53) else str(value)
    if depth > 0 and type(value) in (list, tuple):
        return [_plain(v, depth - 1) for v in value[:10_000]]
    if depth > 0 and type(value) is dict:
        return {_cap_final(str(k)): _plain(v, depth - 1) for k, v in list(value.items())[:10_000]}
    return _cap_final(value if type(value) is str else str(value))


def context_names(context) -> dict:
    names = {"context": context}
    if isinstance(context, list):
        names.update({f"context_{i}": c for i, c in enumerate(context)})
    elif isinstance(context, dict):
        names.update({k: v for k, v in context.items()
                      if k.isidentifier() and not k.startswith("_") and not keyword.iskeyword(k)
                      and k not in STUB_NAMES and k not in ("print", "printed")})
    return names


class Session:
    def __init__(self, context, channel: Channel, output_chars: int, scrub: list[str]):
        self.channel = channel
        self.printer = G.Printer(output_chars)
        self.guards = G.Guards(self.printer, G.make_module_proxies())
        self.builtins = self.guards.builtins()
        self.scrub = sorted({p for p in scrub if p and len(p) > 1}, key=len, reverse=True)
        self.final: str | None = None
        self.cells: dict[str, list[str]] = {}
        self.reserved = dict(context_names(context))
        self.reserved.update(self._stubs())
        self.reserved.update(self.guards.guard_globals())
        self.reserved["_echo_"] = self._echo
        self.globals: dict = {}

    # names the model sees ----------------------------------------------------------------------------
    def _stubs(self) -> dict:
        ch = self.channel

        def llm_query(prompt, model=None):
            return ch.call("llm", [_as_str(prompt, "llm_query prompt")])[0]

        def llm_query_batched(prompts, model=None):
            if isinstance(prompts, str):
                raise TypeError("llm_query_batched takes a list of prompts")
            prompts = [_as_str(p, "each llm_query_batched prompt") for p in prompts]
            return ch.call("llm", prompts) if prompts else []

        def rlm_query(prompt, context=None, model=None):
            return ch.call("rlm", [_as_str(prompt, "rlm_query prompt")], _json_context(context))[0]

        def FINAL(value):
            self.final = _cap_final(str(value))

        def FINAL_VAR(name):
            if not isinstance(name, str):
                raise TypeError("FINAL_VAR takes a variable NAME as a string, e.g. FINAL_VAR('answer'); "
                                "use FINAL(value) to return a value directly")
            name = name.strip().strip("'\"")
            if (not name.isidentifier() or name.startswith("_") or name in STUB_NAMES
                    or name not in self.globals):
                raise NameError(f"FINAL_VAR: no variable named '{name[:80]}'; define it first")
            self.final = _cap_final(str(self.globals[name]))

        def SHOW_VARS():
            rows = []
            for k, v in self.globals.items():
                if k.startswith("_") or k in STUB_NAMES:
                    continue
                desc = ("module" if isinstance(v, G.ModuleProxy) else "class" if isinstance(v, type)
                        else type(v).__name__)
                if isinstance(v, (str, list, dict, tuple, set)):
                    desc += f" (len {len(v)})"
                rows.append(f"{k}: {desc}")
            self.printer.write("\n".join(rows or ["(no variables)"]) + "\n")

        return {"llm_query": llm_query, "llm_query_batched": llm_query_batched, "rlm_query": rlm_query,
                "FINAL": FINAL, "FINAL_VAR": FINAL_VAR, "SHOW_VARS": SHOW_VARS}

    def _echo(self, value):
        if value is not None:
            self.printer.write(repr(value) + "\n")

    # running a cell ------------------------------------------------------------------------------------
    def run(self, source: str, output_chars: int) -> dict:
        self.printer.reset(output_chars)
        self.final = None
        self.globals["__builtins__"] = self.builtins
        self.globals.update(self.reserved)  # model code may have rebound them
        filename = f"<cell {len(self.cells) + 1}>"
        code, errors = compile_cell(source, filename)
        if errors:
            return {"stdout": "", "error": self._clean("\n".join(errors)), "final": None}
        self.cells[filename] = source.splitlines()
        error = None
        try:
            exec(code, self.globals)
        except BaseException as e:  # the model's SystemExit/KeyboardInterrupt too: the session lives on
            error = self._format_error(e, filename)
        return {"stdout": self._clean(self.printer.text()), "error": error, "final": self.final}

    def read(self, name: str, output_chars: int) -> dict:
        """A REPL variable as plain data (str, number, bool, None, or lists/dicts of them; anything else
        as its str()). str() may run the model's own __str__, so this runs like a cell: same limits."""
        self.printer.reset(output_chars)
        if not name.isidentifier() or name.startswith("_") or name not in self.globals:
            return {"stdout": "", "error": f"NameError: no variable named '{name[:80]}'", "final": None,
                    "found": False}
        try:
            value = _plain(self.globals[name], 4)
        except BaseException as e:
            return {"stdout": "", "error": self._format_error(e, ""), "final": None, "found": False}
        return {"stdout": "", "error": None, "final": None, "found": True, "value": value}

    def _format_error(self, e: BaseException, current: str) -> str:
        frames = []
        tb = e.__traceback__
        while tb is not None:
            fname = tb.tb_frame.f_code.co_filename
            if fname in self.cells:
                frames.append((fname, tb.tb_lineno, tb.tb_frame.f_code.co_name))
            tb = tb.tb_next
        try:
            text = str(e)
        except BaseException:
            text = "<unprintable message>"
        msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
        if frames:
            fname, line, _ = frames[-1]
            msg += f" (line {line})" if fname == current else f" ({fname[1:-1]}, line {line})"
        if len(frames) > 1:
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
            msg = "Traceback (your code only):\n" + "\n".join(rows) + "\n" + msg
        return self._clean(msg)

    def _clean(self, text: str) -> str:
        for path in self.scrub:
            if path in text:
                text = text.replace(path, "<host>")
        return text


def _cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _set_cpu_limit(seconds: float | None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    soft = max(1, math.ceil(_cpu_used() + seconds))
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class Snapshot:
    """A paused fork of the worker, waiting on a private pipe: a byte means 'not needed' (exit); end of
    file without a byte means the worker died during a cell (the kernel closed its end), so the snapshot
    takes over. No signals are involved, so nothing can interrupt the takeover halfway."""

    def __init__(self):
        self.pid: int | None = None
        self.release_fd: int | None = None
        self.zombies: list[int] = []

    def make(self) -> bool:
        """Fork; returns True in the child once it has taken over, False in the live worker."""
        try:
            r, w = os.pipe()
            pid = os.fork()
        except OSError:
            return False
        if pid:
            os.close(r)
            self.pid, self.release_fd = pid, w
            return False
        os.close(w)
        while True:
            try:
                data = os.read(r, 1)
                break
            except InterruptedError:
                continue
        if data:
            os._exit(0)
        os.close(r)
        self.pid, self.release_fd, self.zombies = None, None, []
        return True

    def release(self) -> None:
        if self.release_fd is not None:
            try:
                os.write(self.release_fd, b"x")
            finally:
                os.close(self.release_fd)
            self.zombies.append(self.pid)
            self.pid = self.release_fd = None
        for pid in list(self.zombies):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.zombies.remove(pid)
            except ChildProcessError:
                self.zombies.remove(pid)


def _load_context(init: dict):
    if init.get("context_fd") is not None:
        fd = int(init["context_fd"])
        size = os.fstat(fd).st_size
        data = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
        os.close(fd)
    else:
        path = init["context_path"]
        with open(path, "rb") as f:
            data = f.read()
        try:
            os.unlink(path)
        except OSError:
            pass
    text = codecs.utf_8_decode(data, "surrogatepass", True)[0]  # decodes straight from the mapping
    if isinstance(data, mmap.mmap):
        data.close()
    return text if init["context_kind"] == "str" else json.loads(text)


def main() -> None:
    channel = Channel()
    init = channel.read()
    channel.limits = dict(init.get("call_limits") or {})
    context = _load_context(init)
    scrub = [os.path.dirname(HERE), sys.argv[1], sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(sys.executable), init.get("host_dir", "")]
    session = Session(context, channel, int(init["output_chars"]), scrub)
    del context
    applied = hardening.apply(int(init["memory_mb"]))
    snapshot = Snapshot()
    greeting = {"type": "ready", "pid": os.getpid(), "hardening": applied}
    completed = 0  # cells whose effects this process holds; a snapshot tells the parent which state it has
    while True:
        if snapshot.make():  # we are the snapshot and our parent died mid-cell
            greeting = {"type": "restored", "pid": os.getpid(), "completed": completed}
            continue
        try:
            if greeting:
                channel.send(greeting, fresh_line=greeting["type"] == "restored")
                greeting = None
            msg = channel.read()
        except (protocol.ChannelClosed, OSError):
            break
        if msg.get("op") != "run":
            break
        t0 = time.perf_counter()
        _set_cpu_limit(float(msg["cpu_seconds"]))
        if "read" in msg:
            result = session.read(str(msg["read"]), int(msg["output_chars"]))
        else:
            result = session.run(str(msg["code"]), int(msg["output_chars"]))
        _set_cpu_limit(None)
        completed += 1
        result.update(type="result", worker_seconds=time.perf_counter() - t0)
        try:
            channel.send(result)
        except (protocol.ChannelClosed, OSError):
            break
        snapshot.release()
    snapshot.release()
    os._exit(0)


if __name__ == "__main__":
    main()
