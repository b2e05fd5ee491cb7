"""``rlm-local bench``: argument parsing and display for the benchmark kit (the work is in runner.py).

rlm-local bench niah --lengths 8k,32k --n 3 --methods base,rlm --out bench/niah
rlm-local bench report bench/niah
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import defaults
from ..engines import BACKENDS as ENGINE_BACKENDS
from ..engines import DEFAULT_BACKEND, quiet_transformers
from ..loop.levers import parse_lever_flags
from .items import FAMILIES, METHODS, BenchError, parse_length

BACKENDS = (*(b for b in ENGINE_BACKENDS if b != "scripted"), "oracle")  # oracle: the kit's scripted self-check


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark RLMs against baselines on generated long-context tasks",
        description="Run a task family with several methods and context lengths, or "
        "`bench report DIR` to redraw tables and plots from saved rows.",
    )
    p.add_argument("family", help=f"{', '.join(FAMILIES)}, or 'report'")
    p.add_argument("report_dir", nargs="?", help="with 'report': a results directory (or a directory of them)")
    p.add_argument("--lengths", default="8k,32k", help="context lengths in tokens, comma-separated (8k, 1m, 4096)")
    p.add_argument("--n", type=int, default=3, help="items per length")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"{', '.join(BACKENDS)} (oracle: a correct scripted model, a self-check of the kit)",
    )
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded Gemma 3 270M)")
    p.add_argument(
        "--base-url",
        action="append",
        default=None,
        help="server URL for --backend openai; repeat for several servers (the engine pool)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch / llama.cpp decode threads")
    p.add_argument("--concurrency", "-k", type=int, default=1, help="items run at once through one shared scheduler")
    p.add_argument("--out", default=None, help="results directory (default: bench/results/FAMILY)")
    p.add_argument("--resume", action="store_true", help="continue a sweep: skip the rows already in --out")
    p.add_argument("--max-iterations", type=int, default=defaults.BENCH_MAX_ITERATIONS, help="root turns per RLM run")
    p.add_argument("--max-timeout", type=float, default=None, help="seconds per item and method")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="prompt tokens for base and summary (default: the model card's prompt budget)",
    )
    p.add_argument("--source", default=None, help="codeqa: a directory of Python code (default: the stdlib)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="distribute items over a Ray cluster (no ADDRESS: start a local one); needs rlm-local[ray]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --ray: worker actors, each with its own engine (default: one per --base-url, else one)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--markdown", action="store_true", help="with 'report': print the table as Markdown")
    p.add_argument(
        "--failures",
        action="store_true",
        help="with 'report': classify every failed row from its trajectory, a table per method",
    )
    p.add_argument(
        "--lever",
        action="append",
        default=[],
        metavar="NAME=on|off",
        help="switch one of the loop's levers for the RLM methods (toolkit, constrain, resample, recover, ground); "
        "repeatable; default: the model card's choice",
    )


def run(args: argparse.Namespace, err: Console) -> int:
    # A wide table even in a pipe or a log file: eleven columns wrap badly at rich's default of 80.
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if args.family == "report":
        if not args.report_dir:
            raise BenchError("usage: rlm-local bench report DIR")
        if args.failures:
            return _failures(Path(args.report_dir), out, markdown=args.markdown)
        return _report(Path(args.report_dir), out, err, plots=not args.no_plots, markdown=args.markdown)
    if args.report_dir:
        raise BenchError(f"unexpected argument {args.report_dir!r} (only `bench report DIR` takes a directory)")
    from .runner import EngineSpec, Sweep, run_sweep

    if args.backend not in BACKENDS:
        raise BenchError(f"unknown backend {args.backend!r} for bench; choose one of: {', '.join(BACKENDS)}")
    if args.base_url and args.backend != "openai":
        raise BenchError("--base-url only applies to --backend openai")
    sweep = Sweep(
        family=args.family,
        lengths=[parse_length(x) for x in args.lengths.split(",") if x.strip()],
        n=args.n,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seed=args.seed,
        engine=EngineSpec(args.backend, args.model, args.base_url or [], args.threads, min_slots=args.concurrency),
        concurrency=args.concurrency,
        out=Path(args.out or f"bench/results/{args.family}"),
        resume=args.resume,
        max_iterations=args.max_iterations,
        max_timeout=args.max_timeout,
        window=args.window,
        source=args.source,
        levers=parse_lever_flags(args.lever),
    )
    sweep.check()
    if args.backend == "transformers":
        quiet_transformers()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{sweep.family}", total=None, last="generating items, loading the model")

        def on_row(row: dict[str, Any]) -> None:
            progress.update(task, advance=1, last=f"{row['method']} {row['item_id']}: {100 * row['score']:.0f}%")

        def on_total(n: int) -> None:
            progress.update(task, total=n, last="")

        if args.ray:
            from .ray_runner import run_sweep_on_ray

            path = run_sweep_on_ray(
                sweep, None if args.ray == "local" else args.ray, workers=args.workers, on_row=on_row, on_total=on_total
            )
        else:
            path = run_sweep(sweep, on_row=on_row, on_total=on_total)
    return _report(path.parent, out, err, plots=not args.no_plots)


def _report(directory: Path, out: Console, err: Console, plots: bool = True, markdown: bool = False) -> int:
    from .results import COLUMNS, load_tree, markdown_table, summarize, table_rows

    rows = load_tree(directory)
    if not rows:
        raise BenchError(f"{directory} has no finished rows yet")
    if markdown:
        print(markdown_table(summarize(rows)))
    else:
        table = Table(title=f"{directory}: {len(rows)} rows")
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in ("family", "method") else "right")
        for r in table_rows(summarize(rows)):
            table.add_row(*r)
        out.print(table)
    if plots:
        from .plots import write_plots

        try:
            paths = write_plots(rows, directory)
        except BenchError as exc:  # rows are safe; only the pictures are missing
            err.print(f"[yellow]no plots: {exc}[/yellow]")
        else:
            err.print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _failures(directory: Path, out: Console, markdown: bool = False) -> int:
    from .failures import CLASSES, failure_table
    from .failures import markdown as failure_markdown

    tables = failure_table(directory)
    if markdown:
        print(failure_markdown(tables))
        return 0
    for method, t in tables.items():
        table = Table(
            title=f"{method}: {t['failed']} of {t['rows']} rows failed; most identical cells in a row: {t['repeat']}"
        )
        table.add_column("class")
        table.add_column("rows", justify="right")
        table.add_column("share", justify="right")
        for name in CLASSES:
            if t["classes"][name]:
                table.add_row(name, str(t["classes"][name]), f"{100 * t['classes'][name] / t['failed']:.0f}%")
        out.print(table)
    return 0
