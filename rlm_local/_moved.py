"""Old import paths from before the package was laid out by layer: each still imports, as the very module at
its new home, with a DeprecationWarning naming that home. Installed once by ``rlm_local/__init__.py``."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "rlm_local.run": "rlm_local.loop.run",
    "rlm_local.conversation": "rlm_local.loop.conversation",
    "rlm_local.formats": "rlm_local.loop.formats",
    "rlm_local.prompts": "rlm_local.loop.prompts",
    "rlm_local.parsing": "rlm_local.loop.parsing",
    "rlm_local.final": "rlm_local.loop.final",
    "rlm_local.steering": "rlm_local.loop.steering",
    "rlm_local.batching": "rlm_local.loop.batching",
    "rlm_local.persistent": "rlm_local.loop.persistent",
    "rlm_local.scheduler": "rlm_local.scheduling.scheduler",
    "rlm_local.schedulers": "rlm_local.scheduling.registry",
    "rlm_local.prefix": "rlm_local.scheduling.prefix",
    "rlm_local.events": "rlm_local.runlog.events",
    "rlm_local.trajectory": "rlm_local.runlog.trajectory",
    "rlm_local.usage": "rlm_local.runlog.usage",
    "rlm_local.display": "rlm_local.runlog.display",
    "rlm_local.packaged": "rlm_local.models.packaged",
    "rlm_local.haystack": "rlm_local.bench.niah",
    "rlm_local.server": "rlm_local.service.bare",
    "rlm_local.sandbox.session": "rlm_local.sandbox.sandbox",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)  # the same module object under both names

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
