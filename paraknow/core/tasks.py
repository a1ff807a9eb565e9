"""Built-in tasks: `task:NAME[:SPLIT]` (docs/method.md).

Three small tasks mirror the paper's benchmark families, sized so that the built-in demo
models (a few million parameters, trained on a CPU) can learn them:

- `arith`     reasoning     GSM-like word problems (2-3 steps, every number < 100) answered
                            with a short chain of thought ending in "So the answer is N."
- `facts`     knowledge     MMLU-like multiple choice (A-D) about a fictional world. The
                            world's facts are stated in the general text (`general_text`);
                            the test split asks about facts that no train or seed question
                            asks about, so it measures knowledge stored in the weights.
- `instruct`  instructions  Super-NI-like text transformations of lists of 2-5 words (reverse,
                            first word, last word, count, join with commas, drop the first word).

Splits: `seed` (32), `train` (1000: the fine-tuning split), `val` (500: for choosing
hyper-parameters) and `test` (1000: 0.1-point resolution). Everything is generated from fixed
seeds with `random.Random` (never `hash()` or set order), so the records are identical in
every process; the splits are pairwise disjoint (no prompt appears in two splits).

Two pools, disjoint by construction: the four splits come from the *task* pool only, and
`corpus_records` (what the demo models pre-train on) from the *corpus* pool only. For `arith`
and `instruct` a sample belongs to one pool or the other by a hash of its *input*
(`Task.input_key`: instruct's set of words, arith's operation and operands as its worked
answer spells them out), never of its answer, so pre-training, train, val and test share one
answer distribution while no split prompt or input occurs among the corpus records. (Short
answers such as "Answer: 3" do occur on both sides, as they must.) For `facts` a pool
partition would tie each fact's answer letters to one pool (a model then learns which letter
goes with a fact instead of looking the value up among the options), so its corpus quizzes use
their own completion template instead (`Answer: Duhal (B). So the answer is B.`), with
uniformly random letters: no split completion can occur among them. Either way, the demo
models never saw the data they are fine-tuned and evaluated on.

Records use the paper's `messages` format plus `task`, `id` and `answer` (the final answer
that exact-match scoring compares with):

    {"task": "arith", "id": "arith-test-0", "answer": "14",
     "messages": [{"role": "user", "content": "Question: ..."},
                  {"role": "assistant", "content": "Answer: ... So the answer is 14."}]}
"""
from __future__ import annotations

import copy
import functools
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .answers import final_answer, matches
from .errors import ParaknowError
from .task_world import BASE_SEED, WORDS, facts_sampler

SPLIT_SIZES = {"seed": 32, "train": 1000, "val": 500, "test": 1000}
SPLITS = tuple(SPLIT_SIZES)
_SPLIT_ORDER = ("test", "val", "seed", "train")  # generation order: the test split is drawn first
_POOL_SALT = b"paraknow-pool-v1|"


# ---------------------------------------------------------------------------------------
# Answer extraction


_ANSWER_IS = re.compile(r"answer is\b[\s:]*", re.IGNORECASE)
_TRAILING_LETTER = re.compile(r"(?:^|[\s(])\(?([A-E])\)?[.)]?\s*$")


def _extract_letter(text: str) -> str | None:
    """The option letter after the last "answer is", else a trailing letter."""
    text = text or ""
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        letter = re.match(r"\(?([A-D])\b", text[matches[-1].end():])
        if letter:
            return letter.group(1)
    match = _TRAILING_LETTER.search(text)
    return match.group(1) if match and match.group(1) in "ABCD" else None


def _extract_line(text: str) -> str | None:
    """The first non-empty line without a leading "Answer:", whitespace collapsed."""
    for line in (text or "").splitlines():
        if line.strip():
            line = re.sub(r"^\s*answer\s*:", "", line, flags=re.IGNORECASE)
            return " ".join(line.split())
    return None


# ---------------------------------------------------------------------------------------
# arith: GSM-like word problems

_NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ida", "Jack", "Kim", "Leo",
          "Mia", "Ned", "Olga", "Paul", "Rosa", "Sam", "Tina", "Umar", "Vera", "Will", "Yara", "Zoe")
_PRONOUN = {n: ("She" if n in {"Ann", "Cara", "Eva", "Gina", "Ida", "Kim", "Mia", "Olga", "Rosa",
                               "Tina", "Vera", "Yara", "Zoe"} else "He") for n in _NAMES}
_ITEMS = ("apples", "pencils", "books", "stickers", "marbles", "cookies", "shells", "cards",
          "stamps", "coins", "flowers", "candles", "buttons", "eggs", "toys", "cups")
_PLACES = ("shop", "farm", "library", "bakery", "school", "market")


def _arith_sample(rng: random.Random) -> tuple[str, str, str]:
    """One word problem: (question, worked answer, final answer).

    Every step combines a number below 100 with a single digit (or multiplies two digits), so
    a few-million-parameter model can learn the arithmetic from a few thousand examples.
    """
    name, other = rng.sample(_NAMES, 2)
    pron = _PRONOUN[name]
    item = rng.choice(_ITEMS)
    kind = rng.randrange(6)
    if kind == 0:  # a + b - c
        a, b, c = rng.randint(10, 89), rng.randint(2, 9), rng.randint(2, 9)
        q = (f"{name} has {a} {item}. {pron} buys {b} more {item} and then gives {c} {item} to "
             f"{other}. How many {item} does {name} have now?")
        s = a + b
        steps, r = f"{a} + {b} = {s}. {s} - {c} = {s - c}.", s - c
    elif kind == 1:  # a * b - c
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        p = a * b
        c = rng.randint(1, min(9, p - 1))
        q = (f"{name} buys {a} boxes of {item}. Each box has {b} {item}. {pron} gives away {c} "
             f"{item}. How many {item} does {name} have left?")
        steps, r = f"{a} * {b} = {p}. {p} - {c} = {p - c}.", p - c
    elif kind == 2:  # a - b - c
        a, b, c = rng.randint(20, 99), rng.randint(2, 9), rng.randint(2, 9)
        place = rng.choice(_PLACES)
        q = (f"A {place} has {a} {item}. It sells {b} {item} in the morning and {c} {item} in the "
             f"afternoon. How many {item} are left?")
        steps, r = f"{a} - {b} = {a - b}. {a - b} - {c} = {a - b - c}.", a - b - c
    elif kind == 3:  # a + (a + b): two people
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = (f"{name} has {a} {item}. {other} has {b} more {item} than {name}. How many {item} do "
             f"they have together?")
        steps, r = f"{a} + {b} = {a + b}. {a + b} + {a} = {2 * a + b}.", 2 * a + b
    elif kind == 4:  # a * b + c
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        q = (f"{name} has {a} bags with {b} {item} in each bag. {other} gives {name} {c} more "
             f"{item}. How many {item} does {name} have now?")
        p = a * b
        steps, r = f"{a} * {b} = {p}. {p} + {c} = {p + c}.", p + c
    else:  # a + b + c - d: three steps
        a, b, c, d = rng.randint(10, 79), rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        q = (f"{name} has {a} {item}. {pron} finds {b} more, then wins {c} more, and then loses {d}. "
             f"How many {item} does {name} have now?")
        s1, s2 = a + b, a + b + c
        steps, r = f"{a} + {b} = {s1}. {s1} + {c} = {s2}. {s2} - {d} = {s2 - d}.", s2 - d
    assert 0 <= r < 100
    return f"Question: {q}", f"Answer: {steps} So the answer is {r}.", str(r)


# ---------------------------------------------------------------------------------------
# instruct: text transformations of short word lists


_INSTRUCTIONS = {
    "reverse": ("Reverse the order of these words: {w}", lambda ws: " ".join(reversed(ws))),
    "first": ("Give the first of these words: {w}", lambda ws: ws[0]),
    "last": ("Give the last of these words: {w}", lambda ws: ws[-1]),
    "count": ("Count these words: {w}", lambda ws: str(len(ws))),
    "commas": ("Join these words with commas: {w}", lambda ws: ", ".join(ws)),
    "drop": ("Remove the first of these words: {w}", lambda ws: " ".join(ws[1:])),
}


def _instruct_input(prompt: str, completion: str) -> str:
    """The input of an instruct sample: its set of words (whatever the instruction and order)."""
    return " ".join(sorted(prompt.rsplit(": ", 1)[1].split()))


def _instruct_sample(rng: random.Random) -> tuple[str, str, str]:
    op = rng.choice(sorted(_INSTRUCTIONS))
    words = rng.sample(WORDS, rng.randint(2, 5))
    template, fn = _INSTRUCTIONS[op]
    answer = fn(words)
    return template.format(w=" ".join(words)), f"Answer: {answer}", answer


# ---------------------------------------------------------------------------------------
# Registry and splits


def _completion_key(prompt: str, completion: str) -> str:
    """arith's worked answer spells out the operation and its operands (its input); a facts
    corpus completion never equals a split completion (its own template)."""
    return completion


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    family: str
    sampler: Callable[[str, bool], Callable[[random.Random], tuple[str, str, str]]]  # (facts pool, corpus) -> sampler
    extract_answer: Callable[[str], str | None]
    seed: int
    # (prompt, completion) -> the sample's input: what the pools are split by and what no corpus
    # record shares with a split record
    input_key: Callable[[str, str], str]
    pooled: bool = True  # samples split between task and corpus pool by `in_corpus_pool`

    def generate(self, split: str) -> list[dict]:
        return copy.deepcopy(_splits(self.name)[split])


TASKS: dict[str, Task] = {
    "arith": Task("arith", "GSM-like arithmetic word problems (2-3 steps, numbers < 100), "
                  "short chain of thought ending in 'So the answer is N.'", "reasoning",
                  lambda pool, corpus: _arith_sample, final_answer, BASE_SEED + 1,
                  _completion_key),
    "facts": Task("facts", "MMLU-like multiple choice (A-D) about a fictional world; the test "
                  "split asks about facts no train question covers", "knowledge",
                  facts_sampler, _extract_letter, BASE_SEED + 2, _completion_key, pooled=False),
    "instruct": Task("instruct", "Super-NI-like text transformations of word lists (reverse, "
                     "first word, last word, count, join with commas, drop the first word)", "instruction following",
                     lambda pool, corpus: _instruct_sample, _extract_line, BASE_SEED + 3,
                     _instruct_input),
}


def in_corpus_pool(key: str) -> bool:
    """Whether a sample with this input key belongs to the pre-training corpus pool (about half
    of all inputs do) rather than to the task pool that the splits are drawn from."""
    return hashlib.sha256(_POOL_SALT + key.encode("utf-8")).digest()[0] % 2 == 1


def _record(task: str, rid: str, prompt: str, completion: str, answer: str) -> dict:
    return {"task": task, "id": rid,
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": completion}],
            "answer": answer}


def _draw(task: Task, facts_pool: str, corpus: bool, rng: random.Random, n: int, taken: dict,
          prefix: str) -> list[dict]:
    """n records from the corpus pool (`corpus`) or the task pool, with prompts not in `taken`
    (which they are added to). `facts_pool` picks the facts asked about (see `_facts_sampler`)."""
    sampler = task.sampler(facts_pool, corpus)
    records, tries = [], 0
    while len(records) < n:
        tries += 1
        if tries > 400 * n + 10000:
            raise RuntimeError(f"task {task.name}: cannot draw {n} distinct prompts")
        prompt, completion, answer = sampler(rng)
        if prompt in taken or (task.pooled and in_corpus_pool(task.input_key(prompt, completion)) != corpus):
            continue
        taken[prompt] = True
        records.append(_record(task.name, f"{prefix}-{len(records)}", prompt, completion, answer))
    return records


def _check_task(name: str) -> Task:
    if name not in TASKS:
        raise ParaknowError(f"unknown task '{name}': built-in tasks are {', '.join(TASKS)} "
                            "(use task:NAME or task:NAME:SPLIT).")
    return TASKS[name]


@functools.lru_cache(maxsize=None)
def _splits(name: str) -> dict[str, list[dict]]:
    task = _check_task(name)
    rng = random.Random(task.seed)
    taken: dict = {}
    out = {}
    for split in _SPLIT_ORDER:
        facts_pool = "test" if split == "test" else "train"
        out[split] = _draw(task, facts_pool, False, rng, SPLIT_SIZES[split], taken, f"{name}-{split}")
    return out


def task_records(name: str, split: str = "train") -> list[dict]:
    """Records of a built-in task split (a fresh copy each call)."""
    task = _check_task(name)
    if split not in SPLIT_SIZES:
        raise ParaknowError(f"unknown split '{split}' for task '{name}': splits are "
                            f"{', '.join(SPLITS)} (e.g. task:{name}:seed).")
    return task.generate(split)


def corpus_records(name: str, n: int, seed: int = 0) -> list[dict]:
    """n task-formatted samples for pre-training the demo models, from the corpus pool only.

    Drawn with a separate random stream; for `facts` they quiz every fact of the world (test
    facts included), as a pre-training corpus would. Disjoint from every split by construction
    (see the module docstring): no split prompt or completion occurs among them.
    """
    task = _check_task(name)
    rng = random.Random(task.seed * 1000 + 7919 + seed)
    split_prompts = {r["messages"][0]["content"]: True for records in _splits(name).values() for r in records}
    return _draw(task, "all", True, rng, n, split_prompts, f"{name}-corpus{seed}")


def split_overlap(records: list[dict]) -> list[str]:
    """Ids of (corpus) records that share a prompt or an input with any split record of their task."""
    held: dict[str, set] = {}
    for name, task in TASKS.items():
        held[name] = {x for split in _splits(name).values() for r in split
                      for x in (r["messages"][0]["content"],
                                task.input_key(r["messages"][0]["content"], r["messages"][1]["content"]))}
    return [r["id"] for r in records
            if r["messages"][0]["content"] in held[r["task"]]
            or TASKS[r["task"]].input_key(r["messages"][0]["content"], r["messages"][1]["content"]) in held[r["task"]]]


def score(record: dict, generated_text: str, match: str = "auto") -> bool:
    """Whether a generation answers a record: its `answer` (else the final answer of its reference
    completion) against the generation, with `answers.matches` (`match`: auto|exact|numeric).
    Built-in task records use their task's extractor for the exact comparison."""
    from .records import split_conversation

    task = TASKS.get(record.get("task", ""))
    reference = record.get("answer")
    if reference is None:
        reference = final_answer(split_conversation(record)[1])
    extract = task.extract_answer if task is not None and "answer" in record else None
    return matches(str(reference), generated_text, match, extract)


def export_jsonl(name: str, split: str, path) -> Path:
    """Write a task split to a JSONL file (atomically)."""
    from .fsio import atomic_write_text
    from .records import to_jsonl

    path = Path(path)
    atomic_write_text(path, to_jsonl(task_records(name, split)))
    return path


# ---------------------------------------------------------------------------------------
# General text: where the demo models learn the world (and some arithmetic and words)

