"""Sandbox worker: a fresh interpreter that runs one REPL session (process main, never imported by the
parent). Started as ``python -I -S worker.py SITE_DIR``; it imports only the stdlib, RestrictedPython and
its sibling files, so it starts fast and never sees the parent's modules or secrets.

Life of a worker: read ``init`` (context file path, limits) -> load the context and delete the file ->
harden the process -> loop { fork a paused snapshot; send ``ready``/``restored``; read ``run``; execute
the cell under a CPU rlimit; send ``result``; release the snapshot }. When the parent kills us for wall
time, or the kernel does for CPU time, the snapshot gets its parent-death signal and carries on as the
worker, in the state from before the cell.
"""
from __future__ import annotations

import json
import keyword
import os
import resource
import signal
import sys
import time

if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, sys.argv[1]]
    import RestrictedPython  # noqa: F401  (load it while its directory is on the path)
    sys.path.remove(sys.argv[1])

import guards as G  # noqa: E402
import hardening  # noqa: E402
import protocol  # noqa: E402
from policy import compile_cell  # noqa: E402

STUB_NAMES = ("llm_query", "llm_query_batched", "rlm_query", "FINAL", "FINAL_VAR", "SHOW_VARS")


class TakeOver(BaseException):
    """Raised in a paused snapshot when its parent (the live worker) died."""


class Channel:
    def __init__(self):
        self.reader = protocol.LineReader(0)

    def send(self, msg: dict, fresh_line: bool = False) -> None:
        protocol.write_all(1, (b"\n" if fresh_line else b"") + protocol.encode(msg))

    def read(self) -> dict:
        msg = self.reader.read()
        if msg is None:
            raise protocol.ChannelClosed("garbled message")
        return msg

    def call(self, kind: str, prompts: list[str], context=None) -> list[str]:
        self.send({"type": "call", "kind": kind, "prompts": prompts, "context": context})
        reply = self.read()
        if reply.get("op") != "reply":
            raise RuntimeError("sandbox protocol error")
        if not reply.get("ok"):
            raise RuntimeError(str(reply.get("error")))
        return reply["results"]


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
            self.final = str(value)

        def FINAL_VAR(name):
            if not isinstance(name, str):
                raise TypeError("FINAL_VAR takes a variable NAME as a string, e.g. FINAL_VAR('answer'); "
                                "use FINAL(value) to return a value directly")
            name = name.strip().strip("'\"")
            if (not name.isidentifier() or name.startswith("_") or name in STUB_NAMES
                    or name not in self.globals):
                raise NameError(f"FINAL_VAR: no variable named '{name[:80]}'; define it first")
            self.final = str(self.globals[name])

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
            rows = ["Traceback (your code only):"]
            for fname, line, func in frames:
                where = f"line {line}" if fname == current else f"{fname[1:-1]}, line {line}"
                if func != "<module>":
                    where += f", in {func}"
                lines = self.cells[fname]
                src = lines[line - 1].strip() if 0 < line <= len(lines) else ""
                rows.append(f"  {where}: {src[:200]}")
            msg = "\n".join(rows) + "\n" + msg
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
    soft = int(_cpu_used() + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _on_parent_death(signum, frame):
    raise TakeOver()


class Snapshot:
    """A paused fork of the worker. It waits on a pipe: EOF means 'not needed' (exit), the parent-death
    signal means 'the worker died during a cell' (take over)."""

    def __init__(self):
        self.pid: int | None = None
        self.release_fd: int | None = None
        self.zombies: list[int] = []

    def make(self) -> bool:
        """Fork; returns True in the child once it has taken over, False in the live worker."""
        parent = os.getpid()
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
        try:
            hardening.prctl(hardening.PR_SET_PDEATHSIG, signal.SIGUSR1)
            if os.getppid() != parent:
                raise TakeOver()
            while True:
                if not os.read(r, 1):
                    os._exit(0)
        except TakeOver:
            hardening.prctl(hardening.PR_SET_PDEATHSIG, 0)
            os.close(r)
            self.pid, self.release_fd, self.zombies = None, None, []
            return True

    def release(self) -> None:
        if self.release_fd is not None:
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
    path = init["context_path"]
    with open(path, "rb") as f:
        data = f.read()
    try:
        os.unlink(path)
    except OSError:
        pass
    text = data.decode("utf-8", "surrogatepass")
    return text if init["context_kind"] == "str" else json.loads(text)


def main() -> None:
    signal.signal(signal.SIGUSR1, _on_parent_death)
    channel = Channel()
    init = channel.read()
    context = _load_context(init)
    scrub = [os.path.dirname(HERE), sys.argv[1], sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(sys.executable), init.get("host_dir", "")]
    session = Session(context, channel, int(init["output_chars"]), scrub)
    del context
    applied = hardening.apply(int(init["memory_mb"]))
    snapshot = Snapshot()
    greeting = {"type": "ready", "pid": os.getpid(), "hardening": applied}
    while True:
        if snapshot.make():  # we are the snapshot and our parent died mid-cell
            greeting = {"type": "restored", "pid": os.getpid()}
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
        result = session.run(str(msg["code"]), int(msg["output_chars"]))
        _set_cpu_limit(None)
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
