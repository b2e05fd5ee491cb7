"""Runtime guards that RestrictedPython-compiled cells call (worker side only).

The compiled code calls ``_getattr_``, ``_getitem_``, ``_write_``, ... from the session globals; this
module builds those functions, the builtins, the import allowlist with read-only module proxies, and the
session-wide printer. Design rule: nothing handed to the sandbox may reach a module, a frame, a code
object or the import system through a public attribute, and no host callable is reachable unless
allowlist.py reviewed it: module proxies and builtins are built from its rows, and the getattr guard
checks host class members against it (members.py).
"""

from __future__ import annotations

import builtins
import collections
import operator
import string
import sys
import types
from _string import formatter_field_name_split as _formatter_field_name_split
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

try:  # imported as rlm_local.sandbox.guards (tests) or as a sibling module (the worker)
    from . import allowlist as A
    from .members import ALLOW, CLASS, DYNAMIC, FROZEN, MemberGuard
    from .owners import MUTABLE_CONTAINERS, SandboxMeta, frozen_view, session_meta
    from .proxies import C_INTERNAL_IMPORTS, ModuleProxy, make_module_proxies  # noqa: F401  (re-exported)
except ImportError:  # (mypy checks the package form above; this fallback is the script form)
    import allowlist as A  # type: ignore[import-not-found, no-redef]
    from members import ALLOW, CLASS, DYNAMIC, FROZEN, MemberGuard  # type: ignore[import-not-found, no-redef]
    from owners import MUTABLE_CONTAINERS, SandboxMeta, frozen_view, session_meta  # type: ignore[import-not-found, no-redef]
    from proxies import C_INTERNAL_IMPORTS, ModuleProxy, make_module_proxies  # type: ignore[import-not-found, no-redef]  # noqa: F401

ALLOWED_MODULES = A.ALLOWED_MODULES

FORBIDDEN_TYPES = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType)
CONTAINER_TYPES = frozenset(
    {
        dict,
        list,
        set,
        bytearray,
        collections.deque,
        collections.OrderedDict,
        collections.defaultdict,
        collections.Counter,
    }
)
EXTRA_BLOCKED_ATTRS = frozenset(
    {
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_code",
        "tb_frame",
        "tb_next",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "ag_frame",
        "co_code",
    }
)
# Names the getattr guard looks at closely; every other public name takes the fast path.
SPECIAL_ATTRS = INSPECT_ATTRIBUTES | EXTRA_BLOCKED_ATTRS | {"format", "format_map", "obj"}
# Methods that change a mutable container in place: refused on host-owned containers (owners.HostOwned).
MUTATORS = frozenset(
    "append appendleft clear difference_update discard extend extendleft insert intersection_update move_to_end "
    "pop popitem popleft remove reverse rotate setdefault sort subtract symmetric_difference_update update add".split()
)
MUTATE = 5  # a memo rule next to members.ALLOW...: allowed unless the container is host-owned

INPLACE = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
    "@=": operator.imatmul,
}


def exact_str(value) -> str:
    """``value`` as an exact str, converted by str's own methods: a str subclass is copied without calling
    any of its methods (it may lie about its length or contents); anything else goes through str() once,
    whose result is copied the same way."""
    if type(value) is str:
        return value
    return str.__str__(value if isinstance(value, str) else str(value))


class OutputFlood(BaseException):
    """Raised by print once a cell has produced far more output than can be shown."""


class Printer:
    """One printer per session (prints inside helper functions are kept), capped at ``cap`` characters.
    Past ``FLOOD_FACTOR`` times the cap every further print raises, so print floods end quickly."""

    FLOOD_FACTOR = 10

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def reset(self, cap: int) -> None:
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def write(self, text) -> None:
        text = exact_str(text)
        room = self.cap - self.size
        if len(text) <= room:
            self.parts.append(text)
            self.size += len(text)
            return
        if room > 0:
            self.parts.append(text[:room])
            self.size = self.cap
        self.dropped += len(text) - max(room, 0)
        if self.dropped > self.FLOOD_FACTOR * max(self.cap, 100_000):
            raise OutputFlood(
                f"output limit exceeded: the cell printed more than "
                f"{self.cap + self.dropped} characters; print less (e.g. slices or counts)"
            )

    def _call_print(self, *objects, sep=" ", end="\n", file=None, flush=False):
        print(*objects, sep=sep, end=end, file=self)

    def __call__(self) -> str:  # the name `printed`
        return "".join(self.parts)

    def text(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n... [output truncated: {self.dropped} more characters]\n"
        return out


class Guards:
    """Builds the guard functions and builtins for one session."""

    def __init__(self, printer: Printer, proxies: dict[str, ModuleProxy]):
        self.printer = printer
        self.proxies = proxies
        self.formatter = _GuardedFormatter(self)
        exposed = [v for p in proxies.values() for v in p._mod_attrs.values()]
        exposed += [v for k, v in self.builtins().items() if not k.startswith("_")]
        self.members = MemberGuard(exposed, ModuleProxy)
        self.members.host_owned.scan(vars(sys.modules[m]) for m in ALLOWED_MODULES)
        self._host_ids = self.members.host_owned.ids
        self._memo = self.members.memo
        self.meta = session_meta(self.members.forget)

    # attribute access -------------------------------------------------------------------------------
    def getattr(self, obj, name, *default):
        """getattr for sandbox code: '_' names and frame/code attributes refused, format only on exact
        str (through the guarded formatter), host class members only as allowlist.py allows them
        (members.py), and never a module, frame, code object or traceback."""
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if name[:1] == "_" or name in SPECIAL_ATTRS:
            special = self._special_attr(obj, name)
            if special is not None:
                return special
        rule = self._memo[type(obj)].get(name)
        if rule is not ALLOW:  # the hot path (methods of builtin types, own objects) skips all of this
            if rule is MUTATE and id(obj) not in self._host_ids:  # lst.append of the code's own list
                return getattr(obj, name)  # (a container's method: never a module, frame or code)
            if rule is None or rule is CLASS:
                rule = self._resolve(obj, name)
            if rule is MUTATE and id(obj) in self._host_ids:
                rule = f"'{name}': this {type(obj).__name__} belongs to a host class or module and is read-only"
            if type(rule) is str:
                if default:
                    return default[0]
                raise AttributeError(rule)
        try:
            value = getattr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            raise
        if rule is FROZEN:
            return frozen_view(value)
        if rule is DYNAMIC:
            try:
                value = self.members.check_value(value, name)
            except AttributeError:
                if default:
                    return default[0]
                raise
        if isinstance(value, FORBIDDEN_TYPES):
            raise AttributeError(f"'{name}' refers to a {type(value).__name__}, not accessible in the sandbox")
        return value

    def _resolve(self, obj, name: str):
        t = type(obj)
        rule = self.members.resolve(obj, t, name)
        if rule is ALLOW and name in MUTATORS and issubclass(t, MUTABLE_CONTAINERS):
            rule = self._memo[t][name] = MUTATE
        return rule

    def _special_attr(self, obj, name):
        """Raises for forbidden names; returns a safe replacement for format methods, else None."""
        if name.startswith("_"):
            if name == "__class__":
                return _type1(obj)
            if name in ("__name__", "__qualname__") and isinstance(obj, (type, types.FunctionType)):
                return None
            if name == "__doc__":
                return None
            raise AttributeError(f"'{name}': names starting with '_' are not accessible in the sandbox")
        if name in ("format", "format_map"):
            return self._format_method(obj, name)
        if name == "obj":
            if isinstance(obj, BaseException):
                raise AttributeError("'obj' of exceptions is not accessible in the sandbox")
            return None
        raise AttributeError(f"'{name}' is not accessible in the sandbox")

    def _format_method(self, obj, name):
        fmt = self.formatter
        if type(obj) is str:
            if name == "format":
                return lambda *args, **kwargs: fmt.vformat(obj, args, kwargs)
            return lambda mapping: fmt.vformat(obj, (), mapping)
        if obj is str:
            if name == "format":
                return lambda s, *args, **kwargs: fmt.vformat(_exact_str(s), args, kwargs)
            return lambda s, mapping: fmt.vformat(_exact_str(s), (), mapping)
        raise AttributeError(f"'{name}' is only available on plain str objects in the sandbox")

    def hasattr(self, obj, name):
        try:
            self.getattr(obj, name)
            return True
        except Exception:
            return False

    def getitem(self, obj, key):
        value = obj[key]
        if isinstance(value, FORBIDDEN_TYPES):
            raise TypeError(f"item is a {type(value).__name__}, not accessible in the sandbox")
        return value

    # writes -----------------------------------------------------------------------------------------
    def write(self, obj):
        """The object itself if sandbox code may change it: its own containers (never a host-owned one),
        classes and their instances. Class-dict changes clear the member memo (owners.SandboxMeta)."""
        t = type(obj)
        if t in CONTAINER_TYPES:
            if id(obj) in self._host_ids:
                raise TypeError(
                    f"cannot modify this {t.__name__}: it belongs to a host class or module and is read-only"
                )
            return obj
        if isinstance(t, SandboxMeta) or isinstance(obj, SandboxMeta):
            return obj
        if t is types.MappingProxyType:
            raise TypeError(
                "cannot modify this mapping: it is read-only in the sandbox (data of a host class or a tool); "
                "copy it with dict(...)"
            )
        raise TypeError(
            f"cannot modify objects of type '{t.__name__}' in the sandbox "
            "(only your own containers, classes and their instances)"
        )

    def setattr(self, obj, name, value):
        if type(name) is not str or name.startswith("_"):
            raise AttributeError("attribute names starting with '_' cannot be set in the sandbox")
        setattr(self.write(obj), name, value)

    def delattr(self, obj, name):
        if type(name) is not str or name.startswith("_"):
            raise AttributeError("attribute names starting with '_' cannot be deleted in the sandbox")
        delattr(self.write(obj), name)

    def inplacevar(self, op, x, y):
        return INPLACE[op](x, y)

    def inplace_item(self, obj, key, op, value):
        self.write(obj)[key] = INPLACE[op](self.getitem(obj, key), value)

    def inplace_attr(self, obj, name, op, value):
        self.setattr(obj, name, INPLACE[op](self.getattr(obj, name), value))

    # imports ----------------------------------------------------------------------------------------
    def import_(self, name, globals=None, locals=None, fromlist=(), level=0):
        if type(fromlist) is list and name in C_INTERNAL_IMPORTS and name in sys.modules:
            return None  # C code (datetime) imports for its side effect, then reads sys.modules itself
        if level != 0:
            raise ImportError("relative imports are not available in the sandbox")
        proxy = self.proxies.get(name) if type(name) is str else None
        if proxy is None:
            raise ImportError(
                f"module '{name}' is not available in the sandbox; allowed: " + ", ".join(ALLOWED_MODULES)
            )
        # Every `from m import x` name must be exposed: on a missing attribute IMPORT_FROM falls back to
        # sys.modules["m.x"], which held real submodules (json.decoder), and would replace our reason with
        # a generic message.
        for item in fromlist or ():
            if type(item) is not str or item not in proxy._mod_attrs:
                raise ImportError(proxy._missing(str(item)) if type(item) is str else "bad import name")
        return proxy

    # builtins ---------------------------------------------------------------------------------------
    def builtins(self) -> dict:
        """The sandbox's builtins: allowlist.py's ``builtins`` rows (safe ones as is, wrapped ones as the
        guard functions) plus the hooks the compiled code needs."""
        wrapped = {
            "getattr": self.getattr,
            "hasattr": self.hasattr,
            "setattr": self.setattr,
            "delattr": self.delattr,
            "type": _type1,
            "dir": _dir,
        }
        b = {}
        for name, (verdict, _) in A.parse(A.MODULE_ROWS)["builtins"].items():
            if verdict == A.SAFE:
                b[name] = getattr(builtins, name)
            elif verdict == A.WRAPPED:
                b[name] = wrapped[name]
        b.update({"__build_class__": builtins.__build_class__, "__import__": self.import_})
        return b

    def guard_globals(self) -> dict:
        return {
            "_getattr_": self.getattr,
            "_getitem_": self.getitem,
            "_write_": self.write,
            "_getiter_": iter,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_inplacevar_": self.inplacevar,
            "_inplace_item_": self.inplace_item,
            "_inplace_attr_": self.inplace_attr,
            "_apply_": _apply,
            "_super_attr_": _super_attr,
            "_print_": lambda _getattr=None: self.printer,
            "__metaclass__": self.meta,
            "__name__": "__sandbox__",
        }


class _GuardedFormatter(string.Formatter):
    """str.format whose {a.b[c]} fields go through the sandbox guards."""

    def __init__(self, guards: Guards):
        self.guards = guards

    def get_field(self, field_name, args, kwargs):
        first, rest = _formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self.guards.getattr(obj, key) if is_attr else self.guards.getitem(obj, key)
        return obj, first


def _exact_str(s):
    if type(s) is not str:
        raise TypeError("format strings must be plain str in the sandbox")
    return s


def _apply(func, *args, **kwargs):
    return func(*args, **kwargs)


def _super_attr(sup, name: str):
    """``super(...).__init__`` and the other dunder methods the policy lets through: only from a sandbox
    class and bound to an instance, never the class form (``super(C, Subclass)``), which hands out the
    unbound host method to call on any object (a module proxy, an instance the member guard trusts)."""
    if type(sup) is not super:
        raise TypeError("super() with arguments only works with classes defined in the sandbox")
    fields: Any = sup  # __thisclass__ and __self__ are real attributes that typeshed does not list
    if not isinstance(fields.__thisclass__, SandboxMeta):
        raise TypeError("super() with arguments only works with classes defined in the sandbox")
    if fields.__self__ is None or isinstance(fields.__self__, type):
        raise TypeError("super() in a class method cannot reach special methods; call them on an instance")
    return getattr(sup, name)


def _type1(obj, *rest):
    if rest:
        raise TypeError("type() with 3 arguments is not available in the sandbox; use a class statement")
    t = type(obj)
    # Metaclasses (type, SandboxMeta) would give back 3-argument type(); the sandbox sees this function.
    return _type1 if issubclass(t, type) else t


def _dir(obj=None):
    if obj is None:
        raise TypeError("dir() needs an argument in the sandbox; use SHOW_VARS() to list variables")
    return [n for n in dir(obj) if not n.startswith("_")]
