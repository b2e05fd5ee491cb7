"""The REPL toolkit: a few vetted helpers for the moves long-document code makes, and the root-prompt text
that teaches them with one short worked example per task shape (find and verify, classify and count,
compare groups).

``SOURCE`` is ordinary model-level Python: it runs inside the sandbox, compiled by the same policy and under
the same guards as any cell (it is no more trusted than the model's code), at the start of every REPL
session when the ``toolkit`` lever is on. Helpers check their arguments and raise a clear TypeError or
ValueError inside the cell, never anything that could upset the worker. ``ask_each`` delegates: it sends
one batch of sub-calls through ``llm_query_batched`` (identical items asked once), so a per-item judgement
costs one scheduler submission, batched on the engine.
"""

from __future__ import annotations

NAMES = ("search", "chunks", "ask_each", "count", "vote", "section_of")

SOURCE = r'''
import re as toolkit_re
import collections as toolkit_collections


def toolkit_text(text, name):
    if text is None:
        text = context
    if isinstance(text, dict):
        text = "\n\n".join(str(v) for v in text.values())
    if isinstance(text, (list, tuple)):
        text = "\n".join(str(t) for t in text)
    if not isinstance(text, str):
        raise TypeError(name + ": expected text (a str), got " + type(text).__name__)
    return text


class SearchHits(list):
    """search()'s hits: a plain list of {"line", "text"} dicts that echoes as a short summary (the hits were
    printed already)."""

    def __repr__(self):
        return "<" + str(len(self)) + " hits: a list of {'line': n, 'text': ...}>"


def search(phrase, text=None, window=1, max_hits=10, regex=False, ignore_case=True):
    """The lines of `text` (default: the context) containing `phrase`, case-insensitive; each hit is printed
    with its line number and `window` lines around it. Returns [{"line": n, "text": the line}]."""
    if isinstance(phrase, str) and isinstance(text, str) and len(phrase) > 200 and len(text) <= 200:
        phrase, text = text, phrase  # search(context, "key"): the arguments the other way round
    if not isinstance(phrase, str) or not phrase:
        raise TypeError("search(phrase, text=None, window=1, max_hits=10, regex=False): phrase must be a non-empty str")
    if not isinstance(window, int) or window < 0 or not isinstance(max_hits, int) or max_hits < 1:
        raise ValueError("search: window must be an int >= 0 and max_hits an int >= 1")
    source = toolkit_text(text, "search")
    lines = source.split("\n")
    try:
        rx = toolkit_re.compile(phrase if regex else toolkit_re.escape(phrase), toolkit_re.IGNORECASE if ignore_case else 0)
    except toolkit_re.error as exc:
        raise ValueError("search: bad regex " + repr(phrase) + ": " + str(exc) + " (regex=False searches plain text)")
    hits = SearchHits()
    total = 0
    for number, line in enumerate(lines, 1):
        if rx.search(line):
            total += 1
            if len(hits) < max_hits:
                hits.append({"line": number, "text": line})
    shown = set()
    for hit in hits:
        for number in range(max(1, hit["line"] - window), min(len(lines), hit["line"] + window) + 1):
            if number not in shown:
                shown.add(number)
                mark = ">" if number == hit["line"] else " "
                line = lines[number - 1]
                print("L" + str(number) + mark + " " + (line if len(line) <= 400 else line[:400] + " ..."))
    if total > len(hits):
        print("... " + str(total - len(hits)) + " more lines match (raise max_hits, or search a longer phrase)")
    if total > 1:
        print("(" + str(total) + " lines match: use the one about exactly what the question asks)")
    if not total:
        hint = "" if regex else toolkit_shorter(phrase, source, ignore_case)
        print("no line contains " + repr(phrase) + (" (case-insensitive)" if ignore_case else "") + hint)
    return hits


def toolkit_shorter(phrase, text, ignore_case):
    """For a plain phrase of several words that matched nothing: the run of its words found the fewest times
    (the most specific; the longer on a tie), as a hint ("; 'olive tunnel' occurs 2 times: search('olive
    tunnel')"), or ""."""
    words = phrase.split()
    if len(words) < 2:
        return ""
    if ignore_case:
        text = text.lower()
    best = None
    for size in range(len(words) - 1, 0, -1):
        for start in range(len(words) - size + 1):
            part = " ".join(words[start:start + size])
            n = text.count(part.lower() if ignore_case else part) if len(part) >= 4 else 0
            if n and (best is None or n < best[0]):
                best = (n, part)
    if best is None:
        return ""
    return "; " + repr(best[1]) + " occurs " + str(best[0]) + " time" + ("" if best[0] == 1 else "s") + ": search(" + repr(best[1]) + ")"


def chunks(text=None, size=4000, by="chars", overlap=0):
    """`text` (default: the context) in pieces of `size` characters (by="chars"), lines (by="lines") or about
    `size` tokens (by="tokens"); character pieces end at a line break when one is near."""
    text = toolkit_text(text, "chunks")
    if by not in ("chars", "lines", "tokens"):
        raise ValueError("chunks: by must be 'chars', 'lines' or 'tokens', not " + repr(by))
    if not isinstance(size, int) or size < 1 or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError("chunks: size must be an int >= 1 and overlap an int with 0 <= overlap < size")
    if by == "lines":
        lines = text.split("\n")
        return ["\n".join(lines[i:i + size]) for i in range(0, len(lines), size - overlap)]
    width = size * 4 if by == "tokens" else size
    back = overlap * 4 if by == "tokens" else overlap
    pieces = []
    start = 0
    while start < len(text):
        end = min(len(text), start + width)
        if end < len(text):
            cut = text.rfind("\n", start + width // 2, end)
            if cut > start:
                end = cut + 1
        pieces.append(text[start:end])
        if end >= len(text):
            break
        start = max(start + 1, end - back)
    return pieces


def toolkit_fewer(unique):
    """(separator, how many different items remain) when every item is a record with fields and keeping the
    field after the last separator leaves at most half as many different items; else None."""
    for sep in (" || ", " | ", "\t", " ; ", ": "):
        if all(sep in item for item in unique[:200]):
            n = len(set(item.rsplit(sep, 1)[-1] for item in unique))
            if n * 2 <= len(unique):
                return sep, n
    return None


class Choices(list):
    """ask_each()'s answers with `choices`: a plain list that echoes as how often each choice was answered
    (a long list printed whole is cut off and says less)."""

    def __repr__(self):
        if len(self) <= 20:
            return repr(list(self))
        counts = dict(toolkit_collections.Counter(self).most_common())
        return "<" + str(len(self)) + " answers, how often each: " + repr(counts) + ">"


def toolkit_words(text):
    return set(word for word in toolkit_re.findall(r"[a-z0-9]+", text.lower()) if len(word) >= 3)


def toolkit_copied(question, unique):
    """The item `question` was copied from: one containing it, or a short one holding 3/4 of its words."""
    words = toolkit_words(question)
    for item in unique:
        if len(question) >= 12 and question in item:
            return item
        if len(words) >= 4 and len(item) <= 3 * len(question) and len(words & toolkit_words(item)) * 4 >= 3 * len(words):
            return item
    return None


def ask_each(question, items, choices=None, max_items=500):
    """Ask a sub-model `question` about every item (a line, a record, a chunk) in one batch; the answers in
    order. Identical items are asked once. With `choices`, each answer is the choice it names, or None. More
    than `max_items` different items (each is a sub-call) is refused with what would make them fewer."""
    if not isinstance(question, str) or not question.strip():
        raise TypeError("ask_each(question, items, choices=None): question must be a non-empty str")
    if isinstance(items, (str, dict)) or not isinstance(items, (list, tuple)):
        raise TypeError("ask_each: items must be a list of str (split the text first, e.g. with chunks(...))")
    if not isinstance(max_items, int) or max_items < 1:
        raise ValueError("ask_each: max_items must be an int >= 1")
    items = [str(item) for item in items]
    asked = question.strip()
    unique = list(dict.fromkeys(items))
    copied = toolkit_copied(asked, unique)
    if copied is not None:
        example = "Which of the choices fits this item?" if choices is not None else "Which topic is this item about?"
        raise ValueError(
            "ask_each: the question looks copied from item " + str(items.index(copied) + 1) + " (" + repr(copied[:80])
            + "); pass one question that fits every item (what you want to know about each one), e.g. "
            + repr(example) + ", and the items separately"
        )
    if len(unique) > max_items:
        message = "ask_each: " + str(len(unique)) + " different items would be as many sub-calls (max_items=" + str(max_items) + "). "
        fewer = toolkit_fewer(unique)
        if fewer is not None:
            message += (
                "Keeping only the text after the last " + repr(fewer[0]) + " ([item.split(" + repr(fewer[0]) + ")[-1] for item in items]) "
                "leaves " + str(fewer[1]) + " different items (identical ones are asked once). "
            )
        raise ValueError(
            message + "Pass only the part of each record that needs reading, or filter the items first; "
            "raise max_items only if every one must be read."
        )
    if choices is not None:
        if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or not choices:
            raise TypeError("ask_each: choices must be a non-empty list of str")
        choices = [str(c) for c in choices]
        question = asked + "\nReply with exactly one of: " + ", ".join(choices) + ". Reply with that word only."
    answers = []
    for start in range(0, len(unique), 128):  # a call carries at most 256 prompts (the sandbox's limit)
        answers += llm_query_batched([question + "\n\nText: " + item for item in unique[start:start + 128]])
    if choices is not None:
        answers = [toolkit_pick(a, choices) for a in answers]
    by_item = dict(zip(unique, answers))
    out = [by_item[item] for item in items]
    return out if choices is None else Choices(out)


def toolkit_pick(answer, choices):
    low = str(answer).lower()
    best = None
    for choice in choices:
        m = toolkit_re.search(r"\b" + toolkit_re.escape(choice.lower()) + r"\b", low)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), choice)
    return None if best is None else best[1]


def count(items):
    """How often each item occurs, most common first (a dict)."""
    if isinstance(items, str):
        raise TypeError("count(items): items must be a list, not a str")
    return dict(toolkit_collections.Counter(items).most_common())


def vote(items):
    """The most common item (on a tie, the one seen first); None when there is none."""
    if isinstance(items, str):
        raise TypeError("vote(items): items must be a list, not a str")
    items = [item for item in items if item is not None]
    if not items:
        return None
    counts = toolkit_collections.Counter(items)
    top = max(counts.values())
    for item in items:
        if counts[item] == top:
            return item


def section_of(line, header, text=None):
    """The nearest line at or above line number `line` matching the regex `header` (a file, chapter or class
    header such as r"^### FILE: " or r"^class "), as (its line number, its text); (None, None) if none."""
    if isinstance(line, dict) and "line" in line:
        line = line["line"]  # a hit from search()
    if not isinstance(line, int) or line < 1:
        raise TypeError("section_of(line, header, text=None): line must be a line number (an int >= 1) or a search() hit")
    if not isinstance(header, str) or not header:
        raise TypeError("section_of: header must be a non-empty regex str")
    lines = toolkit_text(text, "section_of").split("\n")
    rx = toolkit_re.compile(header)
    for number in range(min(line, len(lines)), 0, -1):
        if rx.search(lines[number - 1]):
            return number, lines[number - 1]
    return None, None
'''

PROMPT = """Helpers already defined in the REPL (they print what they find; use them):
- `search(phrase, text=context, window=1, max_hits=10, regex=False)`: the lines containing `phrase`, case-insensitive, printed with line numbers (`>` marks the matching line) and the lines around them. Search for the exact distinctive phrase from the question; when nothing matches, it names the rarest part of the phrase that does. Returns [{"line": n, "text": ...}].
- `chunks(text=context, size=4000, by="chars")`: the text in pieces (by "chars", "lines" or "tokens").
- `ask_each(question, items, choices=None, max_items=500)`: asks a sub-model the same `question` about every item (a line, a record, a chunk) in one fast batch; returns the answers in order. `question` is about one item ("Which topic is this ticket about?"); each item's text is given after it. With `choices`, each answer is one of the choices (or None), and a long list of them prints as how often each occurs. Use it whenever each item needs reading or judgement: labels, relevance, topics. Pass only the part of each record that needs reading: identical items are asked once (more than `max_items` different ones are refused).
- `count(items)`: how often each item occurs, most common first. `vote(items)`: the most common item.
- `section_of(line, header_regex)`: the nearest line at or above `line` (a number or a search hit) matching `header_regex` (a file, chapter or class header): (line number, text).

Worked examples (other documents, the same moves):

Example 1, find and verify. QUESTION: What is the access code for the north gate?
```repl
hits = search("north gate")  # the name the question asks about, not its generic words ("access code")
```
Output of your code:
L4511  Visitors sign in at the desk.
L4512> The access code for the north gate is 4471.
L4513  The access code for the south gate is 9120.
```repl
FINAL("4471")
```

Example 2, classify and count. QUESTION: How many support tickets are about billing?
```repl
lines = context.split("\\n")
print(len(lines), lines[:2])
```
Output of your code:
1840 ['2024-03-02 | team 12 | My card was charged twice', '2024-03-02 | team 7 | The app crashes on start']
```repl
texts = [line.split(" | ")[2] for line in lines]
# The topics are not written in the text: a sub-model reads each ticket (one fast batch).
topics = ask_each("Which topic is this support ticket about?", texts, choices=["billing", "bug", "account", "other"])
print(count(topics))
```
Output of your code:
{'bug': 802, 'billing': 611, 'account': 300, 'other': 127}
```repl
FINAL("611")
```

Example 3, compare groups (same tickets). QUESTION: Which pairs of teams both have a billing ticket?
```repl
import itertools
topics_of = {}
for line, topic in zip(lines, topics):
    topics_of.setdefault(line.split(" | ")[1], set()).add(topic)
teams = sorted(t for t, found in topics_of.items() if "billing" in found)
pairs = list(itertools.combinations(teams, 2))
print(len(pairs), pairs[:3])
```
Output of your code:
3 [('team 12', 'team 3'), ('team 12', 'team 7'), ('team 3', 'team 7')]
```repl
FINAL(", ".join("(" + a + ", " + b + ")" for a, b in pairs))
```"""
