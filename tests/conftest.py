import os

import pytest

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
