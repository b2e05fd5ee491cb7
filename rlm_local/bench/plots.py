"""PNG plots of saved rows, the shape of the paper's figures: score against context length per method
(Fig. 1) and cost percentiles per method (Fig. 4: tokens and seconds at p25 / p50 / p75 / p95).

matplotlib runs with the Agg backend (no display needed); it is the ``bench`` extra.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .items import METHODS, BenchError
from .results import percentile, summarize

PERCENTILES = (25, 50, 75, 95)
MARKERS = ("o", "s", "^", "D", "v")
STYLES = ("-", "--", "-.", ":")


def _short(tokens: int) -> str:
    return f"{tokens / 1e6:g}M" if tokens >= 1_000_000 else f"{tokens / 1e3:g}K" if tokens >= 1000 else str(tokens)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchError("plots need matplotlib: pip install 'rlm-local[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def FuncFormatter(fn: Any) -> Any:  # noqa: N802  (matplotlib's class, imported only when plotting)
    from matplotlib.ticker import FuncFormatter as formatter

    return formatter(fn)


def _order(methods: set[str]) -> list[str]:
    return [m for m in METHODS if m in methods] + sorted(methods - set(METHODS))


def plot_scores(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per family: mean score (%) against context length (tokens, log scale), a line per method."""
    plt = _pyplot()
    cells = summarize(rows)
    families = sorted({c.family for c in cells})
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.8), squeeze=False)
    models = sorted({c.model for c in cells})
    # One style per (model, method) across all panels, so a method looks the same in every family.
    series = [(model, m) for model in models for m in _order({c.method for c in cells})]
    for ax, fam in zip(axes[0], families):
        for k, (model, method) in enumerate(series):
            pts = sorted(
                (c.length_tokens, 100 * c.score)
                for c in cells
                if c.family == fam and c.method == method and c.model == model
            )
            if not pts:
                continue
            # Methods often tie (all 0 or all 100): a small sideways dodge and distinct markers keep each visible.
            dodge = 1.0 + 0.04 * (k - (len(series) - 1) / 2)
            ax.plot(
                [p[0] * dodge for p in pts],
                [p[1] for p in pts],
                marker=MARKERS[k % len(MARKERS)],
                linestyle=STYLES[k % len(STYLES)],
                color=f"C{k % 10}",
                alpha=0.85,
                label=method if len(models) == 1 else f"{method} ({model})",
            )
        lengths = sorted({c.length_tokens for c in cells if c.family == fam})
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [_short(n) for n in lengths])
        ax.minorticks_off()
        ax.set_ylim(-5, 105)
        ax.set_title(fam)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, f"score against context length ({', '.join(models)})", path)


def plot_costs(rows: list[dict[str, Any]], path: Path) -> Path:
    """Two panels: total tokens and seconds per query, percentiles per method (all families and lengths)."""
    plt = _pyplot()
    models = sorted({r["model"] for r in rows})
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:  # with several models in the rows, one group per (method, model)
        by_method[r["method"] if len(models) == 1 else f"{r['method']}\n{r['model']}"].append(r)
    order = _order({k.split("\n")[0] for k in by_method})
    methods = sorted(by_method, key=lambda k: (order.index(k.split("\n")[0]), k))
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.4 * len(methods)), 3.8))
    width = 0.8 / len(PERCENTILES)
    for ax, (label, value) in zip(
        axes,
        (
            ("tokens per query", lambda r: r["prompt_tokens"] + r["completion_tokens"]),
            ("seconds per query", lambda r: r["seconds"]),
        ),
    ):
        for k, q in enumerate(PERCENTILES):
            heights = [percentile([float(value(r)) for r in by_method[m]], q) for m in methods]
            ax.bar(
                [i + (k - (len(PERCENTILES) - 1) / 2) * width for i in range(len(methods))],
                heights,
                width,
                label=f"p{q}",
            )
        ax.set_xticks(range(len(methods)), methods, fontsize=9 if len(models) == 1 else 7)
        if all(percentile([float(value(r)) for r in rs], 25) > 0 for rs in by_method.values()):
            ax.set_yscale("log")  # costs span orders of magnitude; a zero (an oracle's base) needs linear
            plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return _save(plt, fig, f"cost per query by method ({len(rows)} rows)", path)


def _save(plt: Any, fig: Any, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    if not rows:
        raise BenchError("no rows to plot")
    out.mkdir(parents=True, exist_ok=True)
    return [plot_scores(rows, out / "scores.png"), plot_costs(rows, out / "costs.png")]
