"""rlm-local: Recursive Language Models on your own hardware.

    from rlm_local import RLM
    rlm = RLM(backend="llamacpp", backend_kwargs={"model_name": None})
    result = rlm.completion(long_text, root_prompt="What does clause 14 require?")
    print(result.response, result.stopped_reason, result.usage_summary.to_dict())

Heavy parts (torch, the model, the sandbox worker) load only when an RLM or engine is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Error": "errors",
    "InputError": "errors",
    "DocumentError": "documents",
    "RLM": "rlm",
    "RLMResult": "rlm",
    "RLMChatCompletion": "rlm",
    "RLMLogger": "rlm",
    "RLMError": "rlm",
    "LimitExceededError": "errors",
    "TimeoutExceededError": "errors",
    "TokenLimitExceededError": "errors",
    "BudgetExceededError": "errors",
    "ErrorThresholdExceededError": "errors",
    "CancellationError": "errors",
    "ContextError": "loop.prompts",
    "BudgetExceeded": "loop.run",
    "SetupError": "loop.run",
    "Budget": "loop.run",
    "Run": "loop.run",
    "UsageSummary": "runlog.usage",
    "ModelUsageSummary": "runlog.usage",
    "Sandbox": "sandbox",
    "Limits": "sandbox",
    "CellResult": "sandbox",
    "Request": "engines",
    "Result": "engines",
    "SamplingParams": "engines",
    "Usage": "engines",
    "EngineError": "engines",
    "make_engine": "engines",
    "Scheduler": "scheduling.scheduler",
    "ModelNotFoundError": "models",
    "ModelLoadError": "models",
}

if TYPE_CHECKING:  # what type checkers see of the lazy exports above (at run time __getattr__ imports them)
    from .documents import DocumentError as DocumentError
    from .engines import EngineError as EngineError
    from .engines import Request as Request
    from .engines import Result as Result
    from .engines import SamplingParams as SamplingParams
    from .engines import Usage as Usage
    from .engines import make_engine as make_engine
    from .errors import BudgetExceededError as BudgetExceededError
    from .errors import CancellationError as CancellationError
    from .errors import Error as Error
    from .errors import ErrorThresholdExceededError as ErrorThresholdExceededError
    from .errors import InputError as InputError
    from .errors import LimitExceededError as LimitExceededError
    from .errors import TimeoutExceededError as TimeoutExceededError
    from .errors import TokenLimitExceededError as TokenLimitExceededError
    from .loop.prompts import ContextError as ContextError
    from .loop.run import Budget as Budget
    from .loop.run import BudgetExceeded as BudgetExceeded
    from .loop.run import Run as Run
    from .loop.run import SetupError as SetupError
    from .models import ModelLoadError as ModelLoadError
    from .models import ModelNotFoundError as ModelNotFoundError
    from .rlm import RLM as RLM
    from .rlm import RLMChatCompletion as RLMChatCompletion
    from .rlm import RLMError as RLMError
    from .rlm import RLMLogger as RLMLogger
    from .rlm import RLMResult as RLMResult
    from .runlog.usage import ModelUsageSummary as ModelUsageSummary
    from .runlog.usage import UsageSummary as UsageSummary
    from .sandbox import CellResult as CellResult
    from .sandbox import Limits as Limits
    from .sandbox import Sandbox as Sandbox
    from .scheduling.scheduler import Scheduler as Scheduler


def __getattr__(name: str) -> Any:
    # Lazy exports keep `import rlm_local` (and the CLI's --help) fast.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rlm_local' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)

from ._moved import install as _install_moved  # noqa: E402  (old module paths keep importing)

_install_moved()
