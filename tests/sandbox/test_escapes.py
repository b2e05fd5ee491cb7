"""Escape suite: each attack must fail with an error, print no ESCAPED marker, never reveal the secret
planted in the parent, and leave the session usable. Attacks follow the published RestrictedPython
advisories and the escapes reproduced in shared/notes/sandbox.md."""

from __future__ import annotations

import pytest

from .conftest import SECRET_ENV, run_attack

# Each cell raises (or fails to compile) when the sandbox holds; on success it prints ESCAPED and tries
# to read the planted secret with whatever it reached.
ATTACKS = {
    # dunder and subclass walks
    "dunder_class_walk": "().__class__.__bases__[0].__subclasses__()",
    "getattr_class": "c = getattr(getattr((), '__class__'), '__base__')\nprint('ESCAPED', c)",
    "getattr_subclasses": "print('ESCAPED', getattr(object, '__subclasses__')())",
    "computed_name": "n = '_' * 2 + 'globals' + '_' * 2\nprint('ESCAPED', getattr(FINAL, n))",
    "computed_join": "print('ESCAPED', getattr(len, ''.join(['__', 'self', '__'])))",
    "str_subclass_name": (
        "class S(str):\n    def startswith(self, *a):\n        return False\n"
        "print('ESCAPED', getattr((), S('__class__')))"
    ),
    "str_subclass_eq": (
        "class S(str):\n    def __eq__(self, o):\n        return False\n"
        "    def __hash__(self):\n        return 1\n"
        "print('ESCAPED', getattr(FINAL, S('__globals__')))"
    ),
    "hasattr_probe_then_get": "hasattr(FINAL, '__globals__') and print('ESCAPED')\nprint(getattr(FINAL, '__globals__'))",
    # str.format / format_map and str-like objects
    "format_globals": "def f():\n    pass\nprint('{0.__globals__}'.format(f))",
    "format_class_chain": "print('{0.__class__.__base__.__subclasses__}'.format(1))",
    "format_map": "print('{x.__class__.__mro__}'.format_map({'x': 1}))",
    "format_unbound": "print(str.format('{0.__class__.__base__}', 1))",
    "format_nested_spec": "print('{0:{1.__init__}}'.format(1, 2))",
    "format_getitem_globals": "def f():\n    pass\nprint('{0.__globals__[__builtins__]}'.format(f))",
    "userstring_format": (
        "import collections\nprint('ESCAPED', collections.UserString('{0.__globals__}').format(FINAL))"
    ),
    "str_subclass_format": "class S(str):\n    pass\nprint('ESCAPED', S('{0.__class__}').format(1))",
    "string_formatter": "import string\nprint('ESCAPED', string.Formatter().format('{0.__class__}', 1))",
    "from_string_formatter": "from string import Formatter\nprint('ESCAPED', Formatter)",
    # module-graph walks and from-imports of module attributes
    "re_enum_sys": "import re\nprint('ESCAPED', re.enum.sys)",
    "from_re_import_enum": "from re import enum\nprint('ESCAPED', enum)",
    "json_codecs_builtins": "import json\nb = json.codecs.builtins\nprint('ESCAPED', b.open('{path}').read())",
    "statistics_sys": "import statistics\nprint('ESCAPED', statistics.sys.modules['os'].environ['{env}'])",
    "datetime_sys": "from datetime import sys\nprint('ESCAPED', sys)",
    "textwrap_re": "import textwrap\nprint('ESCAPED', textwrap.re)",
    "getattr_module_attr": "import random\nprint('ESCAPED', getattr(random, '_os'))",
    "walk_two_levels": (
        "import re, json, collections, functools, statistics, string, textwrap, datetime, random\n"
        "for mod in [re, json, collections, functools, statistics, string, textwrap, datetime, random]:\n"
        "    for a in dir(mod):\n"
        "        try:\n            o = getattr(mod, a)\n        except Exception:\n            continue\n"
        "        for b in dir(o):\n"
        "            try:\n                p = getattr(o, b)\n            except Exception:\n                continue\n"
        "            items = list(p.values()) if isinstance(p, dict) else list(p) if isinstance(p, (list, tuple)) else []\n"
        "            for q in [p] + items:\n"
        "                if type(q).__name__ in ('module', 'frame', 'code', 'traceback', 'PyCapsule'):\n"
        "                    print('ESCAPED', a, b)\n"
        "raise RuntimeError('walk finished')"
    ),
    "typing_get_type_hints": "import typing\nprint('ESCAPED', typing.get_type_hints)",
    "singledispatch": "from functools import singledispatch\nprint('ESCAPED', singledispatch)",
    "datetime_capsule": "import datetime\nprint('ESCAPED', datetime.datetime_CAPI)",
    # forbidden modules and builtins
    "import_os": "import os\nprint('ESCAPED', os.environ.get('{env}'))",
    "import_sys": "import sys\nprint('ESCAPED', sys.modules)",
    "import_operator": "from operator import attrgetter\nprint('ESCAPED', attrgetter('__class__')(1))",
    "import_importlib": "import importlib\nprint('ESCAPED', importlib.import_module('os'))",
    "import_submodule": "import collections.abc\nprint('ESCAPED', collections.abc)",
    "dunder_import": "print('ESCAPED', __import__('os'))",
    "open_file": "print('ESCAPED', open('{path}').read())",
    "eval_exec": "eval(\"__import__('os')\")",
    "compile_builtin": "print('ESCAPED', compile('1', 'x', 'eval'))",
    "globals_vars": "print('ESCAPED', globals()['__builtins__'])",
    # generator and traceback frames
    "generator_frame": "g = (i for i in [1])\nprint('ESCAPED', g.gi_frame.f_back.f_globals)",
    "generator_frame_getattr": "g = (i for i in [1])\nf = getattr(g, 'gi_frame')\nprint('ESCAPED', f)",
    "traceback_frame": (
        "try:\n    1 / 0\nexcept Exception as e:\n    tb = getattr(e, '__traceback__')\n"
        "    print('ESCAPED', tb.tb_frame)"
    ),
    "exc_tb_frame_attr": "try:\n    1 / 0\nexcept Exception as e:\n    print('ESCAPED', getattr(e.with_traceback(None), 'tb_frame'))",
    "attributeerror_obj": (
        "import re\ntry:\n    re.nonexistent\nexcept AttributeError as e:\n    print('ESCAPED', e.obj)"
    ),
    "except_star": "try:\n    pass\nexcept* ValueError:\n    pass",
    # guard-name shadowing
    "posonly_shadow": "def f(_getattr_, /):\n    return _getattr_\nprint('ESCAPED', f(getattr))",
    "lambda_shadow": "g = lambda _getattr_=None: 1",
    "assign_guard": "_getattr_ = lambda o, n: 1",
    "global_guard": "def f():\n    global _write_\n    _write_ = 1\nf()",
    "match_class_pattern": "match FINAL:\n    case object(__globals__=g):\n        print('ESCAPED', g)",
    # metaclass and type tricks
    "metaclass_kw": "class A(metaclass=type):\n    pass",
    "type_three_args": "T = type('T', (), {'x': 1})\nprint('ESCAPED', T)",
    "type_of_type": "meta = type(type(1))\nT = meta('T', (), {})\nprint('ESCAPED', T)",
    "sandbox_metaclass": "class A:\n    pass\nM = type(A)\nprint('ESCAPED', M('B', (), {'__getattr__': 1}))",
    "dunder_getattr_method": "class A:\n    def __getattribute__(self, n):\n        return 1",
    "init_subclass": "class A:\n    def __init_subclass__(cls):\n        pass",
    "super_reinit_module": "import re\nsuper(type(re), re).__init__('re', {'x': 1})\nprint('ESCAPED', re.x)",
    "super_reinit_host_obj": "import random\nr = random.Random(1)\nsuper(type(r), r).__init__(2)\nprint('ESCAPED')",
    # functools / map with getattr
    "reduce_getattr": "import functools\nprint('ESCAPED', functools.reduce(getattr, ['__class__', '__base__'], ()))",
    "map_getattr": "print('ESCAPED', list(map(getattr, [FINAL], ['__globals__'])))",
    "partial_getattr": "import functools\nprint('ESCAPED', functools.partial(getattr, FINAL)('__closure__'))",
    "sorted_key_getattr": "print('ESCAPED', sorted([FINAL], key=lambda f: getattr(f, '__code__')))",
    # host-object attribute leaks
    "stub_globals": "print('ESCAPED', llm_query.__globals__)",
    "stub_closure": "print('ESCAPED', getattr(llm_query, '__closure__'))",
    "print_self": "p = print\nprint('ESCAPED', getattr(p, '__self__'))",
    "final_var_dunder": "FINAL_VAR('__builtins__')",
    # writes into modules and host classes
    "write_module_attr": "import re\nre.compile = None\nprint('ESCAPED')",
    "setattr_module": "import json\nsetattr(json, 'dumps', None)\nprint('ESCAPED')",
    "write_host_class": "import textwrap\ntextwrap.TextWrapper.width = 1\nprint('ESCAPED')",
    "write_builtin_type": "setattr(str, 'upper', None)\nprint('ESCAPED')",
    "setattr_dunder_on_own_class": "class A:\n    pass\nsetattr(A, '__getattr__', lambda s, n: 1)\nprint('ESCAPED')",
    # process control
    "system_exit": "raise SystemExit(0)",
    "keyboard_interrupt": "raise KeyboardInterrupt",
    "exit_builtin": "exit(0)",
}
ATTACKS["walk_all_modules"] = (
    "import re, json, math, collections, itertools, functools, statistics, string, textwrap, datetime\n"
    "import heapq, bisect, random, typing\n"
    "for mod in [re, json, math, collections, itertools, functools, statistics, string, textwrap,\n"
    "            datetime, heapq, bisect, random, typing]:\n"
    "    for a in dir(mod):\n"
    "        o = getattr(mod, a)\n"
    "        if 'module' in repr(type(o)).lower() or 'capsule' in repr(type(o)).lower():\n"
    "            print('ESCAPED', a)\n"
    "raise RuntimeError('walk finished')"
)


@pytest.fixture
def sandbox(attack_sandbox):
    return attack_sandbox


def test_suite_has_forty_attacks():
    assert len(ATTACKS) >= 40


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_blocked(name, sandbox, secret_file):
    run_attack(sandbox, ATTACKS[name], secret_file)
    assert sandbox.run("print(6 * 7)").stdout == "42\n"  # the session lives on


def test_worker_cannot_see_parent_secrets_even_if_escaped(sandbox, secret_file):
    """The OS layer alone: the worker's environment is clean and it runs as a user that cannot read the
    parent's files (checked from the parent, since the language layer blocks every way to look)."""
    import os

    pid = sandbox.pid
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = f.read()
    assert SECRET_ENV.encode() not in env and b"PATH=" not in env
    if os.geteuid() == 0:
        assert "session-uid" in sandbox.hardening
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert all(int(u) != 0 for u in uids)


def test_hardening_applied(sandbox):
    assert {"rlimits", "no-new-privs"} <= set(sandbox.hardening)


def test_host_class_state_is_read_only(make_sandbox):
    """A container held by a host class reachable from an allowed module is read-only in the sandbox
    (it was writable before round 3, and poisoned TextWrapper for the rest of the session)."""
    sb = make_sandbox()
    r = sb.run("import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans[65] = 'Z'\n")
    assert r.error and "TypeError" in r.error, r
    probe = "import textwrap\nprint(textwrap.TextWrapper.unicode_whitespace_trans.get(65))"
    assert sb.run(probe).stdout == "None\n"


OS_PROBE = r"""
import os, sys, socket
sys.path.insert(0, sys.argv[1])
import hardening
applied = hardening.apply(256, 0x5A000001, 16)
print("applied", ",".join(applied))
def attempt(name, fn):
    try:
        fn()
        print(name, "ALLOWED")
    except OSError as e:
        print(name, "blocked", e.errno)
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("write_file", lambda: open("/tmp/rlm-probe-%d" % os.getpid(), "w"))
attempt("read_secret", lambda: open(sys.argv[2]).read())
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
attempt("read_file", lambda: open("/etc/hostname").read())
attempt("list_dir", lambda: os.listdir("/"))
"""


def test_os_layer_blocks_network_exec_writes_and_secrets(secret_file):
    """Defence in depth, checked without the language layer: a process hardened like a worker cannot
    open sockets, exec programs, write files, signal other processes, or (when the parent is root)
    read a file only the parent can read."""
    import os
    import subprocess
    import sys

    here = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "rlm_local", "sandbox", "worker"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", OS_PROBE, here, secret_file], capture_output=True, text=True, env={}, timeout=30
    ).stdout
    applied = out.splitlines()[0].split()[1].split(",")
    results = dict(line.split()[:2] for line in out.splitlines()[1:])
    assert SECRET_ENV not in out and "s3cr3t" not in out
    if "seccomp" in applied:
        assert results["socket"] == results["exec"] == results["write_file"] == "blocked"
        assert results["signal_parent"] == "blocked"
    elif "netns" in applied:
        assert results["socket"] in ("blocked", "ALLOWED")  # a socket in an empty namespace reaches nothing
    if "landlock" in applied:
        assert results["read_file"] == results["list_dir"] == results["read_secret"] == "blocked"
    if os.geteuid() == 0:
        assert "session-uid" in applied and results["read_secret"] == "blocked"


def test_class_attribute_reads_stay_harmless(sandbox):
    r = sandbox.run("class A:\n    'doc'\na = A()\nprint(a.__class__.__name__, A.__doc__, (1).__class__ is int)")
    assert r.stdout == "A doc True\n", r
    r = sandbox.run("meta = A.__class__\nmeta('B', (), {})")
    assert r.error and "3 arguments" in r.error
    r = sandbox.run("print(getattr(a, '__class__').__name__)\nprint(len.__class__)")
    assert r.error is None
