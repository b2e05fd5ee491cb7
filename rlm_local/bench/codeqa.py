"""``codeqa``: multiple-choice questions over real source code already on the machine.

The context is whole Python files (``### FILE: <path>`` then the source) drawn, seeded, from a directory:
the running interpreter's standard library unless the user names another (``source=``). Questions come
from static analysis (``ast``): which file defines a top-level function, which class defines a method.
Only names defined exactly once in the context are asked, so each question has one right option.
Gold: the option letter. Score: accuracy (the first standalone A-D after the last ':').
Items are deterministic for a given directory content (the stdlib of one Python version).
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sys
import sysconfig
from pathlib import Path

from . import scoring
from .items import CHARS_PER_TOKEN, BenchError, Item, item_id, item_seed

NAME = "codeqa"
LETTERS = "ABCD"
HEADER = "### FILE: "


def default_source() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=8)  # a sweep generates many items from one directory: list it once
def _candidates(root: Path) -> tuple[tuple[str, int], ...]:
    """(relative path, size) of every .py file under root, sorted so that the order is reproducible."""
    out: list[tuple[str, int]] = []
    for path in sorted(root.rglob("*.py")):
        # Test suites repeat the same method names everywhere; they make few unambiguous questions.
        if {"site-packages", "test", "tests", "idle_test"} & set(path.parts) or not path.is_file():
            continue
        out.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return tuple(out)


def _pick_files(rng: random.Random, root: Path, n_chars: int) -> list[tuple[str, str, ast.Module]]:
    files = list(_candidates(root))
    if not files:
        raise BenchError(f"codeqa: no Python files under {root}")
    if sum(size for _, size in files) < n_chars:
        raise BenchError(
            f"codeqa: {root} holds only {sum(s for _, s in files):,} characters of Python, less than "
            f"the {n_chars:,} asked for; pick a shorter length or a larger --source"
        )
    rng.shuffle(files)
    chosen: list[tuple[str, str, ast.Module]] = []
    total = 0
    for rel, size in files:
        if total >= n_chars * 0.9 and len(chosen) >= 3:  # three files at least: options to choose from
            break
        if total + size > n_chars * 1.2:
            continue  # whole files only: skip one that overshoots by far
        try:
            text = (root / rel).read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError, OSError):
            continue
        if not any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body):
            continue  # nothing to ask about
        chosen.append((rel, text, tree))
        total += len(text) + len(HEADER) + len(rel) + 2
    if total < n_chars * 0.5:
        raise BenchError(f"codeqa: could not fill {n_chars:,} characters from {root} with whole files")
    return chosen


def _definitions(files: list[tuple[str, str, ast.Module]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Top-level functions -> files defining them; methods -> classes defining them (top-level classes)."""
    funcs: dict[str, list[str]] = {}
    methods: dict[str, list[str]] = {}
    fn_types = (ast.FunctionDef, ast.AsyncFunctionDef)
    for rel, _, tree in files:
        for node in tree.body:
            if isinstance(node, fn_types):
                funcs.setdefault(node.name, []).append(rel)
            elif isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, fn_types):
                        methods.setdefault(sub.name, []).append(node.name)
    return funcs, methods


class _TextIndex:
    """Where names are def'd in the raw text, and the class and file lines above each line."""

    def __init__(self, context: str) -> None:
        self.lines = context.split("\n")
        self.defs: dict[str, list[int]] = {}
        self.cls_above: list[str | None] = []
        self.file_above: list[str | None] = []
        cls = path = None
        for i, line in enumerate(self.lines):
            self.cls_above.append(cls)
            self.file_above.append(path)
            if m := re.match(r"\s*(?:async\s+)?def (\w+)\(", line):
                self.defs.setdefault(m.group(1), []).append(i)
            if m := re.match(r"class (\w+)", line):
                cls = m.group(1)
            if line.startswith(HEADER):
                path = line[len(HEADER) :]

    def agrees(self, kind: str, name: str, gold: str) -> bool:
        """The question reads the same in the raw text: the name is def'd once, and the file header (or, for
        a method, the nearest class line) above it is the gold. Guards against defs in strings or odd layouts."""
        defs = self.defs.get(name, [])
        if len(defs) != 1:
            return False
        if kind == "func_file":
            return not self.lines[defs[0]][0].isspace() and self.file_above[defs[0]] == gold
        return self.cls_above[defs[0]] == gold


def make_item(length_tokens: int, index: int, seed: int, source: str | Path | None = None) -> Item:
    root = Path(source) if source else default_source()
    s = item_seed(seed, length_tokens, index)
    rng = random.Random(s)
    files = _pick_files(rng, root, length_tokens * CHARS_PER_TOKEN)
    context = "\n".join(f"{HEADER}{rel}\n{text}" for rel, text, _ in files)
    funcs, methods = _definitions(files)
    file_names = [rel for rel, _, _ in files]
    classes = sorted({c for cs in methods.values() for c in cs})
    pools = {
        "func_file": ([n for n, fs in sorted(funcs.items()) if len(fs) == 1], funcs, file_names),
        "method_class": ([n for n, cs in sorted(methods.items()) if len(cs) == 1 and n not in funcs], methods, classes),
    }
    kinds = ["func_file", "method_class"] if index % 2 == 0 else ["method_class", "func_file"]
    index_ = _TextIndex(context)
    for kind in kinds:
        names, owners, universe = pools[kind]
        rng.shuffle(names)
        for name in names[:200]:
            gold_owner = owners[name][0]
            if len(universe) < 2 or not index_.agrees(kind, name, gold_owner):
                continue
            others = rng.sample([u for u in universe if u != gold_owner], min(3, len(universe) - 1))
            options = others + [gold_owner]
            rng.shuffle(options)
            letter = LETTERS[options.index(gold_owner)]
            what = (
                f"Which file defines the top-level function `{name}`?"
                if kind == "func_file"
                else f"Which class defines the method `{name}`?"
            )
            listed = " ".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
            question = (
                f"The text is Python source code, file by file (each file starts with a '{HEADER}<path>' "
                f"line). {what} Options: {listed}. Answer as 'Answer: <letter>'."
            )
            return Item(
                family=NAME,
                item_id=item_id(NAME, length_tokens, index, seed),
                seed=s,
                length_tokens=length_tokens,
                length_chars=len(context),
                context=context,
                question=question,
                gold=letter,
                meta={
                    "kind": kind,
                    "name": name,
                    "options": options,
                    "source": str(root),
                    "python": sys.version.split()[0],
                    "files": file_names,
                },
            )
    raise BenchError(
        f"codeqa: no unambiguous question in {len(files)} file(s) at {length_tokens:,} tokens "
        f"(seed {s}); try a longer length"
    )


def generate(length_tokens: int, n: int, seed: int = 0, source: str | Path | None = None, **_: object) -> list[Item]:
    return [make_item(length_tokens, i, seed, source) for i in range(n)]


def score(item: Item, answer: str) -> float:
    return 1.0 if scoring.choice_letter(answer, LETTERS) == item.gold else 0.0


def oracle_code(item: Item) -> str:
    m = item.meta
    name, options = m["name"], m["options"]
    if m["kind"] == "func_file":
        find = (
            f"owner = None\nfor part in context.split({HEADER!r})[1:]:\n"
            f"    path, _, body = part.partition('\\n')\n"
            f"    if re.search(r'^(?:async\\s+)?def {name}\\(', body, re.M):\n        owner = path\n"
        )
    else:
        find = (
            f"owner = None\ncls = None\nfor line in context.split('\\n'):\n"
            f"    m = re.match(r'class (\\w+)', line)\n    if m:\n        cls = m.group(1)\n"
            f"    if re.match(r'\\s+(?:async\\s+)?def {name}\\(', line):\n        owner = cls\n"
        )
    return f"import re\n{find}options = {options!r}\nFINAL('Answer: ' + {LETTERS!r}[options.index(owner)])"


def oracle_sub(prompt: str) -> str | None:
    return None
