"""RLM as a service: `rlm-local serve` (an OpenAI-compatible API over RLM configurations, files, sessions,
runs, a trajectory viewer, traces and metrics). Needs the ``server`` extra."""

from .app import Service, create_service_app
from .config import RLMConfig, ServiceConfig

__all__ = ["RLMConfig", "Service", "ServiceConfig", "create_service_app"]
