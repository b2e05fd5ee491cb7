"""Language-layer attacks on the per-callable allowlist (issue 7, deliverable 1): stdlib callables that get
or set attributes by a caller-chosen name, sandbox subclasses of host classes, typing forward references,
namedtuple and json hooks, and every format route. Each attack must fail with an error, print no ESCAPED
marker, never reveal the parent's secret, and leave no trace in later cells (checked by INTEGRITY)."""

from __future__ import annotations

import pytest

from .conftest import run_attack

# Each cell raises at the step the sandbox must refuse; past it, it prints ESCAPED.
ATTACKS = {
    # functools.update_wrapper / wraps with caller-chosen attribute names
    "update_wrapper_assigned_globals": (
        "import functools\ndef w():\n    pass\n"
        "functools.update_wrapper(w, FINAL, assigned=('__globals__',))\nprint('ESCAPED')"
    ),
    "update_wrapper_updated_globals": (
        "import functools\ndef w():\n    pass\n"
        "functools.update_wrapper(w, FINAL, updated=('__globals__',))\nprint('ESCAPED')"
    ),
    "wraps_assigned_builtins": (
        "import functools\nclass B:\n    pass\nb = B()\n"
        "functools.wraps(FINAL, assigned=('__builtins__', '__globals__'))(b)\nprint('ESCAPED', b)"
    ),
    "wraps_updated_dict_of_module_proxy": (
        "import functools, json\nclass B:\n    pass\nb = B()\n"
        "functools.update_wrapper(b, json, updated=('__dict__',))\nprint('ESCAPED', b.codecs)"
    ),
    "update_wrapper_copies_host_class_dict": (
        "import functools, collections\nclass B:\n    pass\nb = B()\n"
        "functools.update_wrapper(b, collections.UserString)\n"
        "print('ESCAPED', b.format('{0.__globals__}', FINAL))"
    ),
    "update_wrapper_copies_host_instance_dict": (
        "import functools, json\nclass D(json.JSONDecoder):\n    pass\n"
        "class P:\n    def scan_once(self):\n        return 'mine'\np = P()\n"
        "functools.update_wrapper(p, D())\nv = p.scan_once\nprint(v())\nfunctools.update_wrapper(p, json.JSONDecoder())\n"
        "print('ESCAPED', p.scan_once, p.parse_string)"
    ),
    "update_wrapper_writes_host_class": (
        "import functools, textwrap\ndef f():\n    'changed'\n"
        "functools.update_wrapper(textwrap.TextWrapper, f)\nprint('ESCAPED')"
    ),
    "update_wrapper_writes_builtin_function": (
        "import functools\ndef f():\n    pass\nfunctools.update_wrapper(len, f)\nprint('ESCAPED')"
    ),
    "update_wrapper_class_into_host": (
        "import functools\nclass S:\n    pass\nfunctools.update_wrapper(FINAL, S, assigned=('__doc__',))\n"
        "print('ESCAPED')"
    ),
    "update_wrapper_lying_str": (
        "import functools\nclass S(str):\n    def __eq__(self, o):\n        return True\n"
        "    def __hash__(self):\n        return hash('__doc__')\n"
        "def w():\n    pass\nfunctools.update_wrapper(w, FINAL, assigned=(S('__globals__'),))\n"
        "print('ESCAPED')"
    ),
    "wraps_partial_keywords_mutated": (
        "import functools\ndef w():\n    pass\np = functools.wraps(FINAL)\n"
        "p.keywords['assigned'] = ('__globals__',)\np(w)\nprint('ESCAPED')"
    ),
    "wraps_partial_func_reused_on_host": (
        "import functools, json\np = functools.wraps(len)\np.func(json.JSONEncoder, len)\nprint('ESCAPED')"
    ),
    "wrapped_attribute_read": (
        "import functools\ndef w():\n    pass\nfunctools.update_wrapper(w, FINAL)\n"
        "print('ESCAPED', getattr(w, '__wrapped__'))"
    ),
    "lru_cache_wrapped_host": (
        "import functools\nc = functools.lru_cache(maxsize=None)(FINAL)\nprint('ESCAPED', getattr(c, '__wrapped__'))"
    ),
    # cached_property with a chosen attribute name
    "cached_property_attrname_set": (
        "import functools\ncp = functools.cached_property(lambda s: 1)\ncp.attrname = '__class__'\nprint('ESCAPED')"
    ),
    # (the real one read and wrote instance.__dict__[attrname]: with attrname='scan_once' on a JSONDecoder
    # subclass it returned the host scanner that JSONDecoder.__init__ keeps in the instance dict)
    "cached_property_subclass_attrname": (
        "import functools, json\nclass CP(functools.cached_property):\n    pass\n"
        "cp = CP(lambda s: 'computed')\ncp.attrname = 'scan_once'\n"
        "class D(json.JSONDecoder):\n    x = cp\nv = D().x\n"
        "if v != 'computed':\n    print('ESCAPED', v)\nraise RuntimeError('held')"
    ),
    "cached_property_named_like_host_internal": (
        "import functools, json\nclass D(json.JSONDecoder):\n    @functools.cached_property\n"
        "    def scan_once(self):\n        return 'computed'\nprint('ESCAPED', D().scan_once)"
    ),
    "cached_property_on_host_instance": (
        "import functools, json\ncp = functools.cached_property(lambda s: 1)\n"
        "e = json.JSONEncoder()\nsetattr(e, 'x', cp)\nprint('ESCAPED')"
    ),
    "cached_property_unnamed": (
        "import functools\nclass K:\n    pass\nsetattr(K, 'x', functools.cached_property(lambda s: 1))\n"
        "print('ESCAPED', K().x)"
    ),
    "real_cached_property_via_functools_attr": (
        "import functools\nprint('ESCAPED', functools.RLock, functools.singledispatch)"
    ),
    # total_ordering and other class decorators on host classes
    "total_ordering_host_class": (
        "import functools, datetime\nfunctools.total_ordering(datetime.timedelta)\nprint('ESCAPED')"
    ),
    "total_ordering_counter": (
        "import functools, collections\nfunctools.total_ordering(collections.Counter)\nprint('ESCAPED')"
    ),
    "abc_register_via_typing": ("import typing\nclass A:\n    pass\ntyping.Sequence.register(A)\nprint('ESCAPED')"),
    "abc_register_via_class": (
        "import collections\nclass A:\n    pass\ncollections.UserDict.register(A)\nprint('ESCAPED')"
    ),
    # sandbox subclasses of host classes reaching unreviewed members
    "json_decoder_subclass_internals": (
        "import json\nclass D(json.JSONDecoder):\n    pass\nprint('ESCAPED', D().scan_once)"
    ),
    "json_decoder_parse_string": "import json\nprint('ESCAPED', json.JSONDecoder().parse_string)",
    "json_decoder_override_shadowed": (
        "import json\nclass D(json.JSONDecoder):\n    def parse_object(self):\n        return 1\n"
        "print('ESCAPED', D().parse_object)"
    ),
    "super_reaches_host_internal": (
        "import json\nclass D(json.JSONDecoder):\n    def grab(self):\n        return super().parse_array\n"
        "print('ESCAPED', D().grab())"
    ),
    "delete_override_memo": (
        "import json\nclass D(json.JSONDecoder):\n    def parse_string(self):\n        return 1\n"
        "d = D()\nD.parse_string\ndel D.parse_string\nprint('ESCAPED', D.parse_string, d.parse_string)"
    ),
    "counter_subclass_register": (
        "import collections\nclass C(collections.Counter):\n    pass\nprint('ESCAPED', C.register)"
    ),
    "userstring_subclass_format": (
        "import collections\nclass U(collections.UserString):\n    pass\n"
        "print('ESCAPED', U('{0.__globals__}').format(FINAL))"
    ),
    "userstring_format_unbound": (
        "import collections\nf = collections.UserString.format\nprint('ESCAPED', f(collections.UserString('{0.__globals__}'), FINAL))"
    ),
    "textwrapper_subclass": (
        "import textwrap\nclass T(textwrap.TextWrapper):\n    pass\nprint('ESCAPED', T().x, T.mro()[1].register)"
    ),
    "random_subclass_internals": (
        "import random\nclass R(random.Random):\n    def random(self):\n        return 0.5\n"
        "r = R()\nprint(r.choice([1, 2]))\nprint('ESCAPED', getattr(r, '_randbelow'))"
    ),
    "template_subclass_pattern": (
        "import string\nclass T(string.Template):\n    delimiter = '#'\n"
        "print(T('#x').substitute(x=1))\nprint('ESCAPED', T.pattern.__class__.__subclasses__)"
    ),
    "json_encoder_subclass_default": (
        "import json\nclass E(json.JSONEncoder):\n    def default(self, o):\n        return getattr(o, '__globals__')\n"
        "print('ESCAPED', json.dumps(FINAL, cls=E))"
    ),
    "stored_host_method_value": (
        "import json\nclass A:\n    pass\na = A()\nd = json.JSONDecoder()\n"
        "a.f = getattr(d, 'scan_once', len)\nprint(a.f('ab'))\na.g = d.parse_string\nprint('ESCAPED', a.g)"
    ),
    # typing forms and forward references
    "typing_forward_ref_eval": (
        "import typing\nx = typing.List['FINAL(\"ESCAPED\")']\ny = typing.Optional['__import__(\"os\")']\n"
        "print('ESCAPED', typing.get_type_hints)"
    ),
    "typing_forward_ref_class": "import typing\nprint('ESCAPED', typing.ForwardRef('1').__forward_code__)",
    "typing_namedtuple_typeddict": "from typing import NamedTuple\nprint('ESCAPED', NamedTuple)",
    "typing_alias_forwarding": ("import typing\nprint(typing.List.append)\nprint('ESCAPED', typing.Callable.register)"),
    "typing_alias_args": "import typing\nprint('ESCAPED', typing.Optional['x'].__args__)",
    # namedtuple
    "namedtuple_field_injection": (
        "import collections\nP = collections.namedtuple('P', ['x', 'y=__import__(\"os\")'])\nprint('ESCAPED', P)"
    ),
    "namedtuple_typename_injection": (
        "import collections\nP = collections.namedtuple('P(tuple): pass\\nimport os\\nclass Q', 'x')\n"
        "print('ESCAPED', P)"
    ),
    "namedtuple_dunder_field": (
        "import collections\nP = collections.namedtuple('P', ['__globals__'])\nprint('ESCAPED', P)"
    ),
    "namedtuple_rename_module": (
        "import collections\nP = collections.namedtuple('Formatter', ['class', '__init__'], rename=True, "
        "module='string')\np = P(1, 2)\nprint(p)\nprint('ESCAPED', getattr(p, '_1'))"
    ),
    "namedtuple_spoofed_owner": (
        "import collections\nS = collections.namedtuple('UserString', ['data'], module='collections')\n"
        "print('ESCAPED', S('{0.__globals__}').format(FINAL))"
    ),
    # json hooks
    "json_object_hook_getattr": (
        "import json\nprint('ESCAPED', json.loads('[\"__globals__\"]', object_hook=None, "
        "parse_constant=None), json.loads('{\"__globals__\": 1}', object_pairs_hook=lambda p: getattr(FINAL, p[0][0])))"
    ),
    "json_default_getattr": "import json\nprint('ESCAPED', json.dumps(FINAL, default=lambda o: getattr(o, '__globals__')))",
    "json_cls_hooks_host": "import json\nprint('ESCAPED', json.JSONDecoder().scan_once('{}', 0))",
    # IMPORT_FROM falls back to sys.modules['json.decoder'] when the proxy lacks the name
    "json_module_internals": "from json import decoder\nprint('ESCAPED', decoder.scanstring)",
    "from_import_loaded_submodules": (
        "from typing import io\nprint('ESCAPED', io)\nfrom collections import abc\nprint('ESCAPED', abc)"
    ),
    # every format route
    "format_builtin_spec": "print('ESCAPED', format(FINAL, '{0.__globals__}'))",
    "format_map_str_method": "print('ESCAPED', list(map(str.format, ['{0.__globals__}'], [FINAL])))",
    "format_via_getattr": "f = getattr('{0.__globals__}', 'format')\nprint('ESCAPED', f(FINAL))",
    "format_method_descriptor_stored": (
        "class A:\n    pass\na = A()\na.f = getattr(str, 'format')\nprint('ESCAPED', a.f('{0.__globals__}', FINAL))"
    ),
    "format_nested_removed_member": ("import json\nprint('ESCAPED', '{0.parse_string}'.format(json.JSONDecoder()))"),
    "format_nested_register": "import typing\nprint('ESCAPED', '{0.register}'.format(typing.Callable))",
    "format_template_braces": (
        "import string\nprint(string.Template('${x}').substitute(x='{0.__globals__}'))\n"
        "print('ESCAPED', string.Template('$x').substitute(x='{0.__globals__}').format(FINAL))"
    ),
    "format_strftime": (
        "import datetime\nd = datetime.date(2024, 1, 2)\nprint(d.strftime('{0.__globals__} %Y'))\n"
        "print('ESCAPED', d.strftime('{0.__globals__}').format(FINAL))"
    ),
    "format_percent": "print('%s' % 'x')\nprint('ESCAPED', '%(a)s' % {'a': getattr(FINAL, '__globals__')})",
    "format_str_subclass_unbound": (
        "class S(str):\n    pass\nprint('ESCAPED', str.format(S('{0.__globals__}'), FINAL))"
    ),
    "format_formatter_removed": "from string import Formatter\nprint('ESCAPED', Formatter)",
    # more: other callers of getattr/setattr by name, and module-graph walks through the new surface
    "statistics_itemgetter": "from statistics import itemgetter\nprint('ESCAPED', itemgetter)",
    "statistics_fraction": "import statistics\nprint('ESCAPED', statistics.Fraction)",
    # statistics converts results with T(value), handing an unexported Fraction to a sandbox int subclass
    "statistics_returns_fraction": (
        "import statistics\nseen = []\nclass S(int):\n    def __init__(self, v):\n        seen.append(v)\n"
        "statistics.mean([S(1), S(3)])\nf = seen[-1]\nprint(type(f).__name__, f.numerator)\n"
        "print('ESCAPED', f.limit_denominator, type(f).from_float)"
    ),
    "itertools_starmap_setattr": (
        "import itertools, textwrap\nlist(itertools.starmap(setattr, [(textwrap.TextWrapper, 'width', 1)]))\n"
        "print('ESCAPED')"
    ),
    "random_subclass_private_hooks": (
        "import random\nclass R(random.Random):\n    def random(self):\n        return 0.25\n"
        "print(R().choice('abcd'))\nprint('ESCAPED', R.register)"
    ),
    "itertools_starmap_getattr": (
        "import itertools\nprint('ESCAPED', list(itertools.starmap(getattr, [(FINAL, '__globals__')])))"
    ),
    "lru_cache_of_getattr": (
        "import functools\ng = functools.lru_cache(maxsize=None)(getattr)\nprint('ESCAPED', g(FINAL, '__globals__'))"
    ),
    "partial_host_stub_func": "import functools\nprint('ESCAPED', functools.partial(FINAL).func)",
    "property_fget_host": "p = property(FINAL)\nprint('ESCAPED', p.fget)",
    "defaultdict_factory_host": "import collections\nprint('ESCAPED', collections.defaultdict(FINAL).default_factory)",
    "import_star": "from re import *\nprint('ESCAPED')",
    "dir_removed_module": "import json\nnames = dir(json)\nprint('codecs' in names)\nprint('ESCAPED', json.codecs)",
    "re_debug_flag": "import re\nprint('ESCAPED', re.DEBUG)",
    "hasattr_probe_removed": (
        "import re\nprint(hasattr(re, 'Scanner'), getattr(re, 'template', 'gone'))\nprint('ESCAPED', re.Scanner)"
    ),
    "mro_walk_to_object_subclasses": (
        "import collections\nm = collections.Counter.mro()\nprint('ESCAPED', m[-1].__subclasses__())"
    ),
    "generator_internals": "def g():\n    yield 1\nx = g()\nprint('ESCAPED', getattr(x, 'gi_frame'))",
    "exception_with_traceback": (
        "try:\n    1 / 0\nexcept Exception as e:\n    print('ESCAPED', e.with_traceback(None).__traceback__)"
    ),
    "bytes_decode_codec_import": "print('ESCAPED', b'x'.decode('..os'))",
    "type_of_host_then_internal": ("import json\nT = type(json.JSONDecoder())\nprint('ESCAPED', T().scan_once)"),
}


@pytest.fixture
def sandbox(attack_sandbox):
    return attack_sandbox


# After every attack the next cell must see the sandbox exactly as before: no real builtins, guarded
# functools, host classes unchanged, format still guarded.
INTEGRITY = """
import functools, textwrap, json, collections
checks = []
try:
    functools.update_wrapper(textwrap.TextWrapper, len)
    checks.append('UPDATE_WRAPPER_OPEN')
except TypeError:
    pass
try:
    '{0.__globals__}'.format(FINAL)
    checks.append('FORMAT_OPEN')
except AttributeError:
    pass
print(textwrap.TextWrapper(width=5).wrap('aa bb cc'), json.dumps({'a': 1}), 'x'.upper())
print(collections.Counter('aab').most_common(1), textwrap.TextWrapper.__doc__ is not None)
print(checks)
"""
INTEGRITY_OUT = "['aa bb', 'cc'] {\"a\": 1} X\n[('a', 2)] True\n[]\n"
BUILTINS_GONE = ["open", "eval", "exec", "compile", "globals", "vars", "__import__"]


def test_suite_size():
    assert len(ATTACKS) >= 60


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_language_attack_blocked(name, sandbox, secret_file):
    r = run_attack(sandbox, ATTACKS[name], secret_file)
    assert r.final is None, r.final
    after = sandbox.run(INTEGRITY)
    assert after.error is None and after.stdout == INTEGRITY_OUT, after
    for name_ in BUILTINS_GONE:
        probe = sandbox.run(f"print({name_})" if name_ != "__import__" else "import os")
        assert probe.error is not None and "ESCAPED" not in probe.stdout, (name_, probe)


def test_errors_name_the_reason(sandbox):
    r = sandbox.run("from functools import singledispatch")
    assert "ImportError" in r.error and "isinstance" in r.error
    r = sandbox.run("import re\nre.Scanner")
    assert "AttributeError" in r.error and "re.finditer" in r.error
    r = sandbox.run("import typing\ntyping.Callable.register")
    assert "register" in r.error and "subclass" in r.error
    r = sandbox.run("import json\njson.JSONDecoder().scan_once")
    assert "not available in the sandbox" in r.error


def test_guarded_replacements_still_work(sandbox):
    code = (
        "import functools\n"
        "def deco(fn):\n    @functools.wraps(fn)\n    def inner(*a):\n        return fn(*a) * 2\n    return inner\n"
        "@deco\ndef double(x):\n    'doc'\n    return x\n"
        "@functools.total_ordering\nclass V:\n    def __init__(self, v):\n        self.v = v\n"
        "    def __eq__(self, o):\n        return self.v == o.v\n    def __lt__(self, o):\n        return self.v < o.v\n"
        "class K:\n    calls = 0\n    @functools.cached_property\n    def heavy(self):\n"
        "        K.calls += 1\n        return 42\n"
        "k = K()\n"
        "print(double(4), double.__name__, double.__doc__, V(1) >= V(0), k.heavy, k.heavy, K.calls)"
    )
    r = sandbox.run(code)
    assert r.error is None and r.stdout == "8 double doc True 42 42 1\n", r


def test_sandbox_subclass_inherits_nothing_unreviewed():
    """In process: a sandbox class over a host class the table does not know gets none of its methods,
    also after the sandbox overrides one and deletes the override again (memo invalidation)."""
    from rlm_local.sandbox.worker import guards as G

    class Host:
        def secret(self):
            return "host internals"

    def cell_lambda(text: str):  # a function as sandbox cells make them (the worker's cell file names)
        return eval(compile(f"lambda self: {text!r}", "<cell 1>", "eval"))

    g = G.Guards(G.Printer(100), G.make_module_proxies())
    Sub = g.meta("Sub", (Host,), {})
    for target in (Sub, Sub()):
        with pytest.raises(AttributeError, match="not reviewed"):
            g.getattr(target, "secret")
    g.setattr(Sub, "secret", cell_lambda("mine"))
    assert g.getattr(Sub(), "secret")() == "mine"
    g.delattr(Sub, "secret")
    with pytest.raises(AttributeError, match="not reviewed"):
        g.getattr(Sub(), "secret")
    g.write(Sub).secret = cell_lambda("again")  # attribute stores compile to _write_(obj).name = value
    assert g.getattr(Sub, "secret")(Sub()) == "again"
    del g.write(Sub).secret
    with pytest.raises(AttributeError, match="not reviewed"):
        g.getattr(Sub, "secret")


def test_from_import_names_must_be_exposed():
    """In process: the import hook refuses every from-import name the proxy does not expose, including
    loaded submodules that IMPORT_FROM would otherwise fetch from sys.modules (re._parser is loaded)."""
    import sys

    from rlm_local.sandbox.worker import guards as G

    g = G.Guards(G.Printer(100), G.make_module_proxies())
    assert "re._parser" in sys.modules and "json.decoder" in sys.modules
    for module, name in (
        ("re", "_parser"),
        ("json", "decoder"),
        ("re", "Scanner"),
        ("re", "*"),
        ("collections", "abc"),
    ):
        with pytest.raises(ImportError):
            g.import_(module, None, None, (name,), 0)
    assert g.import_("re", None, None, ("compile", "findall"), 0) is g.proxies["re"]


def test_instance_data_is_checked_by_value():
    """In process: callables that reach the sandbox from instance dicts (where host code may have stored
    its internals) pass only if the sandbox made them or the table allows what they run."""
    import functools
    import json.decoder

    from rlm_local.sandbox.worker import guards as G

    g = G.Guards(G.Printer(100), G.make_module_proxies())
    mine = eval(compile("lambda: 'mine'", "<cell 1>", "eval"))

    class Unreviewed:
        def method(self):
            return "host code"

    class Holder:  # a host object with instance data
        pass

    h = Holder()
    refused = {
        "host_function": json.decoder.JSONObject,
        "c_function": json.decoder.scanstring,
        "partial_of_host": functools.partial(json.decoder.JSONObject),
        "cached_host": functools.lru_cache()(json.decoder.JSONObject),
        "bound_unreviewed": Unreviewed().method,
        "format_descriptor": str.format,
        "partial_of_partial": functools.partial(functools.partial(json.decoder.scanstring)),
    }
    allowed = {
        "sandbox_function": mine,
        "partial_of_sandbox": functools.partial(mine),
        "exposed": len,
        "str_method": str.upper,
        "bound_c_method": "x".upper,
        "data": 3,
        "cached_sandbox": functools.lru_cache()(mine),
    }
    for name, value in {**refused, **allowed}.items():
        setattr(h, name, value)
    for name in refused:
        with pytest.raises(AttributeError, match="not available in the sandbox"):
            g.getattr(h, name)
    for name, value in allowed.items():
        assert g.getattr(h, name) is value, name
