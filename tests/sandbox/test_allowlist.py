"""Coverage of the language layer's allowlist (rlm_local/sandbox/worker/allowlist.py) on the running Python.

The walk below is independent of the guard's own lookup code: it starts from what the sandbox really
receives (the module proxies and builtins that guards.py builds, plus allowlist.returned_types()), and
follows every class it meets through its MRO, its metaclass, its nested classes and the types of its
class-level data. Every public callable member it finds must have a row for the class that defines it,
so a new Python version that adds a method fails here instead of being exposed unreviewed."""

from __future__ import annotations

import builtins
import importlib

import pytest

from rlm_local.sandbox.worker import allowlist as A
from rlm_local.sandbox.worker import guards as G
from rlm_local.sandbox.worker import wrapped as W


@pytest.fixture(scope="module")
def guards() -> G.Guards:
    return G.Guards(G.Printer(1000), G.make_module_proxies())


@pytest.fixture(scope="module")
def class_rows() -> dict[str, dict[str, tuple[str, str]]]:
    return A.parse(A.CLASS_ROWS)


def _public(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def exposed(guards: G.Guards) -> list:
    """What the sandbox receives without any attribute read: module proxies' names, builtins, and the
    types allowed callables return (allowlist.returned_types())."""
    values = [v for proxy in guards.proxies.values() for v in proxy._mod_attrs.values()]
    values += [v for name, v in guards.builtins().items() if not name.startswith("_")]
    return values + A.returned_types()


def reachable_members(guards: G.Guards) -> tuple[set[type], dict[str, set[str]]]:
    """(classes reached, {owner_key: callable member names}) from the sandbox's real exposure."""
    seen: set[type] = set()
    queue: list[type] = []

    def add(obj) -> None:
        cls = obj if isinstance(obj, type) else type(obj)
        if cls not in seen:
            seen.add(cls)
            queue.append(cls)
        origin = getattr(obj, "__origin__", None)  # typing aliases forward attribute reads to it
        if isinstance(origin, type):
            add(origin)

    for value in exposed(guards):
        add(value)
    need: dict[str, set[str]] = {}
    while queue:
        cls = queue.pop()
        for base in cls.__mro__:
            add(base)
        add(type(cls))  # attributes read off a class fall back to its metaclass
        for name in _public(dir(cls)):
            owner = next((c for c in cls.__mro__ if name in vars(c)), None)
            if owner is None:
                continue
            raw = vars(owner)[name]
            if A.is_callable_member(raw):
                need.setdefault(A.owner_key(owner), set()).add(name)
                if isinstance(raw, type):
                    add(raw)
            elif not hasattr(type(raw), "__get__"):  # class-level data: its type's methods are reachable
                add(raw)
    return seen, need


def test_every_public_module_name_has_a_row():
    table = A.parse(A.MODULE_ROWS)
    missing = []
    for modname in ("builtins",) + A.ALLOWED_MODULES:
        mod = importlib.import_module(modname)
        missing += [f"{modname}.{n}" for n in _public(vars(mod)) if n not in table.get(modname, {})]
    assert not missing, "public names without an allowlist row (review and add them): " + " ".join(missing)


def test_no_stale_module_rows():
    stale = [
        f"{m}.{n}"
        for m, names in A.parse(A.MODULE_ROWS).items()
        for n in names
        if not hasattr(importlib.import_module(m), n)
    ]
    assert not stale, "allowlist rows for names this Python does not have: " + " ".join(stale)


def test_every_reachable_callable_member_has_a_row(guards, class_rows):
    _, need = reachable_members(guards)
    missing = [
        f"{owner}.{n}"
        for owner, names in sorted(need.items())
        for n in sorted(names)
        if n not in class_rows.get(owner, {})
    ]
    assert not missing, "callable members without an allowlist row (review and add them): " + " ".join(missing)
    assert len(need) > 40 and sum(map(len, need.values())) > 400  # the walk really walked


def test_no_stale_class_rows(guards, class_rows):
    extra = {A.owner_key(t): t for t in A.returned_types()}
    stale = []
    for owner, names in class_rows.items():
        cls = A.resolve_owner(owner, extra)
        if cls is None:
            stale.append(owner)
            continue
        stale += [f"{owner}.{n}" for n in names if n not in vars(cls) or not A.is_callable_member(vars(cls)[n])]
    assert not stale, "allowlist rows naming members that do not exist here: " + " ".join(stale)


def test_rows_are_well_formed():
    for owner, verdict, why, names in A.MODULE_ROWS + A.CLASS_ROWS:
        assert verdict in (A.SAFE, A.WRAPPED, A.REMOVED), owner
        assert len(why) > 10 and names.split(), owner
    A.parse(A.MODULE_ROWS)  # raises on a name listed twice
    A.parse(A.CLASS_ROWS)


def test_proxies_expose_exactly_the_safe_and_wrapped_rows(guards):
    table = A.parse(A.MODULE_ROWS)
    wrappers = W.module_wrappers()
    for modname, proxy in guards.proxies.items():
        mod = importlib.import_module(modname)
        rows = table[modname]
        assert set(proxy._mod_attrs) == {n for n, (v, _) in rows.items() if v != A.REMOVED}, modname
        for name, value in proxy._mod_attrs.items():
            expected = wrappers[(modname, name)] if rows[name][0] == A.WRAPPED else getattr(mod, name)
            assert value is expected, f"{modname}.{name}"
        for name, (verdict, _why) in rows.items():
            if verdict == A.REMOVED:
                with pytest.raises(AttributeError, match="not available in the sandbox"):
                    getattr(proxy, name)


def test_module_proxy_class_has_no_public_members():
    """The getattr guard lets every public name through to a proxy (its attributes are built from the
    table); a public method on the proxy class itself would bypass the table."""
    assert _public(n for c in G.ModuleProxy.__mro__ for n in vars(c)) == []


def test_builtins_follow_the_table(guards):
    table = A.parse(A.MODULE_ROWS)["builtins"]
    b = guards.builtins()
    public = {n for n in b if not n.startswith("_")}
    assert public == {n for n, (v, _) in table.items() if v != A.REMOVED}
    for name in public:
        if table[name][0] == A.SAFE:
            assert b[name] is getattr(builtins, name), name
        else:
            assert b[name] is not getattr(builtins, name, None), name


def test_guard_enforces_every_class_row(guards, class_rows):
    """The getattr guard gives each reviewed member exactly its verdict, read off the class itself."""
    extra = {A.owner_key(t): t for t in A.returned_types()}
    checked = 0
    for owner, names in class_rows.items():
        cls = A.resolve_owner(owner, extra)
        for name, (verdict, _) in names.items():
            if name in G.SPECIAL_ATTRS:  # format/format_map: served by the guarded formatter
                continue
            if verdict == A.SAFE:
                guards.getattr(cls, name)
            else:
                with pytest.raises(AttributeError, match="not available in the sandbox"):
                    guards.getattr(cls, name)
            checked += 1
    assert checked > 400


def test_guard_refuses_unreviewed_members_of_reachable_classes(guards, class_rows):
    """Every callable member the walk reaches without a safe/wrapped row is refused; so is any member of a
    host class the table has never heard of."""
    seen, need = reachable_members(guards)
    by_key = {A.owner_key(c): c for c in seen}
    for owner, names in need.items():
        for name in names:
            verdict = class_rows.get(owner, {}).get(name, ("none", ""))[0]
            if verdict == A.REMOVED:
                with pytest.raises(AttributeError):
                    guards.getattr(by_key[owner], name)

    class Unreviewed:
        def method(self):
            return "host code"

        helper = staticmethod(len)

    for target in (Unreviewed, Unreviewed()):
        for name in ("method", "helper"):
            with pytest.raises(AttributeError, match="not reviewed"):
                guards.getattr(target, name)


def obtainable_classes(guards: G.Guards) -> set[type]:
    """Classes the sandbox can hold as objects: exposed names that are classes, the type() of exposed and
    returned values (allowlist.returned_types()), and, for each such class, the classes and the types of
    the data its public attributes hold, found through its MRO as attribute reads find them. Never a base
    as such: mro(), __bases__ and __mro__ are refused."""
    seen: set[type] = set()
    queue: list[type] = []

    def add(obj) -> None:
        cls = obj if isinstance(obj, type) else type(obj)
        if issubclass(cls, type):  # a metaclass: type() and __class__ hand out the guard function instead
            return
        if cls not in seen:
            seen.add(cls)
            queue.append(cls)

    for value in exposed(guards):
        add(value)
    while queue:
        cls = queue.pop()
        for name in _public(dir(cls)):
            owner = next((c for c in cls.__mro__ if name in vars(c)), None)
            raw = vars(owner)[name] if owner is not None else None
            if isinstance(raw, type) or (raw is not None and not hasattr(type(raw), "__get__")):
                add(raw)
    return seen


def test_every_obtainable_class_is_reviewed_for_calling(guards):
    """Calling a class runs its metaclass's __call__: every class the sandbox can hold has type's own, or
    a row in allowlist.CLASS_CALLS saying why its metaclass's is safe (enum.Enum's functional API builds
    classes with any dunder: it must stay out of reach)."""
    classes = obtainable_classes(guards)
    keys = {A.owner_key(c) for c in classes}
    odd = sorted(A.owner_key(c) for c in classes if type(c).__call__ is not type.__call__)
    assert [k for k in odd if k not in A.CLASS_CALLS] == [], "review these classes' metaclass __call__"
    assert set(A.CLASS_CALLS) <= keys, "stale CLASS_CALLS rows"
    assert len(classes) > 60 and "enum:Enum" not in keys and "enum:IntFlag" not in keys
    import re

    with pytest.raises(TypeError):  # the reason given for re:RegexFlag holds on this Python
        re.RegexFlag("Made", ["A"])
