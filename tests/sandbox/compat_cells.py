"""Realistic model-written REPL cells (in order, one session) for the compatibility suite."""

CONTEXT = "\n".join(
    [
        f"## Section {i}: {'Revenue' if i % 3 == 0 else 'Operations'} report\n"
        f"In {2015 + i} the company earned {1000 + 37 * i} thousand dollars; contact team{i}@example.com. "
        f"The revenue grew by {i % 7} percent while costs fell. Meeting on 2023-{(i % 12) + 1:02d}-15.\n"
        for i in range(40)
    ]
)

CELLS = [
    "print(type(context), len(context))",
    "print(context[:120])",
    "lines = context.split('\\n')\nprint(len(lines))\nlines[:2]",
    "import re\nheaders = re.findall(r'^## (.+)$', context, re.M)\nprint(len(headers), headers[:3])",
    "chunk_size = 500\nchunks = [context[i:i + chunk_size] for i in range(0, len(context), chunk_size)]\nlen(chunks)",
    "for i, c in enumerate(chunks[:3]):\n    print(i, len(c), c[:30].replace('\\n', ' '))",
    "answers = llm_query_batched([f'Summarize: {c[:50]}' for c in chunks[:4]])\nfor a in answers:\n    print(a)",
    "summary = llm_query(f'What is the topic? {context[:60]}')\nprint(summary)",
    "sub = rlm_query('Which years are mentioned?', context=chunks[0])\nsub",
    (
        "counts = {}\nfor w in context.lower().split():\n    w = w.strip('.,;:!?')\n"
        "    counts[w] = counts.get(w, 0) + 1\nsorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]"
    ),
    "from collections import Counter\nc = Counter(re.findall(r'\\w+', context.lower()))\nc.most_common(4)",
    "def find_all(pattern, text=context):\n    return [m.start() for m in re.finditer(pattern, text)]\nfind_all('revenue')[:5]",
    "import json\ndata = {'sections': headers[:2], 'n': len(lines)}\nprint(json.dumps(data, indent=2))",
    (
        "class Chunk:\n    def __init__(self, idx, text):\n        self.idx = idx\n        self.text = text\n"
        "    def __repr__(self):\n        return f'Chunk({self.idx}, {len(self.text)} chars)'\n"
        "    def __len__(self):\n        return len(self.text)\n"
        "objs = [Chunk(i, c) for i, c in enumerate(chunks[:3])]\nobjs"
    ),
    "sum(len(o) for o in objs), max(objs, key=len)",
    "freq = {}\nfor ch in 'mississippi':\n    freq[ch] = freq.get(ch, 0)\n    freq[ch] += 1\nfreq",
    (
        "class Tally:\n    def __init__(self):\n        self.n = 0\n    def add(self, k=1):\n        self.n += k\n"
        "        return self\nt = Tally()\nt.add().add(5).n"
    ),
    (
        "def make_counter():\n    count = 0\n    def inc():\n        nonlocal count\n        count += 1\n"
        "        return count\n    return inc\ninc = make_counter()\ninc()\ninc()\nprint(inc())"
    ),
    "total: int = 0\nfor x in range(10):\n    total += x\ntotal",
    (
        "class Base:\n    def __init__(self, name):\n        self.name = name\n"
        "class Child(Base):\n    def __init__(self, name, age):\n        super().__init__(name)\n        self.age = age\n"
        "kid = Child('ann', 3)\nprint(kid.name, kid.age, isinstance(kid, Base))"
    ),
    "type(kid).__name__, type(3).__name__, type(kid) is Child",
    (
        "class Old(Base):\n    def __init__(self, name):\n        super(Old, self).__init__(name.upper())\n"
        "class D(dict):\n    def __init__(self):\n        super().__init__(a=1)\n"
        "Old('x').name, D(), D().__class__.__name__"
    ),
    "print('{} has {} lines'.format('doc', len(lines)))\n'{name}: {n:>5}|{n:<4}|'.format(name='x', n=3)",
    "'{0[0]} and {0[1]}'.format(['a', 'b']), '{k}'.format_map({'k': 'v'}), '{:.3f}'.format(2 / 3)",
    "f'{3.14159:.2f} {1234567:,} {0.25:.0%} {42:08b}'",
    "try:\n    int('abc')\nexcept ValueError as e:\n    print('bad:', e)",
    (
        "from datetime import datetime, timedelta, date\nd = datetime(2024, 1, 15)\n"
        "print(d.strftime('%Y-%m-%d %A'), (d + timedelta(days=30)).isoformat())"
    ),
    "datetime.strptime('2024-03-05', '%Y-%m-%d').weekday(), date(2024, 2, 29).toordinal()",
    "dates = re.findall(r'\\d{4}-\\d{2}-\\d{2}', context)\nsorted(set(dates))[:3]",
    "import math\nmath.sqrt(2), math.log(100, 10), math.ceil(len(context) / 1000), math.inf > 1e308",
    (
        "import statistics\nnums = [int(n) for n in re.findall(r'earned (\\d+)', context)]\n"
        "print(statistics.mean(nums), statistics.median(nums), round(statistics.stdev(nums), 3))"
    ),
    (
        "import itertools\nlist(itertools.islice(itertools.count(5, 3), 4)), list(itertools.combinations('abc', 2)),"
        " [k for k, g in itertools.groupby('aabbbc')]"
    ),
    (
        "from functools import reduce, lru_cache, partial\n@lru_cache(maxsize=None)\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(80), reduce(lambda a, b: a * b, range(1, 8)))"
    ),
    "base2 = partial(int, base=2)\nbase2('1011')",
    "import heapq\nheapq.nlargest(3, [5, 1, 9, 3, 7]), heapq.nsmallest(2, nums)",
    "import bisect\nbisect.bisect_left([1, 3, 5, 7], 4), bisect.bisect_right([1, 3, 3, 5], 3)",
    "import random\nrandom.seed(0)\n[random.randint(1, 100) for _ in range(3)], random.choice('abc')",
    "import textwrap\nprint(textwrap.fill('word ' * 20, width=30))\ntextwrap.shorten('a b c d e f g h', width=9)",
    "import string\nstring.ascii_lowercase[:5], string.capwords('hello world'), string.Template('$x!').substitute(x='hi')",
    "pairs = [('b', 2), ('a', 1), ('c', 3)]\nfor name, val in sorted(pairs):\n    print(name, val)",
    "sq = {n: n * n for n in range(6) if n % 2 == 0}\nevens = {n for n in range(10) if n % 2 == 0}\nsq, evens & {2, 3, 4}, sorted(evens - {0})",
    "def gen(n):\n    for i in range(n):\n        yield i * i\nlist(gen(5)), sum(x for x in gen(10))",
    "n = 0\nwhile True:\n    n += 1\n    if n * n > 200:\n        break\nn",
    (
        "names = ['x', 'y', 'z']\nfor i, (a, b) in enumerate(zip(names, reversed(names)), start=1):\n"
        "    print(i, a, b)\nany(n == 'y' for n in names), all(names), min(names, key=ord)"
    ),
    "'  Hello World  '.strip().lower().replace('world', 'there').title(), 'a,b,,c'.split(','), 'abc'[::-1]",
    "lst = list(range(10))\nlst[2:8:2], lst[-3:], lst[::-3]",
    (
        "def scale(values, factor=2, *, offset=0):\n    return [v * factor + offset for v in values]\n"
        "scale([1, 2]), scale([1, 2], 3, offset=1), scale(*[[4]], **{'factor': 5})"
    ),
    (
        "records = [{'name': 'a', 'score': 3}, {'name': 'b', 'score': 5}, {'name': 'c', 'score': 3}]\n"
        "for r in sorted(records, key=lambda r: (r['score'], r['name']), reverse=True):\n    print(r['name'], r['score'])"
    ),
    "print(*[1, 2, 3], sep=', ')\nprint('a', end='')\nprint('b')",
    (
        "buffer = []\nfor i, ch in enumerate(chunks[:3]):\n    buffer.append(f'chunk {i}: {ch.count(\"the\")}')\n"
        "print('\\n'.join(buffer))"
    ),
    "re.sub(r'\\d+', lambda m: str(int(m.group()) * 2), 'a1 b22 c333'), re.split(r'[;,]\\s*', 'a, b;c')",
    (
        "m = re.search(r'(?P<year>\\d{4})-(?P<month>\\d{2})', 'on 2023-07-04')\n"
        "m.group('year'), m.groupdict(), m.span(), bool(re.fullmatch(r'\\w+', 'abc'))"
    ),
    (
        "class ParseError(Exception):\n    pass\ntry:\n    raise ParseError('bad chunk')\n"
        "except ParseError as e:\n    print(type(e).__name__, e, isinstance(e, Exception))"
    ),
    "hasattr(objs[0], 'text'), getattr(objs[0], 'missing', None), isinstance(objs, list)",
    (
        'raw = \'{"answer": "42", "confidence": 0.9, "items": [1, 2]}\'\nparsed = json.loads(raw)\n'
        "parsed['answer'], parsed.get('missing', 'n/a'), json.dumps(parsed, sort_keys=True)"
    ),
    (
        "from collections import defaultdict, OrderedDict, deque, namedtuple\ngroups = defaultdict(list)\n"
        "for w in ['apple', 'avocado', 'banana', 'blueberry', 'cherry']:\n    groups[w[0]].append(w)\ndict(groups)"
    ),
    "Point = namedtuple('Point', 'x y')\np = Point(1, 2)\np.x + p.y, p",
    "dq = deque([1, 2, 3])\ndq.rotate(1)\nod = OrderedDict(a=1, b=2)\nod.move_to_end('a')\nlist(dq), list(od)",
    "(Counter('abca') + Counter('bcd')).most_common(2)",
    (
        "class Timer:\n    def __enter__(self):\n        print('enter')\n        return self\n"
        "    def __exit__(self, *exc):\n        print('exit')\n        return False\nwith Timer() as t:\n    print('inside')"
    ),
    (
        "class Rect:\n    def __init__(self, w, h):\n        self.w, self.h = w, h\n    @property\n"
        "    def area(self):\n        return self.w * self.h\n    @staticmethod\n    def unit():\n        return Rect(1, 1)\n"
        "    @classmethod\n    def square(cls, s):\n        return cls(s, s)\n"
        "    def __eq__(self, other):\n        return self.area == other.area\n"
        "Rect(2, 3).area, Rect.unit().area, Rect.square(3).area, Rect(1, 4) == Rect(2, 2)"
    ),
    "a, b = 1, 2\na, b = b, a\nfirst, *rest = [1, 2, 3]\nprint(a, b, first, rest)",
    "results = []\ndef record(x):\n    global results\n    results = results + [x]\nrecord(1)\nrecord(2)\nresults",
    "list(map(str.upper, ['a', 'b'])), list(filter(None, [0, 1, '', 'x'])), sorted('bca')",
    "if (n_lines := len(lines)) > 10:\n    print('many lines', n_lines)",
    "x = 5\n'big' if x > 3 else 'small', 1 < x < 10, x if x else None",
    "grid = [[r * 3 + c for c in range(3)] for r in range(3)]\n[list(col) for col in zip(*grid)]",
    "'%s is %d' % ('x', 3), '%(a)s-%(b).1f' % {'a': 1, 'b': 2.25}, ', '.join(str(i) for i in range(4))",
    "dict(sorted(freq.items(), key=lambda kv: kv[1], reverse=True))",
    "int('1f', 16), hex(255), bin(5), round(2.675, 2), divmod(17, 5), abs(-3), pow(2, 10, 1000)",
    "frozenset([1, 2]) | {3}, {c for c in 'hello'} == set('hello'), len(set(dates))",
    "print({'a': [1, {'b': None}], 'c': (1,)})\nNone",
    "d = {'a': 1, 'b': 2, 'c': 3}\ndel d['a']\nlst = [0, 1, 2, 3, 4]\ndel lst[1:3]\nd, lst",
    "lst[1:3] = [9, 9]\nlst[0] += 5\nlst",
    "index = {}\nfor w in ['ant', 'bee', 'asp']:\n    index.setdefault(w[0], []).append(w)\nindex",
    "acc = []\nacc += [1]\nacc += (2, 3)\nword = 'ab'\nword *= 2\nacc, word",
    "[ord(ch) for ch in 'AZ'], ''.join(chr(ord('a') + i) for i in range(5))",
    (
        "def safe_div(a, b):\n    try:\n        r = a / b\n    except ZeroDivisionError:\n        return 'inf'\n"
        "    else:\n        return r\n    finally:\n        print('checked', a, b)\nsafe_div(1, 0), safe_div(4, 2)"
    ),
    (
        "from typing import List, Dict, Optional\ndef stats(xs: List[int], label: Optional[str] = None) -> Dict[str, int]:\n"
        "    return {'n': len(xs), 'sum': sum(xs)}\nstats([1, 2, 3])"
    ),
    "sections = {}\nfor h in headers[:5]:\n    kind = h.split(': ')[1].split()[0]\n    sections[kind] = sections.get(kind, 0) + 1\nsections",
    "final_answer = f'The document has {len(headers)} sections and {len(lines)} lines'\nFINAL_VAR('final_answer')",
    "FINAL(final_answer.upper())\nprint('after final')",
]
