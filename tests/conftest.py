import os

import pytest

# Fast and slow: each test file marks itself (`pytestmark = pytest.mark.slow` for files that mostly wait on
# limits, servers, browsers or clusters; `model` for the embedded-model tests). `pytest -q` leaves both out
# (pyproject.toml's addopts); README's command and CI run everything (`-m ""`).

# A strict run (CI sets RLM_LOCAL_STRICT_SKIPS=1, having installed every part) turns every skip into a
# failure: a part that fails to install, import or start must not pass as a skip. Skips that no install can
# lift (another CPU architecture, a kernel without cgroups) say so with a reason starting "platform:".
STRICT_SKIPS = os.environ.get("RLM_LOCAL_STRICT_SKIPS") == "1"


def _strict(report) -> None:
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "platform:" not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped in a strict run (RLM_LOCAL_STRICT_SKIPS=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result())


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
