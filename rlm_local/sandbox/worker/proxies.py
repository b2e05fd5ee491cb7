"""The modules the sandbox may import, as read-only stand-ins (worker side only).

A proxy holds only the names allowlist.py marks safe (as they are) or wrapped (as their guarded
replacements); a name the table does not list is never exposed, whatever the module holds. The proxy
class has no public member of its own, so the getattr guard can let every public name through to it.
"""

from __future__ import annotations

import codecs

try:
    from . import allowlist as A
    from .wrapped import module_wrappers
except ImportError:  # (mypy checks the package form above; this fallback is the script form)
    import allowlist as A  # type: ignore[import-not-found, no-redef]
    from wrapped import module_wrappers  # type: ignore[import-not-found, no-redef]

# C code inside datetime imports these through the frame's __import__ (strftime/strptime).
C_INTERNAL_IMPORTS = ("time", "_strptime")
PRELOADED_CODECS = (
    "ascii",
    "latin-1",
    "utf-8-sig",
    "utf-16",
    "utf-32",
    "cp1252",
    "iso8859-15",
    "unicode-escape",
    "raw-unicode-escape",
    "idna",
    "punycode",
    "mac-roman",
    "cp437",
)


class ModuleProxy:
    """Read-only stand-in for an allowed module: only the names allowlist.py marks safe (as is) or
    wrapped (as their guarded replacements)."""

    __slots__ = ("_mod_name", "_mod_attrs", "_mod_removed")

    def __init__(self, name: str, attrs: dict, removed: dict[str, str]):
        object.__setattr__(self, "_mod_name", name)
        object.__setattr__(self, "_mod_attrs", attrs)
        object.__setattr__(self, "_mod_removed", removed)

    def __getattr__(self, attr):
        if attr == "__name__":  # for ImportError messages of `from x import y`
            return self._mod_name
        try:
            return self._mod_attrs[attr]
        except KeyError:
            raise AttributeError(self._missing(attr)) from None

    def _missing(self, attr: str) -> str:  # private: the guard lets every public name through to proxies
        why = self._mod_removed.get(attr)
        if why is None:
            return f"module '{self._mod_name}' has no attribute '{attr}'"
        return f"'{self._mod_name}.{attr}' is not available in the sandbox: {why}"

    def __setattr__(self, attr, value):
        raise AttributeError(f"module '{self._mod_name}' is read-only in the sandbox")

    def __delattr__(self, attr):
        raise AttributeError(f"module '{self._mod_name}' is read-only in the sandbox")

    def __dir__(self):
        return sorted(self._mod_attrs)

    def __repr__(self):
        return f"<module '{self._mod_name}'>"


def make_module_proxies() -> dict[str, ModuleProxy]:
    """One proxy per allowed module, built from the allowlist only: a name the table does not list is
    never exposed, whatever the module holds."""
    table = A.parse(A.MODULE_ROWS)
    wrappers = module_wrappers()
    proxies = {}
    for name in A.ALLOWED_MODULES:
        mod = __import__(name)
        attrs, removed = {}, {}
        for attr, (verdict, why) in table[name].items():
            if verdict == A.SAFE:
                attrs[attr] = getattr(mod, attr)
            elif verdict == A.WRAPPED:
                attrs[attr] = wrappers[(name, attr)]
            else:
                removed[attr] = why
        proxies[name] = ModuleProxy(name, attrs, removed)
    for name in C_INTERNAL_IMPORTS:
        __import__(name)
    for codec in PRELOADED_CODECS:  # codecs load lazily from disk, and the worker loses file access
        codecs.lookup(codec)
    return proxies
