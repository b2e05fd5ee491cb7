"""`bench --ray`: items spread over a real local Ray cluster (started here with ray.init(), not a mock)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

ray = pytest.importorskip("ray")

from rlm_local.bench.ray_runner import run_sweep_on_ray  # noqa: E402
from rlm_local.bench.results import load_rows  # noqa: E402
from rlm_local.bench.runner import EngineSpec, Sweep  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # workers import this checkout's rlm_local
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}},
    )
    yield
    ray.shutdown()


def test_sweep_on_a_local_ray_cluster_scores_and_resumes(cluster, tmp_path):
    sweep = Sweep(
        family="oolong",
        lengths=[2000],
        n=6,
        methods=["rlm", "base"],
        engine=EngineSpec("oracle"),
        concurrency=2,
        out=tmp_path,
    )
    seen = []
    path = run_sweep_on_ray(sweep, workers=2, on_row=seen.append)
    rows = load_rows(path)
    assert len(rows) == len(seen) == 12
    assert [r["score"] for r in rows if r["method"] == "rlm"] == [1.0] * 6
    assert len({r["worker"] for r in rows}) == 2  # both workers ran items
    assert len({(r["item_id"], r["method"]) for r in rows}) == 12
    # resume: a longer sweep on the same directory runs only the new items
    more = Sweep(
        family="oolong",
        lengths=[2000],
        n=8,
        methods=["rlm", "base"],
        engine=EngineSpec("oracle"),
        concurrency=2,
        out=tmp_path,
        resume=True,
    )
    rows = load_rows(run_sweep_on_ray(more, workers=2))
    assert len(rows) == 16 and len({(r["item_id"], r["method"]) for r in rows}) == 16
