import os

import pytest

# The files whose tests mostly wait (wall-clock limits, budgets, subprocesses, a browser, a Ray cluster,
# a fuzzer): the contributors' fast loop (`pytest -q`) leaves them out with the model tests; README's
# command and CI run everything (`-m ""`). Measured here: about 90 of the fast suite's 137 test-seconds.
SLOW_FILES = {"test_resources.py", "test_post_escape.py", "test_budgets.py", "test_service_fuzz.py",
              "test_bench_sweep.py", "test_bench_ray.py", "test_viewer.py", "test_cli.py", "test_service_cli.py",
              "test_router.py", "test_vllm_cpu.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)

# Tests never touch a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_engine():
    """The real embedded model, loaded once for the whole session (converted on first use, ~80 s)."""
    from rlm_local.engines.hf import TransformersEngine

    engine = TransformersEngine()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def default_engine():
    """The embedded model on the default backend (llama.cpp on the packaged GGUF, ~3 s to load)."""
    from rlm_local.engines import DEFAULT_BACKEND, make_engine

    engine = make_engine(DEFAULT_BACKEND)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served_rlm(tmp_path_factory):
    """A scripted RLM service (tests/service_support.py) on 127.0.0.1 for one test module: (url, service)."""
    from service_support import make_config, serving
    with serving(make_config(tmp_path_factory.mktemp("data"))) as served:
        yield served
