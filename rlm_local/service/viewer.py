"""The trajectory viewer: a run's flat events made into a tree (run -> root turns -> cells -> sub-calls,
grouped by batch, and child runs nested under the cell that started them) served a level at a time and
paged, so a run with 10,000 sub-calls opens at once; plain HTML+JS pages (no build step) at ``/runs`` and
``/runs/{id}``; and ``file_app(path)`` serving a trajectory JSONL file for ``rlm-local view``.

Sub-calls are logged while their cell runs and the cell when it ends, so sub-calls (and child runs) wait
in ``pending`` until the next cell of their parent's depth; while a cell still runs they show under a
"running cell" node.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse

from ..runlog.trajectory import read_trajectory

STATIC = Path(__file__).parent / "viewer"
TEXT = 2000  # characters of a text field shown in a node's detail


def _tokens(usage: dict | None) -> dict[str, Any]:
    if not usage:
        return {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cached_tokens": usage.get("cached_tokens"),
    }


def build_tree(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {}

    def node(nid: str, kind: str, label: str, parent: str | None, event: dict | None = None, **detail: Any) -> dict:
        seconds = float(event.get("seconds") or 0) if event else 0.0
        end = float(event.get("time") or 0) if event else 0.0
        n = {
            "id": nid,
            "kind": kind,
            "label": label,
            "start": end - seconds if end else None,
            "seconds": seconds,
            "children": [],
            **detail,
        }
        nodes[nid] = n
        if parent is not None:
            nodes[parent]["children"].append(nid)
        return n

    root = node("run", "run", "run", None)
    stack: dict[int, str] = {0: "run"}
    pending: dict[int, list[str]] = defaultdict(list)
    last_turn: dict[int, str] = {}
    batches: dict[int, list] = {}  # parent depth -> [group id, remaining]
    open_turn: dict[int, str] = {}  # depth -> a turn whose cell has not ended yet
    ended = any(e.get("event") in ("final", "error") for e in events)
    for i, e in enumerate(events):
        kind, depth = e.get("event"), int(e.get("depth") or 0)
        if kind == "run_start":
            root.update(
                label=f"run: {str(e.get('question') or '(task in the context)')[:200]}",
                start=e.get("time"),
                question=e.get("question"),
                config=e.get("config"),
            )
        elif kind == "context":
            nodes[stack.get(depth, "run")]["context"] = e.get("metadata")
        elif kind == "root_turn":
            label = f"turn {e.get('iteration')}" + (" (closing request)" if e.get("final_request") else "")
            n = node(
                f"t{i}",
                "turn",
                label,
                stack.get(depth, "run"),
                e,
                text=(e.get("reply") or "")[:TEXT],
                error=e.get("error"),
                prompt_tokens=e.get("prompt_tokens"),
                cached_tokens=e.get("cached_tokens"),
                completion_tokens=e.get("completion_tokens"),
            )
            last_turn[depth] = n["id"]
            open_turn[depth] = n["id"]
        elif kind == "cell":
            parent = last_turn.get(depth) or stack.get(depth, "run")
            n = node(
                f"c{i}",
                "cell",
                f"cell (turn {e.get('iteration')})",
                parent,
                e,
                code=(e.get("code") or "")[:TEXT],
                text=(e.get("stdout") or "")[:TEXT],
                error=e.get("error"),
                final=e.get("final"),
            )
            n["children"] = pending.pop(depth, [])
            batches.pop(depth, None)
            open_turn.pop(depth, None)
        elif kind == "child_start":
            n = node(
                f"r{i}",
                "child",
                f"child run (depth {depth}): {str(e.get('question') or '')[:120]}",
                None,
                e,
                question=e.get("question"),
            )
            n["start"] = e.get("time")
            pending[depth - 1].append(n["id"])
            stack[depth] = n["id"]
        elif kind == "subcall" and e.get("query") == "rlm":
            child = nodes.get(stack.get(depth, ""))
            if child is not None and child["kind"] == "child":
                child.update(
                    seconds=float(e.get("seconds") or 0),
                    text=(e.get("response") or "")[:TEXT],
                    stopped_reason=e.get("stopped_reason"),
                )
                stack.pop(depth, None)
        elif kind == "subcall":
            p = depth - 1
            n = node(
                f"s{i}",
                "subcall",
                f"llm_query: {(e.get('prompt') or '')[:80]}",
                None,
                e,
                prompt=(e.get("prompt") or "")[:TEXT],
                text=(e.get("response") or "")[:TEXT],
                error=e.get("error"),
                **_tokens(e.get("usage")),
            )
            size = int(e.get("batch") or 1)
            open_batch = batches.get(p)
            if size > 1 and open_batch and open_batch[1] > 0:
                nodes[open_batch[0]]["children"].append(n["id"])
                open_batch[1] -= 1
            elif size > 1:
                g = node(f"b{i}", "batch", f"batch of {size} sub-calls", None, e)
                g["children"].append(n["id"])
                batches[p] = [g["id"], size - 1]
                pending[p].append(g["id"])
            else:
                pending[p].append(n["id"])
        elif kind in ("final", "error"):
            root.update(
                seconds=float(e.get("seconds") or 0),
                answer=e.get("answer"),
                error=e.get("error"),
                stopped_reason=e.get("stopped_reason"),
                usage=e.get("usage"),
            )
            root["label"] += f"  [{e.get('stopped_reason') or 'error'}]"
    if not ended:  # a run going on: the cell of its latest turn at each depth is still running
        for d, _turn in open_turn.items():
            pending.setdefault(d, [])
    for p, waiting in pending.items():  # a cell still running (or a direct answer at depth 0)
        holder = stack.get(p, "run") if p >= 0 else "run"
        parent = last_turn.get(p, holder) if p >= 0 else "run"
        running = node(f"running{p}", "cell", "running cell…" if not ended else "sub-calls", parent)
        running["children"] = waiting
    for n in nodes.values():
        if n["kind"] in ("batch", "child") and n["children"]:
            starts = [nodes[c]["start"] for c in n["children"] if nodes[c]["start"]]
            if n["kind"] == "batch" and starts:
                n["start"] = min(starts)
        n["size"] = len(n["children"])
    return nodes


def _tree(record: Any) -> dict[str, dict[str, Any]]:
    cached = getattr(record, "_tree", None)
    count = len(record.events)
    if cached is None or cached[0] != count:
        cached = (count, build_tree(record.events[:count]))
        record._tree = cached
    return cached[1]


def children(record: Any, node_id: str, offset: int, limit: int) -> dict[str, Any]:
    """One page of a node's children (``node="run"`` for the top), without their own children."""
    from .schemas import not_found

    nodes = _tree(record)
    if node_id not in nodes:
        raise not_found("node", node_id)
    n = nodes[node_id]
    page = [{k: v for k, v in nodes[c].items() if k != "children"} for c in n["children"][offset : offset + limit]]
    root = nodes["run"]
    return {
        "run": {k: v for k, v in root.items() if k != "children"},
        "status": record.status,
        "node": {k: v for k, v in n.items() if k != "children"},
        "offset": offset,
        "total": len(n["children"]),
        "children": page,
    }


def mount(app: FastAPI) -> None:
    """The pages and their assets (no data in them: the script asks the API, with the page's key if any)."""

    @app.get("/runs", include_in_schema=False)
    async def runs_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "runs.html").read_text(encoding="utf-8"))

    @app.get("/runs/{run_id}", include_in_schema=False)
    async def run_page(run_id: str) -> HTMLResponse:
        return HTMLResponse((STATIC / "run.html").read_text(encoding="utf-8"))

    @app.get("/viewer/{name}", include_in_schema=False)
    async def asset(name: str) -> Any:
        path = STATIC / name
        if name not in ("viewer.js", "viewer.css") or not path.exists():
            from .schemas import ApiError

            raise ApiError(404, f"no such asset: {name[:60]!r}")
        return FileResponse(path)


class _FileRun:
    def __init__(self, run_id: str, events: list[dict[str, Any]]) -> None:
        self.id, self.events = run_id, events
        self.status = "done" if any(e.get("event") in ("final", "error") for e in events) else "running"

    def meta(self) -> dict[str, Any]:
        first = self.events[0] if self.events else {}
        final: dict[str, Any] = next((e for e in reversed(self.events) if e.get("event") == "final"), {})
        return {
            "id": self.id,
            "model": (first.get("config") or {}).get("model"),
            "question": first.get("question"),
            "status": self.status,
            "created": first.get("time"),
            "answer": final.get("answer"),
            "stopped_reason": final.get("stopped_reason"),
            "seconds": final.get("seconds"),
            "events": len(self.events),
        }


def file_app(path: str | Path, key: str | None = None, bind_host: str | None = None) -> FastAPI:
    """A viewer over one trajectory JSONL file (each run id in it is one run); re-read on every request,
    so a file still being written shows live. Access as the service's: with ``key``, its API needs
    ``Authorization: Bearer <key>`` (the pages take it as ``#key=``); without, loopback clients only,
    and either way the Host header must name a loopback address or ``bind_host`` (DNS rebinding)."""
    from .auth import Access
    from .config import LOOPBACK_HOSTS, KeyConfig
    from .middleware import HostCheck
    from .schemas import ApiError, not_found

    path = Path(path)
    app = FastAPI(title="rlm-local viewer", docs_url=None, redoc_url=None)
    access = Access({key: KeyConfig("viewer", key)} if key else {})
    hosts = None if key else [*LOOPBACK_HOSTS, *([bind_host] if bind_host not in (None, "0.0.0.0", "::") else [])]
    app.add_middleware(HostCheck, allowed=hosts)

    @app.exception_handler(ApiError)
    async def _api_error(_: Any, exc: ApiError) -> Any:
        return exc.response()

    @app.middleware("http")
    async def _access(request: Any, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/"):
            try:
                access.identify(request.headers.get("authorization"), request.client.host if request.client else None)
            except ApiError as exc:
                return exc.response()
        return await call_next(request)

    def runs() -> dict[str, _FileRun]:
        grouped: dict[str, list] = defaultdict(list)
        for e in read_trajectory(path):
            grouped[e.get("run_id") or "run"].append(e)
        return {rid: _FileRun(rid, evs) for rid, evs in grouped.items()}

    @app.get("/v1/runs")
    async def list_runs() -> dict:
        return {"object": "list", "data": [r.meta() for r in runs().values()]}

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str) -> dict:
        r = runs().get(run_id)
        if r is None:
            raise not_found("run", run_id)
        return r.meta()

    @app.get("/v1/runs/{run_id}/tree")
    async def tree(
        run_id: str, node: str = "run", offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
    ):
        r = runs().get(run_id)
        if r is None:
            raise not_found("run", run_id)
        return children(r, node, offset, limit)

    mount(app)
    return app
