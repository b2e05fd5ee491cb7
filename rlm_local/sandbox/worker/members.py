"""Per-member enforcement of the allowlist (worker side only): which attributes of host objects the
sandbox may read, and in what form.

Guarantees (with guards.Guards.getattr, which consults this module for every public attribute name):
- A callable member of a host class (function, method, class/static method, nested class) is returned
  only if allowlist.CLASS_ROWS marks it safe for the class that defines it, found through the MRO of the
  object's type (or, for a class, its own MRO and then its metaclass's). Sandbox subclasses of host
  classes inherit nothing unreviewed: inherited host members are looked up the same way.
- Members of classes defined in the sandbox and plain data are allowed. Values that come from instance
  dicts, ``__getattr__`` hooks or data descriptors are checked by value: a callable passes only if the
  sandbox made it, if it is an exposed module-level object, a bound or unbound method whose defining
  class the table allows, a class, or an instance of a reviewed host type.
- A mutable container held by a host class (or found by value and registered as host-owned,
  owners.HostOwned) is handed out as a read-only view, never as itself.
- Verdicts are memoised per type and name so the hot path is two dict lookups; every change to a
  sandbox class's dict (the only class dicts that can change) clears the memo (owners.SandboxMeta).
"""

from __future__ import annotations

import collections
import functools
import types
from collections.abc import Iterable
from typing import Any

try:
    from . import allowlist as A
    from .owners import DICTLESS_HOST_BASES, MUTABLE_CONTAINERS, HostOwned, SandboxMeta, frozen_view, sandbox_made
except ImportError:  # (mypy checks the package form above; this fallback is the script form)
    import allowlist as A  # type: ignore[import-not-found, no-redef]
    from owners import (  # type: ignore[import-not-found, no-redef]
        DICTLESS_HOST_BASES,
        MUTABLE_CONTAINERS,
        HostOwned,
        SandboxMeta,
        frozen_view,
        sandbox_made,
    )

ALLOW, DYNAMIC, CLASS, FROZEN = 1, 2, 3, 4  # rules; a str rule is the refusal message
MEMO_LIMIT = 50_000  # classes the sandbox makes are keys; a loop making classes must not grow it forever
_C_METHODS = (types.MethodDescriptorType, types.ClassMethodDescriptorType)
# Callable wrappers whose call runs another callable: a value of these types is as safe as what it wraps.
_WRAPPED_CALLABLE = {
    functools.partial: lambda v: v.func,
    type(functools.lru_cache()(abs)): lambda v: getattr(v, "__wrapped__", None),
    staticmethod: lambda v: v.__func__,
    classmethod: lambda v: v.__func__,
}


def class_table() -> dict[type, dict[str, tuple[str, str]]]:
    """CLASS_ROWS keyed by the class objects themselves (never by name: a class the sandbox makes, e.g.
    with namedtuple(module=...), can copy any module and qualname)."""
    extra = {A.owner_key(t): t for t in A.returned_types()}
    table = {}
    for owner, names in A.parse(A.CLASS_ROWS).items():
        cls = A.resolve_owner(owner, extra)
        if cls is not None:
            table[cls] = names
    return table


class MemberGuard:
    """Resolves (object, public name) to a rule; see the module docstring."""

    def __init__(self, known_values: Iterable[Any], proxy_type: type):
        self.classes = class_table()
        # type(obj) -> {name: rule} (a metaclass's names map to CLASS); nested dicts, no key tuples to build
        self.memo: collections.defaultdict[type, dict[str, Any]] = collections.defaultdict(dict)
        self.class_memo: dict[tuple, Any] = {}  # (cls, name) -> rule for attributes read off a class
        known = list(known_values)
        self.known_ids = {id(v) for v in known}
        self._keep_alive = known  # ids stay valid only while the objects live
        self.known_types = set(self.classes) | {v for v in known if isinstance(v, type)}
        self.known_types.update(A.returned_types())
        # Kinds of callables that _value_rule judges one by one, never by their type alone.
        self.known_types -= {
            types.FunctionType,
            types.MethodType,
            types.BuiltinMethodType,
            types.MethodWrapperType,
            types.WrapperDescriptorType,
            *_C_METHODS,
        }
        self.proxy_type = proxy_type
        # The lambda lru_cache stores as wrapper.cache_parameters (returns a dict of its two settings).
        self.known_codes = {functools.lru_cache()(abs).cache_parameters.__code__}
        self.host_owned = HostOwned()
        self.host_owned.scan(vars(c) for t in self.known_types for c in t.__mro__)

    def forget(self) -> None:
        self.memo.clear()
        self.class_memo.clear()

    def resolve(self, obj: Any, t: type, name: str):
        rule: Any  # ALLOW, CLASS, DYNAMIC or a refusal message
        if len(self.memo) > MEMO_LIMIT or len(self.memo[t]) > MEMO_LIMIT or len(self.class_memo) > MEMO_LIMIT:
            self.forget()
        if t is self.proxy_type:  # module proxies hold only allowlisted names, by construction
            rule = self.memo[t][name] = ALLOW
            return rule
        if isinstance(obj, type):
            self.memo[t][name] = CLASS
            key = (obj, name)
            rule = self.class_memo.get(key)
            if rule is None:
                rule = self.class_memo[key] = self._lookup((obj.__mro__, t.__mro__), name, False)
            return rule
        if t is super:  # depends on the super object's classes: not memoised (rare)
            start, cls = obj.__thisclass__, obj.__self_class__
            if cls is None:
                return "unbound super objects are not supported in the sandbox"
            mro = cls.__mro__
            return self._lookup((mro[mro.index(start) + 1 :],), name, False)
        if isinstance(t, SandboxMeta) and all(
            isinstance(c, SandboxMeta) or c in DICTLESS_HOST_BASES for c in t.__mro__
        ):
            # Only sandbox code fills these instance dicts (the builtin bases never write one;
            # update_wrapper copies only sandbox function dicts; cached_property stores the sandbox
            # function's result) and sandbox classes cannot define __getattr__, so an instance entry
            # never hides host code; members of the builtin bases still go through the table.
            rule = self.memo[t][name] = self._lookup((t.__mro__,), name, False)
            return rule
        # Instances with a __dict__ may hold an entry that hides a method or class data of the same name
        # (JSONDecoder.__init__ stores host parse functions there): such reads are checked by value.
        rule = self.memo[t][name] = self._lookup((t.__mro__,), name, t.__dictoffset__ != 0)
        return rule

    def _lookup(self, mros: tuple, name: str, shadowable: bool):
        for mro in mros:
            for cls in mro:
                d = cls.__dict__
                if name in d:
                    return self._verdict(cls, name, d[name], shadowable)
        return DYNAMIC  # instance data or a __getattr__ hook: checked by value

    def _verdict(self, cls: type, name: str, raw: Any, shadowable: bool):
        if hasattr(type(raw), "__set__"):  # data descriptor: wins over the instance dict, computes a value
            return ALLOW if isinstance(cls, SandboxMeta) else DYNAMIC
        if isinstance(raw, MUTABLE_CONTAINERS) and not isinstance(cls, SandboxMeta):
            self.host_owned.add(raw)  # state of a host class: the sandbox gets a read-only view
            return DYNAMIC if shadowable else FROZEN
        if isinstance(cls, SandboxMeta) or not A.is_callable_member(raw):
            rule = ALLOW if not hasattr(type(raw), "__get__") or isinstance(cls, SandboxMeta) else DYNAMIC
        else:
            rule = self.member_rule(cls, name)
        return DYNAMIC if rule is ALLOW and shadowable else rule

    def member_rule(self, cls: type, name: str):
        if isinstance(cls, SandboxMeta):
            return ALLOW
        verdict, why = self.classes.get(cls, {}).get(name, (None, "not reviewed for the sandbox"))
        if verdict == A.SAFE:
            return ALLOW
        if verdict == A.WRAPPED:  # only str.format/format_map, served before this point
            why = "only available on plain str"
        return f"'{cls.__name__}.{name}' is not available in the sandbox: {why}"

    # values that did not come straight from a class dict ------------------------------------------------
    def check_value(self, value: Any, name: str) -> Any:
        if id(value) in self.host_owned.ids:
            return frozen_view(value)
        if not callable(value) or isinstance(value, type):
            return value  # classes are as reachable as type(x) makes them; their members are guarded
        rule = self._value_rule(value)
        if rule is not ALLOW:
            raise AttributeError(
                rule if isinstance(rule, str) else f"'{name}' refers to host code not available in the sandbox"
            )
        return value

    def _value_rule(self, value: Any):
        vt = type(value)
        if vt is types.MethodType and sandbox_made(value.__func__):  # the common case: self.method
            return ALLOW
        if id(value) in self.known_ids or sandbox_made(value):
            return ALLOW
        if vt is types.FunctionType:  # a host function that is not exposed (e.g. a module internal)
            return ALLOW if value.__code__ in self.known_codes else None
        if vt is types.MethodType:
            func, owner = value.__func__, value.__self__
            if sandbox_made(func):
                return ALLOW
            cls = _defining_class(
                owner, func.__name__, lambda raw: raw is func or getattr(raw, "__func__", None) is func
            )
            return self.member_rule(cls, func.__name__) if cls is not None else None
        if vt is types.BuiltinMethodType:
            owner = value.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                return None  # a C function of some module; only the exposed ones are known_ids
            cls = _defining_class(owner, value.__name__, lambda raw: type(raw) in _C_METHODS)
            return self.member_rule(cls, value.__name__) if cls is not None else None
        if vt in _C_METHODS:
            return self.member_rule(value.__objclass__, value.__name__)
        inner = _WRAPPED_CALLABLE.get(vt)
        if inner is not None:  # a partial, cache or static method of something: judge what it calls
            target = inner(value)
            return self._value_rule(target) if callable(target) and not isinstance(target, type) else ALLOW
        if vt in self.known_types:  # a callable instance of a reviewed host type
            return ALLOW
        return None


def _defining_class(owner: Any, name: str, matches) -> type | None:
    kind: type = type(owner)  # (typed as a plain class: typeshed reads type(a_class).__mro__ as the property)
    mros = (owner.__mro__, kind.__mro__) if isinstance(owner, type) else (kind.__mro__,)
    for mro in mros:
        for cls in mro:
            raw = cls.__dict__.get(name)
            if raw is not None and matches(raw):
                return cls
    return None
