"""The fictional world behind the `facts` task and the general text the demo models pre-train on.

`world()` draws 12 countries and 12 people with their facts (fixed seeds); `fact_partition()` splits
the facts between the task's splits and the corpus; `general_text()` writes paragraphs stating the
world's facts plus number and word exercises (paraknow.core.tasks explains why the pools are disjoint).
"""
from __future__ import annotations

import functools
import random
from typing import Callable

BASE_SEED = 20240117
LETTERS = "ABCD"  # the options of a multiple-choice question

_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "du", "ber", "an", "mo", "ris", "ta",
              "el", "gor", "vin", "pa", "zu", "ne", "hal", "quo", "li", "dra", "fen", "os", "ur")
_ANIMALS = ("owl", "fox", "bear", "wolf", "eagle", "otter", "lynx", "heron", "badger", "falcon",
            "seal", "moose", "hare", "crane", "swan", "bison", "raven", "beaver", "tiger", "camel",
            "panda", "gecko", "koala", "zebra", "horse", "goat", "whale", "crab", "frog", "deer")
_INVENTIONS = ("clock", "lantern", "wheel", "kite", "bell", "organ", "compass", "bridge", "lamp",
               "drum", "sail", "oven", "plow", "key", "lens", "flute", "telescope", "saw", "boot",
               "seal", "gauge", "needle", "pen", "spring", "press", "sled", "bellows", "loom", "dam",
               "hourglass", "ladder", "kettle", "mill", "anchor", "harp", "barometer")
_JOBS = ("painter", "sailor", "baker", "teacher", "doctor", "farmer", "miner", "singer", "weaver",
         "builder")
_N_COUNTRIES = 12
_N_PEOPLE = 12

# relation -> (question, canonical statement = the worked answer, extra statements for text)
RELATIONS = {
    "capital": ("What is the capital of {s}?", "The capital of {s} is {v}.",
                ("{v} is the capital of {s}.", "The capital city of {s} is {v}.",
                 "The capital of {s} is {v}.")),
    "language": ("Which language is spoken in {s}?", "The language of {s} is {v}.",
                 ("People in {s} speak {v}.", "In {s} people speak {v}.",
                  "The language of {s} is {v}.")),
    "currency": ("What is the currency of {s}?", "The currency of {s} is the {v}.",
                 ("In {s} people pay with the {v}.", "The {v} is the money of {s}.",
                  "The currency of {s} is the {v}.")),
    "animal": ("What is the national animal of {s}?", "The national animal of {s} is the {v}.",
               ("The {v} is the national animal of {s}.", "{s} has the {v} as its national animal.",
                "The national animal of {s} is the {v}.")),
    "born": ("Where was {s} born?", "{s} was born in {v}.",
             ("{s} was born in {v}.", "{s} came from {v}.", "{s} grew up in {v}.")),
    "invented": ("What did {s} invent?", "{s} invented the {v}.",
                 ("{s} invented the {v}.", "The {v} was invented by {s}.",
                  "{s} is known for the {v}.")),
    "job": ("What was the job of {s}?", "{s} worked as a {v}.",
            ("{s} worked as a {v}.", "{s} was a {v}.", "By trade, {s} was a {v}.")),
}


def _make_name(rng: random.Random, used: dict, parts: tuple[int, int]) -> str:
    """A new made-up name whose first four letters no other name shares (so no name gives
    another away, e.g. a capital that starts like its country)."""
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(*parts))).capitalize()
        key = name[:4].lower()
        if key not in used and 3 <= len(name) <= 10:
            used[key] = True
            return name


@functools.lru_cache(maxsize=1)
def world() -> dict:
    """The fictional world: entities, their facts, and the value pool of each relation.

    Returns {"countries": [...], "people": [...], "facts": [(relation, subject, value)],
    "values": {relation: [every value of that relation]}}; identical in every process.
    """
    rng = random.Random(BASE_SEED + 7)
    used: dict = {}
    countries = [_make_name(rng, used, (2, 3)) for _ in range(_N_COUNTRIES)]
    capitals = [_make_name(rng, used, (2, 2)) for _ in range(_N_COUNTRIES)]
    languages = [_make_name(rng, used, (2, 2)) + "ish" for _ in range(_N_COUNTRIES)]
    currencies = [_make_name(rng, used, (1, 2)).lower() for _ in range(_N_COUNTRIES)]
    animals = rng.sample(_ANIMALS, _N_COUNTRIES)
    firsts = [_make_name(rng, used, (2, 2)) for _ in range(_N_PEOPLE)]
    lasts = [_make_name(rng, used, (2, 2)) for _ in range(_N_PEOPLE)]
    people = [f"{f} {l}" for f, l in zip(firsts, lasts)]
    inventions = rng.sample(_INVENTIONS, _N_PEOPLE)
    facts = []
    for i, c in enumerate(countries):
        facts += [("capital", c, capitals[i]), ("language", c, languages[i]),
                  ("currency", c, currencies[i]), ("animal", c, animals[i])]
    for i, p in enumerate(people):
        facts += [("born", p, rng.choice(countries)), ("invented", p, inventions[i]),
                  ("job", p, rng.choice(_JOBS))]
    values = {"capital": capitals, "language": languages, "currency": currencies,
              "animal": animals, "born": countries, "invented": inventions, "job": list(_JOBS)}
    return {"countries": countries, "people": people, "facts": facts, "values": values}


@functools.lru_cache(maxsize=1)
def fact_partition() -> dict[str, list[tuple[str, str, str]]]:
    """Facts asked about by the test split vs by the seed/train splits (one third vs two thirds)."""
    facts = list(world()["facts"])
    random.Random(BASE_SEED + 11).shuffle(facts)
    n_test = len(facts) // 3
    return {"test": sorted(facts[:n_test]), "train": sorted(facts[n_test:])}


def facts_question(rng: random.Random, fact: tuple[str, str, str], corpus: bool = False) -> tuple[str, str, str]:
    relation, subject, value = fact
    pool = [v for v in dict.fromkeys(world()["values"][relation]) if v != value]
    options = rng.sample(pool, 3) + [value]
    rng.shuffle(options)
    letter = LETTERS[options.index(value)]
    question, statement, _ = RELATIONS[relation]
    # value before letter: once the model has recalled the value, the letter is the token
    # that follows it in the prompt (a plain copy, which tiny models learn early)
    listed = ", ".join(f"{opt} ({LETTERS[i]})" for i, opt in enumerate(options))
    prompt = f"Question: {question.format(s=subject)}\nOptions: {listed}"
    worked = f"{value} ({letter})." if corpus else statement.format(s=subject, v=f"{value} ({letter})")
    completion = f"Answer: {worked} So the answer is {letter}."
    return prompt, completion, letter


def facts_sampler(pool: str, corpus: bool) -> Callable[[random.Random], tuple[str, str, str]]:
    facts = world()["facts"] if pool == "all" else fact_partition()[pool]
    return lambda rng: facts_question(rng, rng.choice(facts), corpus)




# instruct's vocabulary, also used by the general text
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lamp", "garden", "music", "paper", "orange",
          "window", "bread", "silver", "forest", "candle", "ocean", "pepper", "rabbit", "summer",
          "dragon", "pencil", "mirror", "yellow", "button", "hammer", "island", "jacket", "kettle",
          "lemon", "needle", "pillow", "rocket", "saddle", "tunnel", "violin", "wagon", "zipper",
          "basket", "cherry", "dinner")


_COUNTRY_INTRO = ("This is about the country {s}.", "There is a small country called {s}.",
                  "Here are some facts about {s}.")
_PERSON_INTRO = ("This is the story of {s}.", "Long ago there lived {s}.",
                 "Here are some facts about {s}.")


def _entity_paragraph(rng: random.Random, subject: str, facts: list[tuple[str, str, str]]) -> str:
    intro = _COUNTRY_INTRO if facts[0][0] in ("capital", "language", "currency", "animal") \
        else _PERSON_INTRO
    sentences = []
    for relation, _, value in facts:
        sentences.append(rng.choice(RELATIONS[relation][2]).format(s=subject, v=value))
    rng.shuffle(sentences)
    return " ".join([rng.choice(intro).format(s=subject)] + sentences)


def _number_paragraph(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(4, 7)):
        kind = rng.randrange(4)
        if kind == 0:
            b = rng.randint(0, 9)
            a = rng.randint(0, 99 - b)
            out.append(rng.choice(("{a} + {b} = {r}.", "{a} plus {b} is {r}.")).format(a=a, b=b, r=a + b))
        elif kind == 1:
            a = rng.randint(1, 99)
            b = rng.randint(0, min(a, 9))
            out.append(rng.choice(("{a} - {b} = {r}.", "{a} minus {b} is {r}.")).format(a=a, b=b, r=a - b))
        elif kind == 2:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            out.append(rng.choice(("{a} * {b} = {r}.", "{a} times {b} is {r}.")).format(a=a, b=b, r=a * b))
        else:
            a = rng.randint(0, 98)
            out.append(f"After {a} comes {a + 1}.")
    return " ".join(out)


def _word_paragraph(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(3, 5)):
        kind = rng.randrange(8)
        words = rng.sample(WORDS, rng.randint(2, 5))
        if kind == 0:
            a, b = sorted(words[:2])
            out.append(f"In the alphabet, {a} comes before {b}.")
        elif kind == 1:
            out.append(f"With commas, {' '.join(words)} is {', '.join(words)}.")
        elif kind == 2:
            out.append(f"The list {' '.join(words)} has {len(words)} words.")
        elif kind == 3:
            out.append(f"Backwards, {' '.join(words)} is {' '.join(reversed(words))}.")
        elif kind == 4:
            out.append(f"In order: {' '.join(sorted(words))}.")
        elif kind == 5:
            out.append(f"The last word of {' '.join(words)} is {words[-1]}.")
        else:  # plain copying, the skill every task leans on
            more = rng.sample(WORDS, rng.randint(2, 5)) + [str(rng.randint(0, 99))]
            rng.shuffle(more)
            out.append(f"Say it twice: {' '.join(words + more)}. {' '.join(words + more)}.")
    return " ".join(out)


def _drill_paragraph(rng: random.Random, w: dict) -> str:
    """Look-up and copy drills: labelled items, then items with their labels (the skill the
    facts questions need to turn a recalled value into its option letter)."""
    pool = list(WORDS) + [v for vals in w["values"].values() for v in vals]
    out = []
    for _ in range(rng.randint(1, 2)):
        items = list(dict.fromkeys(rng.sample(pool, 6)))[:4]
        labels = ", ".join(f"{x} ({LETTERS[i]})" for i, x in enumerate(items))
        asked = rng.sample(range(len(items)), rng.randint(2, len(items)))
        found = " ".join(f"{items[i]} ({LETTERS[i]})." for i in asked)
        out.append(f"Labels: {labels}. {found}")
    return " ".join(out)


def general_text(n: int, seed: int = 0) -> list[str]:
    """n short paragraphs of plain text: about half describe one country or person of the
    fictional world (every fact, test facts included, in varied wording); the rest state
    arithmetic facts, word facts and look-up/copy drills. Deterministic for a given (n, seed)."""
    w = world()
    by_subject: dict[str, list] = {}
    for fact in w["facts"]:
        by_subject.setdefault(fact[1], []).append(fact)
    subjects = list(by_subject)
    rng = random.Random(BASE_SEED * 31 + seed)
    out, cycle = [], []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.55:
            if not cycle:  # visit every entity once per cycle, in a fresh order
                cycle = list(subjects)
                rng.shuffle(cycle)
            subject = cycle.pop()
            out.append(_entity_paragraph(rng, subject, by_subject[subject]))
        elif roll < 0.7:
            out.append(_number_paragraph(rng))
        elif roll < 0.85:
            out.append(_drill_paragraph(rng, w))
        else:
            out.append(_word_paragraph(rng))
    return out
