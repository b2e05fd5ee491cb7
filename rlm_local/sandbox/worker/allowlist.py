"""The audited allowlist of the sandbox's language layer: every public name the sandbox can reach, with a
verdict and the reason for it (worker side; data plus the few helpers that read it).

Verdicts:
- ``safe``: exposed as is. The callable does not look up attributes, globals, imports or code by a name
  the caller chooses (it may call fixed-name methods of its arguments, e.g. ``fp.write`` or
  ``x.as_integer_ratio``, which run the sandbox's own code or host code the table covers).
- ``wrapped``: exposed only through a replacement in guards.py that sends names through the guards or
  restricts them to a fixed safe set (the reason says how).
- ``removed``: not exposed; the model gets an ImportError/AttributeError naming an alternative.

Rows are written compactly as ``(owner, verdict, why, names)`` with every name spelled out, so a new
Python version that adds a name shows up as uncovered in tests/sandbox/test_allowlist.py instead of being
exposed silently. Module owners are module names (``builtins`` for the sandbox's builtins); class owners
are ``module:qualname`` of the class that *defines* the member (the getattr guard resolves a member
through the MRO to its defining class), and only callable members (functions, methods, class- and
static methods, nested classes) need rows: plain data attributes are not code.
"""

from __future__ import annotations

import sys

SAFE, WRAPPED, REMOVED = "safe", "wrapped", "removed"
Row = tuple[str, str, str, str]

# Modules `import` may name; each is exposed as a read-only proxy holding only its safe/wrapped rows.
ALLOWED_MODULES = (
    "re",
    "json",
    "math",
    "collections",
    "itertools",
    "functools",
    "statistics",
    "string",
    "textwrap",
    "datetime",
    "heapq",
    "bisect",
    "random",
    "typing",
)

_MOD = "a module object (modules reach sys, os and builtins); import allowed modules directly"
_REEXPORT = "re-export of another module's name, not part of this module's API; import it from its own module"
_NUM = "pure numeric C code on numbers; calls only number protocol slots of its arguments"

MODULE_ROWS: list[Row] = [
    # -- builtins: what the sandbox's __builtins__ holds (print is the session printer, not a builtin)
    (
        "builtins",
        SAFE,
        "pure functions of their arguments; call only fixed dunder protocols (__len__, "
        "__iter__, __index__, __repr__, __hash__, __format__ of the value's own type) or the key/default "
        "callables the caller passes",
        "abs all any ascii bin callable chr divmod format hash hex id isinstance issubclass iter len max min "
        "next oct ord pow repr round sorted sum",
    ),
    (
        "builtins",
        SAFE,
        "builtin types and constants; their members have rows of their own below",
        "bool bytearray bytes classmethod complex dict enumerate filter float frozenset int list map object "
        "property range reversed set slice staticmethod str super tuple zip NotImplemented Ellipsis True False "
        "None",
    ),
    (
        "builtins",
        SAFE,
        "exception classes: data attributes plus BaseException's members (rows below)",
        "ArithmeticError AssertionError AttributeError BaseException BlockingIOError BrokenPipeError "
        "BufferError BytesWarning ChildProcessError ConnectionAbortedError ConnectionError "
        "ConnectionRefusedError ConnectionResetError DeprecationWarning EOFError EncodingWarning "
        "EnvironmentError Exception FileExistsError FileNotFoundError FloatingPointError FutureWarning "
        "GeneratorExit IOError ImportError ImportWarning IndentationError IndexError InterruptedError "
        "IsADirectoryError KeyError KeyboardInterrupt LookupError MemoryError ModuleNotFoundError NameError "
        "NotADirectoryError NotImplementedError OSError OverflowError PendingDeprecationWarning "
        "PermissionError ProcessLookupError RecursionError ReferenceError ResourceWarning RuntimeError "
        "RuntimeWarning StopAsyncIteration StopIteration SyntaxError SyntaxWarning SystemError SystemExit "
        "TabError TimeoutError TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError "
        "UnicodeTranslateError UnicodeWarning UserWarning ValueError Warning ZeroDivisionError",
    ),
    (
        "builtins",
        WRAPPED,
        "attribute access by a computed name: the guard versions apply the getattr/write "
        "guards (getattr/hasattr/setattr/delattr), one-argument type() that never returns a metaclass, dir() "
        "without private names",
        "getattr hasattr setattr delattr type dir",
    ),
    (
        "builtins",
        REMOVED,
        "run or compile code, reach frames, globals, files, the terminal or the "
        "interpreter (use the REPL itself; print is provided by the sandbox)",
        "breakpoint compile eval exec globals locals vars open input help print exit quit copyright credits "
        "license memoryview aiter anext",
    ),
    (
        "builtins",
        REMOVED,
        "except* is refused by the compiler (CVE-2025-22153); catch Exception instead",
        "BaseExceptionGroup ExceptionGroup",
    ),
    # -- re
    (
        "re",
        SAFE,
        "regex engine in C: patterns, strings and flags in, Match/str out; a callable repl is called with a Match only",
        "compile search match fullmatch split findall finditer sub subn escape purge error Pattern Match RegexFlag",
    ),
    (
        "re",
        SAFE,
        "RegexFlag constants (int flags)",
        "A ASCII DOTALL I IGNORECASE L LOCALE M MULTILINE NOFLAG S U UNICODE VERBOSE X",
    ),
    ("re", REMOVED, "re.DEBUG makes C code print to file descriptor 1; not needed for analysis", "DEBUG"),
    (
        "re",
        REMOVED,
        "undocumented or deprecated (not in re.__all__); use re.finditer / re.compile",
        "Scanner T TEMPLATE template",
    ),
    ("re", REMOVED, _MOD, "copyreg enum functools"),
    # -- json
    (
        "json",
        SAFE,
        "encode/decode in C or fixed Python; call only fp.read/fp.write and the hooks, default "
        "and cls the caller passes, by fixed names",
        "dump dumps load loads JSONDecoder JSONEncoder JSONDecodeError",
    ),
    ("json", REMOVED, "internal helper, not in json.__all__; decode bytes with bytes.decode", "detect_encoding"),
    ("json", REMOVED, _MOD, "codecs decoder encoder scanner"),
    # -- math
    (
        "math",
        SAFE,
        _NUM,
        "acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh degrees "
        "dist erf erfc exp exp2 expm1 fabs factorial floor fmod frexp fsum gamma gcd hypot isclose isfinite "
        "isinf isnan isqrt lcm ldexp lgamma log log10 log1p log2 modf nextafter perm pow prod radians "
        "remainder sin sinh sqrt tan tanh trunc ulp",
    ),
    ("math", SAFE, "float constants", "e inf nan pi tau"),
    # -- collections
    (
        "collections",
        SAFE,
        "containers; methods call only fixed dunder protocols of the items and of self",
        "ChainMap Counter OrderedDict UserDict UserList UserString defaultdict deque",
    ),
    (
        "collections",
        SAFE,
        "builds source from typename/field names that it validates as identifiers (not "
        "keywords, no leading '_' unless rename=True replaces them) and evals it in a namespace with empty "
        "builtins; module= only sets __module__",
        "namedtuple",
    ),
    ("collections", REMOVED, _MOD, "abc"),
    # -- itertools
    (
        "itertools",
        SAFE,
        "iterator building blocks in C; call only the iterables and callables passed",
        "accumulate chain combinations combinations_with_replacement compress count cycle dropwhile "
        "filterfalse groupby islice pairwise permutations product repeat starmap takewhile tee zip_longest",
    ),
    # -- functools
    (
        "functools",
        SAFE,
        "call the callables they are given; lru_cache/cache copy the fixed default "
        "WRAPPER_ASSIGNMENTS/UPDATES onto their own C wrapper object",
        "cache lru_cache cmp_to_key partial partialmethod reduce WRAPPER_ASSIGNMENTS WRAPPER_UPDATES",
    ),
    (
        "functools",
        WRAPPED,
        "the real ones get/set attributes named by assigned=/updated=: the wrapper "
        "accepts only the default name sets and writes only to functions, classes and instances the sandbox "
        "created",
        "update_wrapper wraps",
    ),
    (
        "functools",
        WRAPPED,
        "sets dunder methods on the class it decorates: the wrapper accepts only classes defined in the sandbox",
        "total_ordering",
    ),
    (
        "functools",
        WRAPPED,
        "the real one writes instance.__dict__[attrname] for an attrname the code can "
        "set: the replacement keeps the name private, checks it is a public identifier and caches only on "
        "instances of sandbox classes",
        "cached_property",
    ),
    (
        "functools",
        REMOVED,
        "dispatch on annotations evaluates strings (typing.get_type_hints); use isinstance checks",
        "singledispatch singledispatchmethod",
    ),
    (
        "functools",
        REMOVED,
        _REEXPORT + " (or an internal helper)",
        "GenericAlias RLock get_cache_token namedtuple recursive_repr",
    ),
    # -- statistics
    (
        "statistics",
        SAFE,
        "numeric code over data; calls only fixed numeric methods of the items "
        "(as_integer_ratio, numerator/denominator, __float__)",
        "NormalDist StatisticsError correlation "
        "covariance fmean geometric_mean harmonic_mean linear_regression mean median median_grouped "
        "median_high median_low mode multimode pstdev pvariance quantiles stdev variance",
    ),
    (
        "statistics",
        REMOVED,
        _REEXPORT,
        "Counter Decimal Fraction LinearRegression bisect_left "
        "bisect_right defaultdict erf exp fabs fsum groupby hypot log mul namedtuple reduce repeat sqrt tau",
    ),
    ("statistics", REMOVED, _MOD, "math numbers random sys"),
    # -- string
    (
        "string",
        SAFE,
        "str constants",
        "ascii_letters ascii_lowercase ascii_uppercase digits hexdigits octdigits printable punctuation whitespace",
    ),
    (
        "string",
        SAFE,
        "capwords splits and joins; Template substitutes by mapping[key] only (no attribute or index fields)",
        "capwords Template",
    ),
    (
        "string",
        REMOVED,
        "Formatter.get_field resolves {a.b} fields with real getattr (CVE-2023-41039); "
        "use str.format, which the sandbox routes through its guards",
        "Formatter",
    ),
    # -- textwrap
    (
        "textwrap",
        SAFE,
        "regex-based text filling; predicate= is called with each line only",
        "TextWrapper dedent fill indent shorten wrap",
    ),
    ("textwrap", REMOVED, _MOD, "re"),
    # -- datetime
    (
        "datetime",
        SAFE,
        "C date arithmetic and formatting; strftime reads format codes only and calls tzinfo methods by fixed names",
        "MAXYEAR MINYEAR UTC date datetime time timedelta timezone tzinfo",
    ),
    ("datetime", REMOVED, "a PyCapsule (raw C pointers)", "datetime_CAPI"),
    ("datetime", REMOVED, _MOD, "sys"),
    # -- heapq / bisect
    (
        "heapq",
        SAFE,
        "heap operations on lists; compare items and call key= only",
        "heapify heappop heappush heappushpop heapreplace merge nlargest nsmallest",
    ),
    (
        "bisect",
        SAFE,
        "binary search and insert on sequences; compare items and call key= only",
        "bisect bisect_left bisect_right insort insort_left insort_right",
    ),
    # -- random
    (
        "random",
        SAFE,
        "methods of the module's hidden Random instance (or the classes); seed hashes its "
        "argument, nothing else is looked up by name",
        "betavariate choice choices expovariate gammavariate "
        "gauss getrandbits getstate lognormvariate normalvariate paretovariate randbytes randint random "
        "randrange sample seed setstate shuffle triangular uniform vonmisesvariate weibullvariate Random "
        "SystemRandom",
    ),
    ("random", SAFE, "numeric constants", "BPF LOG4 NV_MAGICCONST RECIP_BPF SG_MAGICCONST TWOPI"),
    # -- typing: annotation names only (annotations are dropped by the policy anyway)
    (
        "typing",
        SAFE,
        "generic aliases for annotations; subscription with strings only compiles a "
        "ForwardRef (never evaluated: get_type_hints is removed)",
        "Any List Dict Tuple Set FrozenSet "
        "Optional Union Callable Iterable Iterator Sequence Mapping DefaultDict Deque Generator",
    ),
    (
        "typing",
        REMOVED,
        "get_type_hints/ForwardRef evaluate strings as code; NamedTuple/TypedDict/"
        "Protocol/NewType/TypeVar build classes through host machinery; use plain classes and the aliases "
        "above",
        "ForwardRef get_type_hints NamedTuple TypedDict Protocol NewType TypeVar TypeVarTuple "
        "ParamSpec ParamSpecArgs ParamSpecKwargs Generic Annotated cast overload get_overloads "
        "clear_overloads final no_type_check no_type_check_decorator runtime_checkable dataclass_transform "
        "assert_never assert_type reveal_type get_args get_origin is_typeddict abstractmethod NamedTupleMeta "
        "EXCLUDED_ATTRIBUTES GenericAlias MethodDescriptorType MethodWrapperType WrapperDescriptorType "
        "ABCMeta defaultdict",
    ),
    (
        "typing",
        REMOVED,
        "annotation-only names beyond the common aliases; not needed at run time",
        "AbstractSet AnyStr AsyncContextManager AsyncGenerator AsyncIterable AsyncIterator Awaitable "
        "BinaryIO ByteString CT_co ChainMap ClassVar Collection Concatenate Container ContextManager "
        "Coroutine Counter Final Hashable IO ItemsView KT KeysView Literal LiteralString Match MappingView "
        "MutableMapping MutableSequence MutableSet Never NoReturn NotRequired OrderedDict Pattern Required "
        "Reversible Self Sized SupportsAbs SupportsBytes SupportsComplex SupportsFloat SupportsIndex "
        "SupportsInt SupportsRound T TYPE_CHECKING T_co T_contra Text TextIO Type TypeAlias TypeGuard Unpack "
        "VT VT_co V_co ValuesView",
    ),
    (
        "typing",
        REMOVED,
        _MOD + " (typing.io/typing.re are deprecated module stand-ins)",
        "collections contextlib functools io operator re stdlib_re sys types warnings",
    ),
]

CLASS_ROWS: list[Row] = [
    # -- builtin types
    (
        "builtins:str",
        SAFE,
        "C text methods; encode looks up codecs only inside the stdlib encodings package "
        "(dotted names are refused there) and the worker preloads the common ones",
        "capitalize casefold center count encode endswith expandtabs find index isalnum isalpha isascii "
        "isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle isupper join ljust lower "
        "lstrip maketrans partition removeprefix removesuffix replace rfind rindex rjust rpartition rsplit "
        "rstrip split splitlines startswith strip swapcase title translate upper zfill",
    ),
    (
        "builtins:str",
        WRAPPED,
        "{a.b[c]} fields read attributes and items (CVE-2023-41039): the guard "
        "returns a formatter that resolves every field through _getattr_/_getitem_",
        "format format_map",
    ),
    (
        "builtins:bytes",
        SAFE,
        "C byte methods; decode looks up codecs like str.encode",
        "capitalize center count decode endswith expandtabs find fromhex hex index isalnum isalpha isascii "
        "isdigit islower isspace istitle isupper join ljust lower lstrip maketrans partition removeprefix "
        "removesuffix replace rfind rindex rjust rpartition rsplit rstrip split splitlines startswith strip "
        "swapcase title translate upper zfill",
    ),
    (
        "builtins:bytearray",
        SAFE,
        "C byte methods on a mutable buffer; decode looks up codecs like str.encode",
        "append capitalize center clear copy count decode endswith expandtabs extend find "
        "fromhex hex index insert isalnum isalpha isascii isdigit islower isspace istitle isupper join ljust "
        "lower lstrip maketrans partition pop remove removeprefix removesuffix replace reverse rfind rindex "
        "rjust rpartition rsplit rstrip split splitlines startswith strip swapcase title translate upper "
        "zfill",
    ),
    ("builtins:int", SAFE, _NUM, "as_integer_ratio bit_count bit_length conjugate from_bytes to_bytes"),
    ("builtins:float", SAFE, _NUM, "as_integer_ratio conjugate fromhex hex is_integer"),
    ("builtins:complex", SAFE, _NUM, "conjugate"),
    (
        "builtins:list",
        SAFE,
        "container methods; sort calls key= and item comparisons only",
        "append clear copy count extend index insert pop remove reverse sort",
    ),
    ("builtins:tuple", SAFE, "container methods (item comparisons only)", "count index"),
    ("builtins:range", SAFE, "arithmetic on the range", "count index"),
    ("builtins:slice", SAFE, "arithmetic on the slice", "indices"),
    (
        "builtins:dict",
        SAFE,
        "container methods (item hashing and comparison only)",
        "clear copy fromkeys get items keys pop popitem setdefault update values",
    ),
    (
        "builtins:set",
        SAFE,
        "container methods (item hashing and comparison only)",
        "add clear copy difference difference_update discard intersection intersection_update isdisjoint "
        "issubset issuperset pop remove symmetric_difference symmetric_difference_update union update",
    ),
    (
        "builtins:frozenset",
        SAFE,
        "container methods (item hashing and comparison only)",
        "copy difference intersection isdisjoint issubset issuperset symmetric_difference union",
    ),
    ("builtins:dict_keys", SAFE, "set comparison with another iterable", "isdisjoint"),
    ("builtins:dict_items", SAFE, "set comparison with another iterable", "isdisjoint"),
    (
        "builtins:mappingproxy",
        SAFE,
        "read-only mapping methods; the only proxies the sandbox can obtain "
        "wrap plain dicts (Pattern.groupindex): class __dict__ needs a '_' name or vars(), both refused",
        "copy get items keys values",
    ),
    (
        "builtins:generator",
        SAFE,
        "resume or stop a generator the sandbox made; its frame and code "
        "(gi_frame, gi_code) stay refused by the getattr guard",
        "close send throw",
    ),
    (
        "builtins:property",
        SAFE,
        "return a copy of the property with another accessor function",
        "deleter getter setter",
    ),
    (
        "builtins:type",
        REMOVED,
        "hands out the class objects of every base, and a base is a class nobody reviewed for calling "
        "(re.RegexFlag.mro() reaches enum.Enum, whose functional API builds classes with any dunder); "
        "test bases with isinstance/issubclass",
        "mro",
    ),
    (
        "builtins:BaseException",
        SAFE,
        "with_traceback accepts only a traceback (unreachable) or None; add_note appends a str",
        "add_note with_traceback",
    ),
    (
        "abc:ABCMeta",
        REMOVED,
        "register mutates the host ABC registry for the whole worker; use a real subclass",
        "register",
    ),
    # -- collections
    ("collections.abc:Sequence", SAFE, "mixins implemented with self's own __getitem__/__len__", "count index"),
    (
        "collections.abc:MutableSequence",
        SAFE,
        "mixins implemented with self's own item methods",
        "append clear extend insert pop remove reverse",
    ),
    (
        "collections.abc:Mapping",
        SAFE,
        "mixins implemented with self's own __getitem__/__iter__",
        "get items keys values",
    ),
    (
        "collections.abc:MutableMapping",
        SAFE,
        "mixins implemented with self's own item methods",
        "clear pop popitem setdefault update",
    ),
    (
        "collections.abc:Generator",
        SAFE,
        "abstract send/throw plus close calling self.throw (fixed name)",
        "close send throw",
    ),
    (
        "collections:Counter",
        SAFE,
        "dict subclass; counting with item access only (fromkeys raises)",
        "copy elements fromkeys most_common subtract total update",
    ),
    (
        "collections:OrderedDict",
        SAFE,
        "dict subclass; ordering methods (copy calls self.__class__(self))",
        "clear copy fromkeys items keys move_to_end pop popitem setdefault update values",
    ),
    ("collections:defaultdict", SAFE, "copies itself with its own default_factory", "copy"),
    (
        "collections:deque",
        SAFE,
        "C double-ended queue methods",
        "append appendleft clear copy count extend extendleft index insert pop popleft remove reverse rotate",
    ),
    (
        "collections:ChainMap",
        SAFE,
        "mapping methods over self.maps (copy/new_child call self.__class__)",
        "clear copy fromkeys get new_child pop popitem",
    ),
    ("collections:UserDict", SAFE, "builds a new mapping with cls() and item writes", "fromkeys"),
    (
        "collections:UserDict",
        REMOVED,
        "on a subclass it imports copy and calls copy.copy(self), which rebuilds the object through "
        "__reduce_ex__ and copyreg (calling whatever callable the object names); use dict(d) or "
        "UserDict(d.data)",
        "copy",
    ),
    (
        "collections:UserList",
        SAFE,
        "list methods delegating to self.data",
        "append clear copy count extend index insert pop remove reverse sort",
    ),
    (
        "collections:UserString",
        SAFE,
        "str methods delegating to self.data",
        "capitalize casefold center "
        "count encode endswith expandtabs find index isalnum isalpha isascii isdecimal isdigit isidentifier "
        "islower isnumeric isprintable isspace istitle isupper join ljust lower lstrip maketrans partition "
        "removeprefix removesuffix replace rfind rindex rjust rpartition rsplit rstrip split splitlines "
        "startswith strip swapcase title translate upper zfill",
    ),
    (
        "collections:UserString",
        REMOVED,
        "format calls the real str.format on self.data with the caller's "
        "arguments (a leak found before); use str(s).format(...)",
        "format format_map",
    ),
    # -- other modules' classes
    ("itertools:chain", SAFE, "iterates the iterables passed", "from_iterable"),
    ("functools:_lru_cache_wrapper", SAFE, "statistics and clearing of the cache", "cache_clear cache_info"),
    (
        "json.decoder:JSONDecoder",
        SAFE,
        "parse text; call object_hook/parse_float/... passed by the caller",
        "decode raw_decode",
    ),
    (
        "json.encoder:JSONEncoder",
        SAFE,
        "serialise; call self.default (fixed name) for unknown objects",
        "default encode iterencode",
    ),
    (
        "_random:Random",
        SAFE,
        "C Mersenne Twister; seed hashes its argument",
        "getrandbits getstate random seed setstate",
    ),
    (
        "random:Random",
        SAFE,
        "distributions built on self.random/getrandbits (fixed names)",
        "betavariate "
        "choice choices expovariate gammavariate gauss getstate lognormvariate normalvariate paretovariate "
        "randbytes randint randrange sample seed setstate shuffle triangular uniform vonmisesvariate "
        "weibullvariate",
    ),
    (
        "random:SystemRandom",
        SAFE,
        "os.urandom-based random; seed/getstate/setstate only raise",
        "getrandbits getstate randbytes random seed setstate",
    ),
    (
        "re:Pattern",
        SAFE,
        "regex engine in C; a callable repl is called with a Match only",
        "findall finditer fullmatch match scanner search split sub subn",
    ),
    (
        "re:Match",
        SAFE,
        "group access; expand parses \\g<name> group references only",
        "end expand group groupdict groups span start",
    ),
    ("_sre:SRE_Scanner", SAFE, "step a pattern over a string (returned by Pattern.scanner)", "match search"),
    (
        "datetime:date",
        SAFE,
        "C date arithmetic; strftime reads format codes only",
        "ctime "
        "fromisocalendar fromisoformat fromordinal fromtimestamp isocalendar isoformat isoweekday replace "
        "strftime timetuple today toordinal weekday",
    ),
    (
        "datetime:datetime",
        SAFE,
        "C datetime arithmetic; tz methods call tzinfo methods by fixed names",
        "astimezone combine ctime date dst fromisoformat fromtimestamp isoformat now replace strptime time "
        "timestamp timetuple timetz tzname utcfromtimestamp utcnow utcoffset utctimetuple",
    ),
    (
        "datetime:time",
        SAFE,
        "C time-of-day arithmetic and formatting",
        "dst fromisoformat isoformat replace strftime tzname utcoffset",
    ),
    ("datetime:timedelta", SAFE, _NUM, "total_seconds"),
    (
        "datetime:tzinfo",
        SAFE,
        "abstract: raise NotImplementedError or call utcoffset/dst by fixed names",
        "dst fromutc tzname utcoffset",
    ),
    ("datetime:timezone", SAFE, "fixed-offset time zone arithmetic", "dst fromutc tzname utcoffset"),
    (
        "statistics:NormalDist",
        SAFE,
        "numeric methods (from_samples calls cls(mean, stdev))",
        "cdf from_samples inv_cdf overlap pdf quantiles samples zscore",
    ),
    (
        "string:Template",
        SAFE,
        "substitute by mapping[key] through the class's compiled pattern (fields cannot reach attributes)",
        "get_identifiers is_valid safe_substitute substitute",
    ),
    ("textwrap:TextWrapper", SAFE, "regex-based filling with the instance's settings", "fill wrap"),
    ("typing:_GenericAlias", SAFE, "returns an alias with other parameters (nothing evaluated)", "copy_with"),
    ("typing:_SpecialGenericAlias", SAFE, "returns an alias with other parameters (nothing evaluated)", "copy_with"),
    ("typing:_UnionGenericAlias", SAFE, "returns an alias with other parameters (nothing evaluated)", "copy_with"),
    ("typing:_CallableType", SAFE, "returns an alias with other parameters (nothing evaluated)", "copy_with"),
]


# Calling a class runs its metaclass's __call__. Every class the sandbox can hold as an object (exposed,
# returned, or the type() of what it holds) has a plain type.__call__ (construction is __new__/__init__,
# covered like any member) unless it is listed here with the reason its metaclass's __call__ is safe.
# tests/sandbox/test_allowlist.py walks those classes and fails on any other.
CLASS_CALLS: dict[str, str] = {
    "re:RegexFlag": "EnumType.__call__: one argument looks a flag value up; its functional API (a class "
    "built from caller-chosen names) refuses an enum that already has members, as RegexFlag does",
}


# ------------------------------------------------------------------------------------------------------
# Helpers shared by guards.py (enforcement) and tests/sandbox/test_allowlist.py (coverage).


def owner_key(cls: type) -> str:
    """The table's name for a class: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def is_callable_member(raw: object) -> bool:
    """Whether a class-dict entry is code (and so needs a row): functions, method descriptors, class-
    and static methods, nested classes. Data and data-like descriptors (property, slots) are not."""
    return callable(raw) or isinstance(raw, (classmethod, staticmethod))


def parse(rows: list[Row]) -> dict[str, dict[str, tuple[str, str]]]:
    """``{owner: {name: (verdict, why)}}``; a name listed twice for one owner is a table error."""
    table: dict[str, dict[str, tuple[str, str]]] = {}
    for owner, verdict, why, names in rows:
        entry = table.setdefault(owner, {})
        for name in names.split():
            if name in entry:
                raise ValueError(f"allowlist: {owner}.{name} listed twice")
            entry[name] = (verdict, why)
    return table


def returned_types() -> list[type]:
    """Types the sandbox receives from allowed callables without any module exporting them (their
    members need rows like exported classes do). Built from samples, since most have no public name."""
    import collections
    import datetime
    import functools
    import itertools
    import re
    import statistics
    import time
    import typing

    def gen():
        yield

    cached = functools.lru_cache(maxsize=None)(abs)
    od: collections.OrderedDict[object, object] = collections.OrderedDict()
    samples = [
        gen(),
        {}.keys(),
        {}.values(),
        {}.items(),
        od.keys(),
        od.values(),
        od.items(),
        type.__dict__,
        cached,
        cached.cache_info(),
        next(itertools.groupby("a"))[1],
        itertools.tee("")[0],
        re.compile("a").scanner("a"),  # type: ignore[attr-defined]  # undocumented, so typeshed omits it
        time.gmtime(0),
        datetime.date(2000, 1, 1).isocalendar(),
        statistics.linear_regression([1, 2], [1, 2]),
        list[int],
        typing.Optional[int],  # noqa: UP045  (the objects themselves are what is probed)
        typing.Union[int, str],  # noqa: UP007
        typing.Callable[[int], int],
        tuple[int],
        iter(""),
        iter(b""),
        iter([]),
        iter(()),
        iter(set()),
        iter({}),
        iter(range(0)),
        reversed([]),
        iter(collections.deque()),
        gen,
        abs,
        [].append,
        (lambda: None).__get__(1),
    ]
    types_ = [type(s) for s in samples]
    types_.append(typing.Generic)  # a base of classes that subclass subscripted typing aliases
    return list(dict.fromkeys(types_))


def resolve_owner(owner: str, extra: dict[str, type]) -> type | None:
    """The class a class row names, looked up among loaded modules only (never imports: the worker may
    have no file access by the time it asks), else among ``extra`` (returned types by owner key)."""
    if owner in extra:
        return extra[owner]
    module, _, qualname = owner.partition(":")
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and owner_key(obj) == owner else None
