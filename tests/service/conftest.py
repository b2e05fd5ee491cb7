"""The service tests: the RLM service and the bare-model server under real uvicorn on loopback."""

import pytest


@pytest.fixture(scope="module")
def served_rlm(tmp_path_factory):
    """A scripted RLM service (tests/service/service_support.py) on 127.0.0.1 for one test module: (url, service)."""
    from service_support import make_config, serving

    with serving(make_config(tmp_path_factory.mktemp("data"))) as served:
        yield served
