"""Server overhead per RLM run: the same scripted run in-process (``RLM.completion``) and through
``rlm-local serve``'s app over real HTTP on 127.0.0.1 (the openai SDK as the client, non-streaming and
streaming). The scripted engine answers at once, so the difference is what the service adds: HTTP, JSON,
run bookkeeping, the trajectory and meta files, metrics and the event stream.

    python scripts/service_overhead.py [--runs 30] [--out service_overhead.json]

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from rlm_local import RLM
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.service import RLMConfig, ServiceConfig, create_service_app
from rlm_local.testing import BackgroundServer

CODE = "```repl\nparts = llm_query_batched(['part ' + str(i) + ' ' + str(context)[-14:] for i in range(4)])\nFINAL(parts[0])\n```"


def reply(request) -> str:
    if request.messages and request.messages[0]["role"] == "system":
        return CODE
    return "sub:" + request.messages[-1]["content"]


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s) * 1000, 2),
        "mean_ms": round(statistics.fmean(s) * 1000, 2),
        "p90_ms": round(s[int(0.9 * (len(s) - 1))] * 1000, 2),
        "runs": len(s),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default="service_overhead.json")
    args = ap.parse_args(argv)
    engine = ScriptedEngine(reply, model_name="scripted-model")
    docs = [f"document {i} " + "text " * 200 + f"END-{i:04d}" for i in range(3 * args.runs + 3)]

    inproc, http, streamed = [], [], []
    with tempfile.TemporaryDirectory() as data, RLM(engine=engine, max_iterations=3) as rlm:
        config = ServiceConfig(
            rlms={"rlm": RLMConfig(name="rlm", engine=engine, budgets={"max_iterations": 3})}, data_dir=Path(data)
        )
        app = create_service_app(config, tracer_provider=None)
        try:
            with BackgroundServer(app) as url:
                client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

                def ask(doc: str, **kw):
                    return client.chat.completions.create(
                        model="rlm",
                        messages=[{"role": "user", "content": doc}, {"role": "user", "content": "end?"}],
                        **kw,
                    )

                rlm.completion(docs[-1], "warm up")
                ask(docs[-2])
                # Interleaved, so that load from other processes on the machine hits all three paths alike.
                for i in range(args.runs):
                    t = time.perf_counter()
                    result = rlm.completion(docs[3 * i], "what is at the end?")
                    inproc.append(time.perf_counter() - t)
                    assert f"END-{3 * i:04d}" in result.response, result.response
                    t = time.perf_counter()
                    r = ask(docs[3 * i + 1])
                    http.append(time.perf_counter() - t)
                    assert f"END-{3 * i + 1:04d}" in r.choices[0].message.content
                    t = time.perf_counter()
                    text = "".join(
                        c.choices[0].delta.content or "" for c in ask(docs[3 * i + 2], stream=True) if c.choices
                    )
                    streamed.append(time.perf_counter() - t)
                    assert f"END-{3 * i + 2:04d}" in text
        finally:
            app.state.service.close()

    rows = {
        "in-process completion()": stats(inproc),
        "server, non-streaming": stats(http),
        "server, streaming": stats(streamed),
    }
    base = rows["in-process completion()"]["median_ms"]
    print(f"{'path':28} {'median ms':>10} {'mean ms':>10} {'p90 ms':>10} {'overhead ms':>12}")
    for name, r in rows.items():
        print(
            f"{name:28} {r['median_ms']:>10.2f} {r['mean_ms']:>10.2f} {r['p90_ms']:>10.2f} "
            f"{r['median_ms'] - base:>12.2f}"
        )
    out = {
        "runs": args.runs,
        "paths": rows,
        "overhead_median_ms": {k: round(v["median_ms"] - base, 2) for k, v in rows.items()},
        "note": "scripted engine (no model time): one root turn, one cell with a batch of 4 sub-calls, FINAL",
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
