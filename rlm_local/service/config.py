"""What `rlm-local serve` serves: RLM configurations (each a model name clients ask for), API keys and
their limits, named contexts, the data directory and caps; from a TOML file and/or command-line flags.

```toml
data_dir = "~/.local/share/rlm-local/service"   # files, sessions, run trajectories
session_ttl = 3600                              # seconds an idle session lives
max_upload_mb = 50

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

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines import DEFAULT_BACKEND, Engine
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


@dataclass
class ServiceConfig:
    rlms: dict[str, RLMConfig] = field(default_factory=dict)
    keys: dict[str, KeyConfig] = field(default_factory=dict)  # by key string
    contexts: dict[str, Path] = field(default_factory=dict)
    data_dir: Path = field(default_factory=lambda: Path("~/.local/share/rlm-local/service").expanduser())
    session_ttl: float = 3600.0
    max_upload_bytes: int = 50 * 1024 * 1024
    max_workers: int = 32  # runs at once in this process, all keys together

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
        known = {"data_dir", "session_ttl", "max_upload_mb", "max_workers", "rlm", "keys", "contexts"}
        if unknown := set(raw) - known:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls()
        if "data_dir" in raw:
            cfg.data_dir = (base / Path(raw["data_dir"]).expanduser()).resolve()
        cfg.session_ttl = float(raw.get("session_ttl", cfg.session_ttl))
        cfg.max_upload_bytes = int(float(raw.get("max_upload_mb", 50)) * 1024 * 1024)
        cfg.max_workers = int(raw.get("max_workers", cfg.max_workers))
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


def rlm_config(name: str, table: dict[str, Any]) -> RLMConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"rlm.{name} must be a table")
    if unknown := set(table) - set(ENGINE_KEYS) - set(BUDGETS):
        raise ConfigError(f"rlm.{name}: unknown settings {sorted(unknown)}; known: {sorted(ENGINE_KEYS + BUDGETS)}")
    budgets = {k: table[k] for k in BUDGETS if table.get(k) is not None}
    return RLMConfig(name=name, budgets=budgets, **{k: table[k] for k in ENGINE_KEYS if k in table})
