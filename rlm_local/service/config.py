"""What `rlm-local serve` serves: RLM configurations (each a model name clients ask for), API keys and
their limits, named contexts, the data directory and the caps that bound what one client can make the
server hold; from a TOML file and/or command-line flags.

```toml
data_dir = "~/.local/share/rlm-local/service"   # files, sessions, run trajectories
session_ttl = 3600                              # seconds an idle session lives (then it is deleted)
max_upload_mb = 50                              # one upload, and any request body (inline contexts, messages)
max_extracted_chars = 20_000_000                # characters an upload, an inline context or a session may hold
max_extract_seconds = 30                        # CPU seconds reading one PDF may take
max_live_sessions = 16                          # sessions with a live REPL (a worker process each), all keys
max_live_sessions_per_key = 4
session_idle_seconds = 600                      # an idle session's REPL is closed (its variables are saved)
max_run_records = 200                           # finished runs kept in memory; older ones are read from disk
allowed_hosts = ["rlm.example.org"]             # Host headers served (default: loopback names without keys)
public_health = false                           # /health and /metrics follow the keys (default) or answer all
public_metrics = false

[rlm.docs]                 # clients ask for model="docs"
backend = "transformers"   # root model: backend, model, base_url (openai backend); default llamacpp
model = "Qwen/Qwen3-8B"
sub_backend = "openai"     # sub-calls (default: the root's engine)
sub_model = "Qwen/Qwen3-1.7B"
sub_base_url = "http://127.0.0.1:8001/v1"
max_iterations = 30        # budgets: max_depth, max_timeout, max_tokens, max_subcalls, max_errors
max_timeout = 600

[contexts.handbook]        # a named context: rlm={"context": "handbook"}
path = "docs/handbook.pdf"

[keys.alice]               # no [keys] at all: only loopback clients, no key needed
key = "sk-alice-..."
max_concurrent_runs = 4
tokens_per_minute = 200000
```
"""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines import DEFAULT_BACKEND, Engine, Request, Result
from ..errors import ConfigError

BUDGETS = ("max_iterations", "max_depth", "max_timeout", "max_tokens", "max_subcalls", "max_errors")
ENGINE_KEYS = ("backend", "model", "base_url", "sub_backend", "sub_model", "sub_base_url", "threads")


@dataclass
class RLMConfig:
    """One RLM clients can ask for by ``name``. ``engine``/``sub_engine`` are given directly by embedders
    and tests (the scripted engine); otherwise made from backend/model."""

    name: str
    backend: str = DEFAULT_BACKEND
    model: str | None = None
    base_url: str | list[str] | None = None
    sub_backend: str | None = None
    sub_model: str | None = None
    sub_base_url: str | list[str] | None = None
    threads: int | None = None
    budgets: dict[str, Any] = field(default_factory=dict)
    engine: Engine | None = None
    sub_engine: Engine | None = None

    def public(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model or (self.engine.model_name if self.engine else None),
            "sub_model": self.sub_model or (self.sub_engine.model_name if self.sub_engine else None),
            **self.budgets,
        }


@dataclass
class KeyConfig:
    name: str
    key: str
    max_concurrent_runs: int | None = None
    tokens_per_minute: int | None = None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class BareModel:
    """A plain model served under ``name`` (``rlm-local serve --bare``, ``bare.create_app``): its engine,
    and the scheduler requests go through (None: the engine itself, under a lock of its own, for engines
    written before engines had to be thread-safe)."""

    name: str
    engine: Engine
    scheduler: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def submit(self, requests: list[Request], run_id: str) -> list[Result]:
        if self.scheduler is not None:
            return list(self.scheduler.submit(requests, run_id))
        with self.lock:
            return self.engine.generate(requests)


@dataclass
class ServiceConfig:
    """Everything the service serves and every cap on what it holds (the defaults are the safe ones)."""

    rlms: dict[str, RLMConfig] = field(default_factory=dict)
    keys: dict[str, KeyConfig] = field(default_factory=dict)  # by key string
    contexts: dict[str, Path] = field(default_factory=dict)
    data_dir: Path = field(default_factory=lambda: Path("~/.local/share/rlm-local/service").expanduser())
    session_ttl: float = 3600.0
    max_upload_bytes: int = 50 * 1024 * 1024  # also the cap on any request body
    max_extracted_chars: int = 20_000_000
    max_extract_seconds: float = 30.0
    max_live_sessions: int = 16
    max_live_sessions_per_key: int = 4
    session_idle_seconds: float = 600.0
    max_run_records: int = 200
    allowed_hosts: list[str] | None = None  # None: LOOPBACK_HOSTS (+ the bind address) without keys, any with keys
    public_health: bool = False
    public_metrics: bool = False
    max_workers: int = 32  # runs at once in this process, all keys together
    bare: list[BareModel] = field(default_factory=list)  # bare mode: only these models, no RLMs

    def hosts(self, bind: str | None = None) -> list[str] | None:
        """The Host names served (None: any)."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        if self.keys:
            return None
        return list(LOOPBACK_HOSTS) + ([bind] if bind and bind not in ("0.0.0.0", "::", "") else [])

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ServiceConfig:
        raw: dict[str, Any] = {}
        if path is not None:
            try:
                raw = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, base=Path(path).expanduser().parent if path else Path.cwd(), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path | None = None, **overrides: Any) -> ServiceConfig:
        base = base or Path.cwd()
        known = {"data_dir", "max_upload_mb", "allowed_hosts", "rlm", "keys", "contexts", *SETTINGS}
        if unknown := set(raw) - known:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls()
        if "data_dir" in raw:
            cfg.data_dir = (base / Path(raw["data_dir"]).expanduser()).resolve()
        for key, kind in SETTINGS.items():
            if key in raw:
                setattr(cfg, key, _setting(key, raw[key], kind))
        if "max_upload_mb" in raw:
            cfg.max_upload_bytes = int(_setting("max_upload_mb", raw["max_upload_mb"], float) * 1024 * 1024)
        if "allowed_hosts" in raw:
            hosts = raw["allowed_hosts"]
            if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
                raise ConfigError('allowed_hosts must be a list of host names, e.g. ["rlm.example.org"] or ["*"]')
            cfg.allowed_hosts = hosts
        for name, table in (raw.get("rlm") or {}).items():
            cfg.rlms[name] = rlm_config(name, table)
        for name, table in (raw.get("keys") or {}).items():
            if not isinstance(table, dict) or not isinstance(table.get("key"), str) or len(table["key"]) < 8:
                raise ConfigError(f'keys.{name}: needs key = "..." (at least 8 characters)')
            extra = set(table) - {"key", "max_concurrent_runs", "tokens_per_minute"}
            if extra:
                raise ConfigError(f"keys.{name}: unknown settings {sorted(extra)}")
            cfg.keys[table["key"]] = KeyConfig(
                name, table["key"], table.get("max_concurrent_runs"), table.get("tokens_per_minute")
            )
        for name, table in (raw.get("contexts") or {}).items():
            if not isinstance(table, dict) or "path" not in table:
                raise ConfigError(f'contexts.{name}: needs path = "..."')
            cfg.contexts[name] = (base / Path(table["path"]).expanduser()).resolve()
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


# Scalar settings of the TOML file: their types (numbers must be positive).
SETTINGS: dict[str, type] = {
    "session_ttl": float,
    "max_extracted_chars": int,
    "max_extract_seconds": float,
    "max_live_sessions": int,
    "max_live_sessions_per_key": int,
    "session_idle_seconds": float,
    "max_run_records": int,
    "max_workers": int,
    "public_health": bool,
    "public_metrics": bool,
}


def _setting(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"{key} must be a {'whole ' if kind is int else ''}number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    return kind(value)


def rlm_config(name: str, table: dict[str, Any]) -> RLMConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"rlm.{name} must be a table")
    if unknown := set(table) - set(ENGINE_KEYS) - set(BUDGETS):
        raise ConfigError(f"rlm.{name}: unknown settings {sorted(unknown)}; known: {sorted(ENGINE_KEYS + BUDGETS)}")
    budgets = {k: table[k] for k in BUDGETS if table.get(k) is not None}
    return RLMConfig(name=name, budgets=budgets, **{k: table[k] for k in ENGINE_KEYS if k in table})
