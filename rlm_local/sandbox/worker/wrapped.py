"""The wrapped replacements of allowlisted callables whose real versions get or set attributes by a
caller-chosen name or write dunders (allowlist verdict ``wrapped``; worker side only). Each accepts only
the default names, writes only to objects the sandbox created, and never copies host internals.
"""

from __future__ import annotations

import functools
import types
from typing import Any

try:
    from .owners import SandboxMeta, sandbox_made
except ImportError:  # (mypy checks the package form above; this fallback is the script form)
    from owners import SandboxMeta, sandbox_made  # type: ignore[import-not-found, no-redef]


def _name_subset(names: Any, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The caller's names as our own constants, refusing anything outside ``allowed`` (a str subclass
    with a lying __eq__ never reaches functools: only the strings of ``allowed`` do)."""
    if names is allowed:
        return allowed
    chosen = set()
    for n in names:
        if type(n) is not str or n not in allowed:
            raise TypeError(f"functools {what}= may only name {', '.join(allowed)} in the sandbox")
        chosen.add(n)
    return tuple(a for a in allowed if a in chosen)


def update_wrapper(wrapper, wrapped, assigned=functools.WRAPPER_ASSIGNMENTS, updated=functools.WRAPPER_UPDATES):
    """functools.update_wrapper restricted to the default attribute names, writing only to a function,
    class or instance the sandbox created. __dict__ is copied only from a sandbox function (whose dict only
    ever holds what this function copied from other sandbox functions): any other object's dict may hold
    host internals (JSONDecoder instances keep host parse functions there), which the member guard
    trusts in instances of pure sandbox classes."""
    assigned = _name_subset(assigned, functools.WRAPPER_ASSIGNMENTS, "assigned")
    updated = _name_subset(updated, functools.WRAPPER_UPDATES, "updated")
    if not sandbox_made(wrapper):
        raise TypeError("update_wrapper/wraps can only update functions, classes and instances defined in the sandbox")
    if type(wrapped) is not types.FunctionType or not sandbox_made(wrapped):
        updated = ()
    return functools.update_wrapper(wrapper, wrapped, assigned, updated)


def wraps(wrapped, assigned=functools.WRAPPER_ASSIGNMENTS, updated=functools.WRAPPER_UPDATES):
    """functools.wraps on top of the restricted update_wrapper."""
    assigned = _name_subset(assigned, functools.WRAPPER_ASSIGNMENTS, "assigned")
    updated = _name_subset(updated, functools.WRAPPER_UPDATES, "updated")
    return functools.partial(update_wrapper, wrapped=wrapped, assigned=assigned, updated=updated)


def total_ordering(cls):
    """functools.total_ordering for classes defined in the sandbox only (it sets dunder methods)."""
    if not isinstance(cls, SandboxMeta):
        raise TypeError("total_ordering only works on classes defined in the sandbox")
    return functools.total_ordering(cls)


class cached_property:  # noqa: N801 (stands in for functools.cached_property)
    """functools.cached_property for sandbox classes: the cache key is the name the class statement
    bound (kept in a private slot the sandbox cannot reach or set), must be a public identifier, and
    values are cached only in instances of sandbox classes (the same as ``self.name = value``)."""

    __slots__ = ("_cp_func", "_cp_name")

    def __init__(self, func):
        self._cp_func = func
        self._cp_name = None

    def __set_name__(self, owner, name):
        if not isinstance(owner, SandboxMeta) or type(name) is not str or name.startswith("_"):
            raise TypeError("cached_property only works as a public attribute of a sandbox class")
        self._cp_name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        name = self._cp_name
        if name is None or not isinstance(type(instance), SandboxMeta):
            raise TypeError("cached_property only works on instances of sandbox classes")
        cache = instance.__dict__
        if name in cache:
            return cache[name]
        value = cache[name] = self._cp_func(instance)
        return value


def module_wrappers() -> dict[tuple[str, str], Any]:
    """(module, name) -> replacement for every ``wrapped`` module-level row."""
    return {
        ("functools", "update_wrapper"): update_wrapper,
        ("functools", "wraps"): wraps,
        ("functools", "total_ordering"): total_ordering,
        ("functools", "cached_property"): cached_property,
    }
