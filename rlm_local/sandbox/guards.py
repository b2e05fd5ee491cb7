"""Runtime guards that RestrictedPython-compiled cells call (worker side only).

The compiled code calls ``_getattr_``, ``_getitem_``, ``_write_``, ... from the session globals; this
module builds those functions, the builtins, the import allowlist with read-only module proxies, and the
session-wide printer. Design rule: nothing handed to the sandbox may reach a module, a frame, a code
object or the import system through a public attribute.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import operator
import string
import sys
import types
from _string import formatter_field_name_split as _formatter_field_name_split

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

ALLOWED_MODULES = ("re", "json", "math", "collections", "itertools", "functools", "statistics", "string",
                   "textwrap", "datetime", "heapq", "bisect", "random", "typing")
# Public names that still reach code evaluation or attribute lookup by name (string.Formatter ->
# get_field; singledispatch -> typing.get_type_hints -> eval).
HIDDEN_NAMES = {
    "string": {"Formatter"},
    "functools": {"singledispatch", "singledispatchmethod"},
}
# typing is only offered for annotations; get_type_hints/ForwardRef would eval strings unrestricted.
TYPING_NAMES = ("Any", "List", "Dict", "Tuple", "Set", "FrozenSet", "Optional", "Union", "Callable",
                "Iterable", "Iterator", "Sequence", "Mapping", "DefaultDict", "Deque", "Generator")
# C code inside datetime imports these through the frame's __import__ (strftime/strptime).
C_INTERNAL_IMPORTS = ("time", "_strptime")
PRELOADED_CODECS = ("ascii", "latin-1", "utf-8-sig", "utf-16", "utf-32", "cp1252", "iso8859-15",
                    "unicode-escape", "raw-unicode-escape", "idna", "punycode", "mac-roman", "cp437")

FORBIDDEN_TYPES = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType)
CONTAINER_TYPES = frozenset({dict, list, set, bytearray, collections.deque, collections.OrderedDict,
                             collections.defaultdict, collections.Counter})
EXTRA_BLOCKED_ATTRS = frozenset({"f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame",
                                 "tb_next", "gi_frame", "gi_code", "cr_frame", "ag_frame", "co_code"})
# Names the getattr guard looks at closely; every other public name takes the fast path.
SPECIAL_ATTRS = INSPECT_ATTRIBUTES | EXTRA_BLOCKED_ATTRS | {"format", "format_map", "obj"}

INPLACE = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
           "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
           ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
           "@=": operator.imatmul}


class SandboxMeta(type):
    """Metaclass of every class statement in the sandbox; marks classes whose attributes the sandbox may
    write (host classes stay read-only)."""


class ModuleProxy:
    """Read-only stand-in for an allowed module: public, non-module attributes only."""

    __slots__ = ("_mod_name", "_mod_attrs")

    def __init__(self, name: str, attrs: dict):
        object.__setattr__(self, "_mod_name", name)
        object.__setattr__(self, "_mod_attrs", attrs)

    def __getattr__(self, attr):
        if attr == "__name__":  # for ImportError messages of `from x import y`
            return self._mod_name
        try:
            return self._mod_attrs[attr]
        except KeyError:
            raise AttributeError(f"module '{self._mod_name}' has no attribute '{attr}'") from None

    def __setattr__(self, attr, value):
        raise AttributeError(f"module '{self._mod_name}' is read-only in the sandbox")

    __delattr__ = __setattr__

    def __dir__(self):
        return sorted(self._mod_attrs)

    def __repr__(self):
        return f"<module '{self._mod_name}'>"


def _is_safe_module_attr(value) -> bool:
    return not isinstance(value, FORBIDDEN_TYPES) and type(value).__name__ != "PyCapsule"


def make_module_proxies() -> dict[str, ModuleProxy]:
    proxies = {}
    for name in ALLOWED_MODULES:
        mod = __import__(name)
        if name == "typing":
            attrs = {k: getattr(mod, k) for k in TYPING_NAMES}
        else:
            hidden = HIDDEN_NAMES.get(name, set())
            attrs = {k: v for k, v in vars(mod).items()
                     if not k.startswith("_") and k not in hidden and _is_safe_module_attr(v)}
        proxies[name] = ModuleProxy(name, attrs)
    for name in C_INTERNAL_IMPORTS:
        __import__(name)
    for codec in PRELOADED_CODECS:  # codecs load lazily from disk, and the worker loses file access
        codecs.lookup(codec)
    return proxies


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
        text = text if type(text) is str else str(text)
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
            raise OutputFlood(f"output limit exceeded: the cell printed more than "
                              f"{self.cap + self.dropped} characters; print less (e.g. slices or counts)")

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

    # attribute access -------------------------------------------------------------------------------
    def getattr(self, obj, name, *default):
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if name[:1] == "_" or name in SPECIAL_ATTRS:
            special = self._special_attr(obj, name)
            if special is not None:
                return special
        try:
            value = getattr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            raise
        if isinstance(value, FORBIDDEN_TYPES):
            raise AttributeError(f"'{name}' refers to a {type(value).__name__}, not accessible in the sandbox")
        return value

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
        t = type(obj)
        if t in CONTAINER_TYPES or isinstance(t, SandboxMeta) or isinstance(obj, SandboxMeta):
            return obj
        raise TypeError(f"cannot modify objects of type '{t.__name__}' in the sandbox "
                        "(only your own containers, classes and their instances)")

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
            raise ImportError(f"module '{name}' is not available in the sandbox; allowed: "
                              + ", ".join(ALLOWED_MODULES))
        return proxy

    # builtins ---------------------------------------------------------------------------------------
    def builtins(self) -> dict:
        names = ("abs all any ascii bin bool bytearray bytes callable chr classmethod complex dict divmod "
                 "enumerate filter float frozenset hash hex id int isinstance issubclass iter len list map "
                 "max min next object oct ord pow property range repr reversed round set slice sorted "
                 "staticmethod str sum super tuple zip format NotImplemented Ellipsis").split()
        b = {n: getattr(builtins, n) for n in names}
        b.update({n: v for n, v in vars(builtins).items()
                  if isinstance(v, type) and issubclass(v, BaseException)
                  and n not in ("BaseExceptionGroup", "ExceptionGroup")})
        b.update({
            "__build_class__": builtins.__build_class__,
            "__import__": self.import_,
            "getattr": self.getattr,
            "hasattr": self.hasattr,
            "setattr": self.setattr,
            "delattr": self.delattr,
            "type": _type1,
            "dir": _dir,
            "True": True, "False": False, "None": None,
        })
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
            "_super_": _super2,
            "_print_": lambda _getattr=None: self.printer,
            "__metaclass__": SandboxMeta,
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


def _super2(cls, *obj):
    # super(C, x).__init__ is the one dunder call the policy lets through; limit it to our own classes
    # so that it cannot re-initialise or poke at host objects.
    if not isinstance(cls, SandboxMeta):
        raise TypeError("super() with arguments only works with classes defined in the sandbox")
    return super(cls, *obj)


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
