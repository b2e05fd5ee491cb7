"""``oolong``: OOLONG-synth style aggregation over every line of a long log.

Lines read ``Date: Mar 03, 2023 || User: 48213 || Instance: <a question>``; each instance's label (its TREC
coarse class, see instances.py) is never written, so answering needs every line read. Label mixes are
skewed per item and each user only asks some classes. Questions: most / least frequent label, count of
a label, label X against label Y, per-user and per-month counts.
Scoring (the paper's): the text after the last ':'; labels exact; numbers 0.75 ** |error|;
comparisons by phrase.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass

from . import scoring
from .instances import BY_LABEL, LABELS, label_of
from .items import CHARS_PER_TOKEN, Item, item_id, item_seed

NAME = "oolong"
# Each item's answer needs a judgement per record (its label is never written): an RLM should delegate it.
NEEDS_SUBCALLS = True
PHRASES = ("more common than", "less common than", "same frequency as")
KINDS = ("most", "least", "count", "compare", "user", "month")
PREAMBLE = (
    "Each line of the text is 'Date || User || Instance'. Every instance is a question with one hidden "
    "label, the kind of thing its answer is, one of: "
    + ", ".join(LABELS)
    + ". The labels are not written anywhere: infer each one by reading the instance. "
)
SUB_PROMPT = (
    "Which one of: " + ", ".join(LABELS) + " is the kind of answer this question asks for? "
    "Reply with the label only. Question: <<{}>>"
)


@dataclass(frozen=True)
class Record:
    date: dt.date
    user: int
    text: str
    label: str

    def line(self) -> str:
        return f"Date: {self.date.strftime('%b %d, %Y')} || User: {self.user} || Instance: {self.text}"


def make_records(rng: random.Random, n_chars: int, n_users: int) -> list[Record]:
    """Lines until ``n_chars``: a skewed label mix, users that each ask only 2 to 5 of the classes."""
    weights = [rng.uniform(0.2, 3.0) for _ in LABELS]
    users = rng.sample(range(10_000, 99_999), n_users)
    allowed = {u: set(rng.sample(LABELS, rng.randint(2, 5))) for u in users}
    start = dt.date(2022, 1, 1)
    records: list[Record] = []
    total = 0
    while total < n_chars:
        user = rng.choice(users)
        labs = [lab for lab in LABELS if lab in allowed[user]]
        label = rng.choices(labs, [weights[LABELS.index(lab)] for lab in labs])[0]
        rec = Record(start + dt.timedelta(days=rng.randrange(730)), user, rng.choice(BY_LABEL[label]), label)
        records.append(rec)
        total += len(rec.line()) + 1
    return records


def _unique_extreme(counts: Counter, pick: str) -> str | None:
    values = [counts.get(lab, 0) for lab in LABELS]
    target = max(values) if pick == "most" else min(values)
    winners = [lab for lab, v in zip(LABELS, values) if v == target]
    return winners[0] if len(winners) == 1 else None


def _question(rng: random.Random, kind: str, records: list[Record]) -> tuple[dict, str, dict] | None:
    """(spec, question, gold) for one question kind, or None when this data has no unambiguous answer."""
    counts = Counter(r.label for r in records)
    x, y = rng.sample(LABELS, 2)
    if kind in ("most", "least"):
        gold = _unique_extreme(counts, kind)
        if gold is None:
            return None
        word = "most" if kind == "most" else "least"
        return (
            {"kind": kind},
            f"Which label is the {word} frequent among all instances? Answer as 'Answer: <label>'.",
            {"type": "label", "value": gold},
        )
    if kind == "count":
        return (
            {"kind": kind, "label": x},
            f"How many instances have the label {x}? Answer as 'Answer: <number>'.",
            {"type": "number", "value": counts.get(x, 0)},
        )
    if kind == "compare":
        a, b = counts.get(x, 0), counts.get(y, 0)
        phrase = PHRASES[0] if a > b else PHRASES[1] if a < b else PHRASES[2]
        return (
            {"kind": kind, "label": x, "other": y},
            f"Is the label {x} more common than, less common than, or the same frequency as the label {y}? "
            f"Answer as 'Answer: {x} is <more common than | less common than | same frequency as> {y}'.",
            {"type": "phrase", "value": phrase},
        )
    if kind == "user":
        user = rng.choice(sorted({r.user for r in records}))
        value = sum(1 for r in records if r.user == user and r.label == x)
        return (
            {"kind": kind, "label": x, "user": user},
            f"How many instances from User {user} have the label {x}? Answer as 'Answer: <number>'.",
            {"type": "number", "value": value},
        )
    month = rng.choice(records).date.strftime("%b %Y")
    value = sum(1 for r in records if r.date.strftime("%b %Y") == month and r.label == x)
    return (
        {"kind": "month", "label": x, "month": month},
        f"How many instances dated in {month} have the label {x}? Answer as 'Answer: <number>'.",
        {"type": "number", "value": value},
    )


def make_item(length_tokens: int, index: int, seed: int, **_: object) -> Item:
    s = item_seed(seed, length_tokens, index)
    rng = random.Random(s)
    records = make_records(rng, length_tokens * CHARS_PER_TOKEN, n_users=rng.randint(8, 14))
    made = None
    for attempt in range(len(KINDS)):  # the index picks the kind; a tie moves on to the next kind
        made = _question(rng, KINDS[(index + attempt) % len(KINDS)], records)
        if made is not None:
            break
    assert made is not None  # "count" always has an answer
    spec, question, gold = made
    context = "\n".join(r.line() for r in records)
    return Item(
        family=NAME,
        item_id=item_id(NAME, length_tokens, index, seed),
        seed=s,
        length_tokens=length_tokens,
        length_chars=len(context),
        context=context,
        question=PREAMBLE + question,
        gold=gold,
        meta={"spec": spec, "lines": len(records)},
    )


def generate(length_tokens: int, n: int, seed: int = 0, **_: object) -> list[Item]:
    return [make_item(length_tokens, i, seed) for i in range(n)]


def score(item: Item, answer: str) -> float:
    gold = item.gold
    if gold["type"] == "label":
        return scoring.exact_label(answer, gold["value"])
    if gold["type"] == "number":
        return scoring.numeric(answer, gold["value"])
    return scoring.by_phrase(answer, gold["value"], PHRASES)


# ---- the oracle: correct code (classification by sub-calls, the rest by Python) -------------------------
ORACLE_READ = f"""import collections
rows = []
for line in context.split("\\n"):
    d, u, inst = line.split(" || ", 2)
    rows.append((d[len("Date: "):], int(u[len("User: "):]), inst[len("Instance: "):]))
labels = []
for i in range(0, len(rows), 200):
    labels += llm_query_batched([{SUB_PROMPT!r}.replace("{{}}", r[2]) for r in rows[i:i + 200]])
labels = [l.strip().lower() for l in labels]
counts = collections.Counter(labels)
"""


def oracle_code(item: Item) -> str:
    spec = item.meta["spec"]
    kind, x = spec["kind"], spec.get("label")
    if kind in ("most", "least"):
        pick = "max" if kind == "most" else "min"
        tail = f"FINAL('Answer: ' + {pick}({list(LABELS)!r}, key=lambda lab: counts[lab]))"
    elif kind == "count":
        tail = f"FINAL('Answer: ' + str(counts[{x!r}]))"
    elif kind == "compare":
        y = spec["other"]
        tail = (
            f"a, b = counts[{x!r}], counts[{y!r}]\n"
            f"p = {PHRASES[0]!r} if a > b else {PHRASES[1]!r} if a < b else {PHRASES[2]!r}\n"
            f"FINAL('Answer: {x} is ' + p + ' {y}')"
        )
    elif kind == "user":
        tail = f"FINAL('Answer: ' + str(sum(1 for r, l in zip(rows, labels) if r[1] == {spec['user']} and l == {x!r})))"
    else:
        mon, year = spec["month"].split()
        tail = (
            f"FINAL('Answer: ' + str(sum(1 for r, l in zip(rows, labels) if r[0].startswith({mon!r}) "
            f"and r[0].endswith({year!r}) and l == {x!r})))"
        )
    return ORACLE_READ + tail


def oracle_sub(prompt: str) -> str | None:
    """The oracle sub-model: the true label of the instance between << >>."""
    if "<<" not in prompt or ">>" not in prompt:
        return None
    return label_of(prompt.split("<<", 1)[1].rsplit(">>", 1)[0])
