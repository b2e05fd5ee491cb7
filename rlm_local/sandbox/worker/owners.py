"""Who owns an object in the worker: the sandbox (its classes, their instances, its functions) or the host
(everything else). Worker side only; guards.py and members.py enforce what follows from it.

Guarantees:
- ``SandboxMeta`` is the metaclass of every class statement in the sandbox. A sandbox class with a host
  base whose own code sets attributes on instances (any host class but the builtin bases that never write
  an instance dict) cannot hold a property with a setter or deleter, or any other data descriptor, at
  creation or later, in itself or any class of its MRO: host code (``JSONDecoder.__init__`` storing its
  C scanner) never passes host internals to sandbox code through a descriptor.
- Every change to a sandbox class's dict, by sandbox or host code (``total_ordering``, a host
  ``__init_subclass__``), calls the session's hook, which drops the member guard's cached verdicts.
- Host-owned containers (mutable containers held by host classes and modules: ``TextWrapper.
  unicode_whitespace_trans``) are registered by identity; the guards hand the sandbox read-only views of
  them and refuse writes and mutating methods on them, so no session state can poison host code.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

CELL_FILE_PREFIX = "<cell "  # repl.Repl compiles cells as "<cell N>"; host code never has this name
MUTABLE_CONTAINERS = (dict, list, set, bytearray, collections.deque)
# Builtin bases of sandbox classes whose code never writes an instance __dict__ (BaseException's notes
# go to '__notes__', unreadable): instances of sandbox classes over only these are filled by sandbox code.
DICTLESS_HOST_BASES = frozenset(
    {
        object,
        dict,
        list,
        set,
        frozenset,
        tuple,
        str,
        bytes,
        int,
        float,
        BaseException,
        Exception,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        LookupError,
        ArithmeticError,
    }
)
_PROPERTY_FSET = property.__dict__["fset"].__get__  # read off the property itself, never a subclass's override
_PROPERTY_FDEL = property.__dict__["fdel"].__get__


def _nothing() -> None:
    pass


def sets_through(value: Any) -> bool:
    """Whether a class attribute runs code when an instance attribute of its name is set or deleted."""
    kind = type(value)
    if not (hasattr(kind, "__set__") or hasattr(kind, "__delete__")):
        return False
    if isinstance(value, property):
        return _PROPERTY_FSET(value) is not None or _PROPERTY_FDEL(value) is not None
    return True


def writing_host_base(cls: type) -> type | None:
    """The first host class in ``cls``'s MRO whose code may set attributes on its instances, or None."""
    for c in cls.__mro__:
        if not isinstance(c, SandboxMeta) and c not in DICTLESS_HOST_BASES:
            return c
    return None


def _check_descriptors(cls: type, extra: dict[str, Any] | None = None) -> None:
    host = writing_host_base(cls)
    if host is None:
        return
    for c in cls.__mro__:
        if not isinstance(c, SandboxMeta):
            continue
        for name, value in list(vars(c).items()) + list((extra or {}).items()):
            if sets_through(value):
                raise TypeError(
                    f"class {cls.__name__} cannot have a property '{name}' with a setter or deleter: its base "
                    f"{host.__name__} runs host code that sets attributes on it; use a method instead"
                )


def _with_subclasses(cls: type) -> list[type]:
    out, queue = [], [cls]
    while queue:
        c = queue.pop()
        out.append(c)
        queue.extend(type.__subclasses__(c))
    return out


class SandboxMeta(type):
    """Metaclass of every class statement in the sandbox; marks classes whose attributes the sandbox may
    write (host classes stay read-only). A session sets ``_sandbox_forget`` on its own subclass."""

    _sandbox_forget: Callable[[], None] = staticmethod(_nothing)

    def __init__(cls, name: str, bases: tuple, namespace: dict, **kwargs: Any) -> None:
        super().__init__(name, bases, namespace, **kwargs)
        _check_descriptors(cls)

    def __setattr__(cls, name: str, value: Any) -> None:
        if sets_through(value):
            for sub in _with_subclasses(cls):
                _check_descriptors(sub, {name: value})
        super().__setattr__(name, value)
        type(cls)._sandbox_forget()

    def __delattr__(cls, name: str) -> None:
        super().__delattr__(name)
        type(cls)._sandbox_forget()


def session_meta(forget: Callable[[], None]) -> type:
    """A SandboxMeta for one session, whose class-dict changes call ``forget``."""
    return type("SandboxMeta", (SandboxMeta,), {"_sandbox_forget": staticmethod(forget)})


def sandbox_made(obj: Any) -> bool:
    """True for classes, instances and functions created by sandbox code."""
    if isinstance(obj, SandboxMeta) or isinstance(type(obj), SandboxMeta):
        return True
    return type(obj) is types.FunctionType and obj.__code__.co_filename.startswith(CELL_FILE_PREFIX)


def frozen_view(value: Any) -> Any:
    """A read-only view (dict) or copy (list, set, bytes, deque) of a host-owned container."""
    if isinstance(value, dict):
        return types.MappingProxyType(value if type(value) is dict else dict(value))  # no __missing__ writes
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return tuple(value)


class HostOwned:
    """Identities of host-owned mutable containers (kept alive, so an identity is never reused)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self._keep: list[Any] = []

    def add(self, value: Any) -> None:
        if id(value) not in self.ids:
            self.ids.add(id(value))
            self._keep.append(value)

    def scan(self, namespaces: Iterable[Mapping[str, Any]], depth: int = 3) -> None:
        """Registers the mutable containers in ``namespaces`` (class or module dicts) and inside them."""
        queue = [(v, depth) for ns in namespaces for v in list(ns.values())]
        while queue:
            value, left = queue.pop()
            if not isinstance(value, (*MUTABLE_CONTAINERS, tuple, frozenset)) or id(value) in self.ids:
                continue
            if isinstance(value, MUTABLE_CONTAINERS):
                self.add(value)
            if left:
                items = list(value.values()) + list(value) if isinstance(value, dict) else list(value)
                queue.extend((v, left - 1) for v in items)
