"""Does the service answer as well as the CLI? The same planted-fact documents asked on the embedded model
(default engine) the CLI's way (``rlm-local run --context FILE``: the file read by rlm_local.documents and
given to ``RLM.completion`` as one str) and through ``rlm-local serve``'s app over real HTTP with the openai
SDK, each way a user can give the document: an uploaded file (``file_ids``), a session, and an earlier chat
message. Greedy decoding: one document asked the same way gives the same answer, so the tasks differ.

    python scripts/service_answers.py [--tasks 4] [--length 30000] [--out scripts/results/service_answers.json]

Prints correct/total per way and writes every answer as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from rlm_local import RLM
from rlm_local.documents import read_context
from rlm_local.engines import DEFAULT_BACKEND, make_engine
from rlm_local.service import RLMConfig, ServiceConfig, create_service_app
from rlm_local.testing import BackgroundServer

try:  # one needle generator (issue 18) lives in bench/niah.py; before that, bench/haystack.py
    from rlm_local.bench.niah import make_needle_task
except ImportError:
    from rlm_local.bench.haystack import make_needle_task  # type: ignore[no-redef]

BUDGETS = {"max_iterations": 4, "max_timeout": 300}
WAYS = ("cli", "file_ids", "session", "messages")
KEYS = ("amber falcon", "silver lantern", "quiet meadow", "copper harbor", "velvet orchard", "granite bell")


def ask(way: str, url: str, engine: Any, path: Path, question: str) -> tuple[str, Any]:
    """The answer and the context's type as the root saw it (from the run's context event)."""
    if way == "cli":
        with RLM(engine=engine, **BUDGETS) as rlm:
            result = rlm.completion(read_context(str(path)), question)
        kind = next((e["metadata"]["type"] for e in result.trajectory if e["event"] == "context"), None)
        return result.response, kind
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    if way == "messages":
        messages = [{"role": "user", "content": path.read_text()}, {"role": "user", "content": question}]
        r = client.chat.completions.create(model="rlm", messages=messages)
    else:
        f = client.files.create(file=(path.name, path.read_bytes()), purpose="assistants")
        rlm: dict[str, Any] = {"file_ids": [f.id]}
        if way == "session":
            s = httpx.post(url + "/v1/sessions", json={"model": "rlm", "file_ids": [f.id]}, timeout=30).json()
            rlm = {"session": s["id"]}
        r = client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": question}], extra_body={"rlm": rlm}
        )
    run_id = r.model_extra["rlm"]["run_id"]
    run = httpx.get(f"{url}/v1/runs/{run_id}/tree", timeout=30).json()["run"]
    return r.choices[0].message.content or "", (run.get("context") or {}).get("type")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--length", type=int, default=30_000)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--out", default="scripts/results/service_answers.json")
    args = ap.parse_args(argv)
    ways = args.ways.split(",")
    engine = make_engine(DEFAULT_BACKEND)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = ServiceConfig(
            rlms={"rlm": RLMConfig(name="rlm", engine=engine, budgets=dict(BUDGETS))}, data_dir=Path(tmp) / "data"
        )
        app = create_service_app(config, tracer_provider=None)
        try:
            with BackgroundServer(app) as url:
                for i in range(args.tasks):
                    task = make_needle_task(length=args.length, depth=(0.15 + 0.23 * i) % 1, seed=40 + i, key=KEYS[i])
                    path = Path(tmp) / f"doc{i}.txt"
                    path.write_text(task.context, encoding="utf-8")
                    for way in ways:
                        started = time.monotonic()
                        answer, kind = ask(way, url, engine, path, task.question)
                        row = {
                            "task": i,
                            "way": way,
                            "context_type": kind,
                            "answer": answer[:200],
                            "expected": task.answer,
                            "correct": task.is_correct(answer),
                            "seconds": round(time.monotonic() - started, 1),
                        }
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            app.state.service.close()
            engine.close()
    summary = {
        w: f"{sum(r['correct'] for r in rows if r['way'] == w)}/{sum(r['way'] == w for r in rows)}" for w in ways
    }
    print(f"{'way':<10} correct/total  context type")
    for w in ways:
        kinds = sorted({str(r["context_type"]) for r in rows if r["way"] == w})
        print(f"{w:<10} {summary[w]:>13}  {', '.join(kinds)}")
    out = {"budgets": BUDGETS, "length": args.length, "summary": summary, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
