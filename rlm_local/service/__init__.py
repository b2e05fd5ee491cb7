"""RLM as a service: `rlm-local serve` (an OpenAI-compatible API over RLM configurations, files, sessions,
runs, a trajectory viewer, traces and metrics). Needs the ``server`` extra."""

try:
    from .app import Service, create_service_app
    from .config import RLMConfig, ServiceConfig
except ModuleNotFoundError as _exc:  # one line that names the extra, not a traceback into fastapi
    if _exc.name and _exc.name.split(".")[0] in (
        "fastapi",
        "uvicorn",
        "sse_starlette",
        "prometheus_client",
        "starlette",
    ):
        raise ModuleNotFoundError(
            f"rlm_local.service needs the server extra: pip install 'rlm-local[server]' (missing: {_exc.name})",
            name=_exc.name,
        ) from None
    raise

__all__ = ["RLMConfig", "Service", "ServiceConfig", "create_service_app"]
