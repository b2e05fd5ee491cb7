"""Instance texts for the OOLONG-style families: short questions whose TREC coarse class is the hidden label.

Written for this project (no dataset text): each class has a few templates with one slot, filled from a
word list. The class of an instance is what its answer would be (an abbreviation's expansion, a
description, an entity, a person, a place, a number): readable from the text, never written in it.
``INSTANCES`` maps every possible instance text to its label; a test checks no text has two labels.
"""

from __future__ import annotations

LABELS = ("abbreviation", "description", "entity", "human", "location", "numeric")

_ABBR = [
    "NATO",
    "UNESCO",
    "RAM",
    "GPS",
    "DNA",
    "LED",
    "SCUBA",
    "RADAR",
    "LASER",
    "HTML",
    "FIFA",
    "OPEC",
    "NASA",
    "CPU",
    "PIN",
    "ATM",
]
_PHENOMENA = [
    "the northern lights",
    "rust on iron",
    "a rainbow",
    "thunder",
    "sea foam",
    "frost on windows",
    "static electricity",
    "a solar eclipse",
    "ocean tides",
    "hiccups",
    "yawning",
    "tree rings",
]
_DEVICES = [
    "a barometer",
    "a sundial",
    "a steam engine",
    "a compass",
    "a thermostat",
    "a pendulum clock",
    "a bicycle gear",
    "a loom",
    "a windmill",
    "a printing press",
    "a telescope",
    "a water pump",
]
_ANIMALS = ["owls", "bees", "salmon", "bats", "camels", "penguins", "ants", "whales", "parrots", "moles"]
_TASKS = [
    "tighten a bolt",
    "measure rainfall",
    "cut glass",
    "weigh flour",
    "split firewood",
    "sharpen a chisel",
    "strain soup",
    "carve wood",
    "mix paint",
    "seal a letter",
]
_FEATS = [
    "sail around the world alone",
    "climb the highest mountain",
    "fly across the ocean",
    "reach the south pole",
    "map the river delta",
    "walk on the moon",
    "swim the channel",
    "cross the desert on foot",
]
_LANDMARKS = [
    "the oldest lighthouse",
    "the longest bridge",
    "the tallest waterfall",
    "the deepest lake",
    "the largest salt flat",
    "the highest railway station",
    "the oldest university",
    "the busiest harbour",
]
_QUANTITIES = [
    "bones in a human hand",
    "keys on a piano",
    "players in a rugby team",
    "days in a leap year",
    "strings on a cello",
    "squares on a chessboard",
    "teeth in an adult mouth",
    "legs on a spider",
]

_TEMPLATES: dict[str, list[tuple[str, list[str]]]] = {
    "abbreviation": [
        ("What does the acronym {} stand for?", _ABBR),
        ("What is {} short for?", _ABBR),
        ("What is the full form of {}?", _ABBR),
    ],
    "description": [
        ("What causes {}?", _PHENOMENA),
        ("How does {} work?", _DEVICES),
        ("Why do {} behave the way they do in winter?", _ANIMALS),
    ],
    "entity": [
        ("What tool would you use to {}?", _TASKS),
        ("What kind of food do {} eat?", _ANIMALS),
        ("What material is {} usually made of?", _DEVICES),
    ],
    "human": [
        ("Who was the first person to {}?", _FEATS),
        ("Who invented {}?", _DEVICES),
        ("Which explorer tried to {} and failed?", _FEATS),
    ],
    "location": [
        ("Where is {} found?", _LANDMARKS),
        ("In which country is {}?", _LANDMARKS),
        ("Where do {} spend the summer?", _ANIMALS),
    ],
    "numeric": [
        ("How many {} are there?", _QUANTITIES),
        ("In what year was {} first built?", _DEVICES),
        ("How long do {} live on average?", _ANIMALS),
    ],
}


def _all_instances() -> dict[str, str]:
    table: dict[str, str] = {}
    for label, templates in _TEMPLATES.items():
        for template, words in templates:
            for word in words:
                text = template.format(word)
                if table.setdefault(text, label) != label:
                    raise AssertionError(f"instance {text!r} would have two labels")
    return table


INSTANCES: dict[str, str] = _all_instances()
BY_LABEL: dict[str, list[str]] = {lab: sorted(t for t, l in INSTANCES.items() if l == lab) for lab in LABELS}


def label_of(text: str) -> str | None:
    """The hidden label of an instance text (None for a text no template makes)."""
    return INSTANCES.get(text.strip())
