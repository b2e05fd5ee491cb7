"""Language-layer attacks of issue 16 (round 3), by class of hole. Each attack must fail with an error,
print no ESCAPED marker and leave the session intact (INTEGRITY); each also runs once against a naive
setting (plain exec with real builtins, the worker's own module proxies, stand-ins for the REPL stubs)
where it must print ESCAPED, so no attack here holds only because it is broken.

Classes: unreviewed classes reached through an allowed class's MRO (enum's functional API defines any
dunder or private name); host ``__init__`` writing through sandbox descriptors; ``super(C, Subclass)``
handing out unbound host dunders; host-owned containers written through the write guard or mutating
methods; FINAL/FINAL_VAR trusting the value's own methods; the ``copy``/``__reduce_ex__`` route of
``UserDict.copy``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import run_attack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ENUM_BASE = "import re\nE = re.RegexFlag.mro()[-2]\n"
ATTACKS = {
    # -- classes reached through an MRO, and enum's functional API
    "enum_functional_getattr": ENUM_BASE
    + "def ga(self, name):\n    print('ESCAPED getattr ran for', name)\n    return 1\n"
    "X = E('X', [('__getattr__', ga), ('A', 1)])\nX.A.anything",
    "enum_functional_setattr": ENUM_BASE + "def sa(self, name, value):\n    print('ESCAPED setattr ran')\n"
    "X = E('X', [('__setattr__', sa), ('A', 1)])\nX.A.foo = 1",
    "enum_functional_format": ENUM_BASE + "def fm(self, spec):\n    print('ESCAPED format ran')\n    return ''\n"
    "X = E('X', {'__format__': fm, 'A': 1})\nf'{X.A}'",
    "enum_functional_private_name": ENUM_BASE + "X = E('X', {'_sneaky': 3, 'A': 1})\nprint('ESCAPED', X.A)",
    "enum_via_member_class": "import re\nE = type(re.I).mro()[-2]\nX = E('X', ['A'])\nprint('ESCAPED', X.A)",
    "enum_via_dunder_class": "import re\nE = re.NOFLAG.__class__.mro()[1]\nX = E('X', ['A'])\nprint('ESCAPED', X.A)",
    "intflag_type_mixin": ENUM_BASE.replace("[-2]", "[1]")
    + "X = E('X', {'__reduce_ex__': 1, 'A': 1})\nprint('ESCAPED', X.A)",
    "json_decoder_setter_gets_scanner": (
        "import json\ngot = []\nclass D(json.JSONDecoder):\n"
        "    scan_once = property(lambda self: None, lambda self, v: got.append(v))\n"
        "D()\nprint('ESCAPED', got)"
    ),
    "json_decoder_setter_gets_scanstring": (
        "import json\ngot = []\ndef keep(self, v):\n    got.append(v)\n"
        "class D(json.JSONDecoder):\n    parse_string = property(None, keep)\nD()\nprint('ESCAPED', got)"
    ),
    "setter_added_after_class_creation": (
        "import json\ngot = []\nclass D(json.JSONDecoder):\n    pass\n"
        "D.scan_once = property(None, lambda self, v: got.append(v))\nD()\nprint('ESCAPED', got)"
    ),
    "setter_added_to_sandbox_base_of_mixin": (
        "import json\ngot = []\nclass A:\n    pass\nclass D(A, json.JSONDecoder):\n    pass\n"
        "A.scan_once = property(None, lambda self, v: got.append(v))\nD()\nprint('ESCAPED', got)"
    ),
    "setter_inherited_from_sandbox_base": (
        "import textwrap\ngot = []\nclass A:\n    width = property(None, lambda self, v: got.append(v))\n"
        "class T(A, textwrap.TextWrapper):\n    pass\nT()\nprint('ESCAPED', got)"
    ),
    "setter_on_random_subclass": (
        "import random\ngot = []\nclass R(random.Random):\n    gauss_next = property(None, lambda s, v: got.append(v))\n"
        "R(1)\nprint('ESCAPED', got)"
    ),
    "property_subclass_hides_fset": (
        "import json\ngot = []\nclass P(property):\n    fset = None\n"
        "class D(json.JSONDecoder):\n    scan_once = P(None, lambda self, v: got.append(v))\nD()\nprint('ESCAPED', got)"
    ),
    # -- super(C, Subclass): unbound host dunders
    "super_class_form_init_fills_trusted_instance": (
        "import json\nclass D(json.JSONDecoder):\n    pass\nclass P:\n    def scan_once(self):\n        return 1\n"
        "p = P()\nsuper(D, D).__init__(p)\nprint('ESCAPED', p.scan_once)"
    ),
    "super_class_form_reinit_module_proxy": (
        "import re\nclass Q(type(re)):\n    pass\nsuper(Q, Q).__init__(re, 're', {'compile': 'ESCAPED'}, {})\n"
        "print(re.compile)"
    ),
    "super_in_classmethod_unbound": (
        "import json\nclass D(json.JSONDecoder):\n    @classmethod\n    def grab(cls):\n        return super().__init__\n"
        "class P:\n    def scan_once(self):\n        return 1\np = P()\nD.grab()(p)\nprint('ESCAPED', p.scan_once)"
    ),
    "super_unbound_object": "import json\nclass D(json.JSONDecoder):\n    pass\nprint('ESCAPED', super(D).__init__)",
    # -- host-owned containers
    "host_container_item_write": (
        "import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans[65] = 'Z'\nprint('ESCAPED')"
    ),
    "host_container_update_method": (
        "import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans.update({65: 'Z'})\nprint('ESCAPED')"
    ),
    "host_container_through_instance": (
        "import textwrap\nt = textwrap.TextWrapper()\nt.unicode_whitespace_trans.setdefault(66, 'Z')\nprint('ESCAPED')"
    ),
    "host_container_through_sandbox_subclass": (
        "import textwrap\nclass T(textwrap.TextWrapper):\n    pass\nT.unicode_whitespace_trans[67] = 'Z'\n"
        "print('ESCAPED')"
    ),
    "host_container_through_getattr": (
        "import textwrap\nd = getattr(textwrap.TextWrapper, 'unicode_whitespace_trans')\n"
        "getattr(d, 'pop')(9)\nprint('ESCAPED')"
    ),
    "host_container_augmented_item": (
        "import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans[32] += 1\nprint('ESCAPED')"
    ),
    "host_container_unbound_dict_method": (
        "import textwrap\ndict.clear(textwrap.TextWrapper.unicode_whitespace_trans)\nprint('ESCAPED')"
    ),
    # -- FINAL / FINAL_VAR trusting the value's methods
    "final_var_lying_name": (
        "class S(str):\n    def strip(self, *a):\n        return self\n    def isidentifier(self):\n        return True\n"
        "    def startswith(self, *a):\n        return False\n    def __eq__(self, o):\n        return o == '_getattr_'\n"
        "    def __hash__(self):\n        return hash('_getattr_')\nFINAL_VAR(S('no_such_name'))\nprint('ESCAPED')"
    ),
    # -- copy / __reduce_ex__ through UserDict.copy
    "userdict_copy_on_own_instance": (
        "import collections\nclass P:\n    def __init__(self):\n        self.data = {'a': 1}\n"
        "    def update(self, other):\n        pass\nf = collections.UserDict.copy\nprint('ESCAPED', f(P()))"
    ),
    "userdict_copy_through_getattr": (
        "import collections\nclass P:\n    def __init__(self):\n        self.data = {}\n"
        "    def update(self, other):\n        pass\nprint('ESCAPED', getattr(collections.UserDict, 'copy')(P()))"
    ),
}

INTEGRITY = """
import textwrap, json, re
print(textwrap.fill('a b', width=3), textwrap.TextWrapper.unicode_whitespace_trans.get(65), json.loads('[1]'))
print(re.compile('a+').findall('caab'), context, llm_query('q'))
"""
INTEGRITY_OUT = "a b None [1]\n['aa'] public text answer to: q\n"

NAIVE_RUNNER = r"""
import builtins, contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])
from rlm_local.sandbox.worker import guards as G
proxies = G.make_module_proxies()

def imp(name, globals=None, locals=None, fromlist=(), level=0):
    return proxies[name] if name in proxies else __import__(name, globals, locals, fromlist, level)

results = {}
for name, code in json.loads(sys.stdin.read()).items():
    final = []
    def FINAL(value):
        final.append(str(value))
    def FINAL_VAR(name):  # the naive stub: trusts the name's own methods
        name = name.strip().strip("'\"")
        if not name.isidentifier() or name.startswith("_") or name not in g:
            raise NameError(name)
        FINAL(g[name])
    g = {"__builtins__": dict(vars(builtins), __import__=imp), "FINAL": FINAL, "FINAL_VAR": FINAL_VAR,
         "context": "ctx", "llm_query": lambda p: "a", "_getattr_": getattr}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<cell 1>", "exec"), g)
    except BaseException as e:
        out.write(f"raised {type(e).__name__}: {e}")
    results[name] = out.getvalue()
print("NAIVE-RESULTS:" + json.dumps(results), flush=True)
"""


@pytest.fixture(scope="module")
def naive_outputs() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", NAIVE_RUNNER, ROOT],
        input=json.dumps(ATTACKS),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("NAIVE-RESULTS:"))
    return json.loads(line.partition(":")[2])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_succeeds_in_a_naive_setting(name, naive_outputs):
    assert "ESCAPED" in naive_outputs[name], naive_outputs[name]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_stopped_by_the_language_layer(name, attack_sandbox, secret_file):
    r = run_attack(attack_sandbox, ATTACKS[name], secret_file)
    assert r.final is None, r.final
    after = attack_sandbox.run(INTEGRITY)
    assert after.error is None and after.stdout == INTEGRITY_OUT, after


@pytest.mark.parametrize("name", ["userdict_copy_on_own_instance", "userdict_copy_through_getattr"])
def test_copy_route_is_refused_by_the_language_layer(name, attack_sandbox):
    """Before, only the missing copy module stopped it (ModuleNotFoundError from inside UserDict.copy)."""
    r = attack_sandbox.run(ATTACKS[name])
    assert "AttributeError" in r.error and "not available in the sandbox" in r.error, r


def test_refusals_name_the_reason(attack_sandbox):
    r = attack_sandbox.run("import re\nre.RegexFlag.mro()")
    assert "isinstance/issubclass" in r.error, r
    r = attack_sandbox.run("import json\nclass D(json.JSONDecoder):\n    x = property(None, lambda s, v: None)")
    assert "setter or deleter" in r.error and "JSONDecoder" in r.error, r
    r = attack_sandbox.run("import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans[1] = 'x'")
    assert "read-only" in r.error, r
    r = attack_sandbox.run("import collections\ncollections.UserDict(a=1).copy()")
    assert "dict(d)" in r.error, r


def test_what_models_write_still_works(attack_sandbox):
    """The legitimate neighbours of each refused form."""
    code = (
        "import json, textwrap, collections, re\n"
        "class E(json.JSONEncoder):\n    def default(self, o):\n        return sorted(o)\n"
        "class D(json.JSONDecoder):\n    def __init__(self):\n        super().__init__(object_hook=dict)\n"
        "    @property\n    def kind(self):\n        return 'decoder'\n"
        "class Point:\n    def __init__(self):\n        self.v = 0\n"
        "    @property\n    def x(self):\n        return 1\n    @x.setter\n    def x(self, v):\n        pass\n"
        "class Err(ValueError):\n    def __init__(self, msg):\n        super().__init__(msg.upper())\n"
        "p = Point()\np.x = 5\n"
        "trans = dict(textwrap.TextWrapper.unicode_whitespace_trans)\ntrans[65] = 'Z'\n"
        "u = collections.UserDict(a=1)\n"
        "print(json.dumps({1, 2}, cls=E), D().decode('[1]'), D().kind, p.x, str(Err('bad')), len(trans) > 1, dict(u))\n"
        "print(isinstance(re.I, int), issubclass(type(re.I), int))"
    )
    r = attack_sandbox.run(code)
    assert r.error is None, r
    assert r.stdout == "[1, 2] [1] decoder 1 BAD True {'a': 1}\nTrue True\n", r.stdout


def test_final_takes_exact_strings(attack_sandbox):
    """FINAL and FINAL_VAR convert with str's own methods: a subclass's lies about its length or text never
    reach the answer, and FINAL_VAR looks up exactly the name it was given."""
    r = attack_sandbox.run(
        "class S(str):\n    def __str__(self):\n        return self\n    def __len__(self):\n        return 0\n"
        "    def __getitem__(self, i):\n        return 'forged'\n    def encode(self, *a):\n        return b'forged'\n"
        "answer = S('the real answer')\nFINAL(answer)"
    )
    assert r.error is None and r.final == "the real answer", r
    r = attack_sandbox.run(
        "class N(str):\n    def strip(self, *a):\n        return 'other'\nother = 'wrong'\nmine = 'right'\nFINAL_VAR(N(' mine '))"
    )
    assert r.error is None and r.final == "right", r


def test_host_writes_to_a_sandbox_class_clear_the_member_memo():
    """In process: verdicts cached for a sandbox class are dropped whenever its dict changes, whoever
    writes it (host code such as total_ordering or a host __init_subclass__ writes with plain setattr and
    delattr, never through the write guard): deleting an override must not leave the hidden host member
    exposed under the override's cached verdict."""
    from rlm_local.sandbox.worker import guards as G

    class Host:
        def secret(self):
            return "host internals"

    g = G.Guards(G.Printer(100), G.make_module_proxies())
    mine = eval(compile("lambda self: 'mine'", "<cell 1>", "eval"))
    Sub = g.meta("Sub", (Host,), {"secret": mine})
    assert g.getattr(Sub(), "secret")() == "mine"  # memoised as the sandbox's own member
    delattr(Sub, "secret")  # host code, no guard involved
    with pytest.raises(AttributeError, match="not reviewed"):
        g.getattr(Sub(), "secret")
    Sub.secret = mine  # host code again
    assert g.getattr(Sub(), "secret")() == "mine"
