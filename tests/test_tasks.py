"""Built-in tasks: sizes, determinism, disjointness, scoring and answer extraction."""
import json
import os
import subprocess
import sys

import pytest

from paraknow.core import task_world, tasks
from paraknow.core.data import load_records
from paraknow.core.errors import ParaknowError
from paraknow.core.records import parse_jsonl


def prompts(records):
    return [r["messages"][0]["content"] for r in records]


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_split_sizes_and_format(name):
    for split, size in (("seed", 32), ("train", 1000), ("val", 500), ("test", 1000)):
        assert len(tasks.task_records(name, split)) == size
    test = tasks.task_records(name, "test")
    for record in test[:50]:
        assert record["task"] == name and record["id"] and record["answer"]
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        # the reference completion scores as correct, and parses as a valid JSONL record
        assert tasks.score(record, record["messages"][1]["content"])
    parse_jsonl("\n".join(json.dumps(r) for r in test))


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_splits_pairwise_disjoint(name):
    splits = {s: set(prompts(tasks.task_records(name, s))) for s in tasks.SPLITS}
    for s in tasks.SPLITS:
        assert len(splits[s]) == len(tasks.task_records(name, s)), f"duplicate prompt in {s}"
    for a in tasks.SPLITS:
        for b in tasks.SPLITS:
            assert a == b or not splits[a] & splits[b], f"{a} and {b} share a prompt"


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_corpus_never_contains_a_split_record(name):
    """The demo models' pre-training corpus, as `paraknow.demo` builds it, shares no prompt and no
    input (instruct: word set; arith: operation and operands; facts: worked answer) with any
    seed/train/val/test record (the pools are disjoint by construction)."""
    from paraknow import demo

    task = tasks.TASKS[name]
    corpus = tasks.corpus_records(name, demo.CORPUS[name])
    split_records = [r for s in tasks.SPLITS for r in tasks.task_records(name, s)]
    key = lambda r: task.input_key(r["messages"][0]["content"], r["messages"][1]["content"])  # noqa: E731
    assert len(corpus) == demo.CORPUS[name]
    assert not set(prompts(split_records)) & set(prompts(corpus))
    assert not {key(r) for r in split_records} & {key(r) for r in corpus}
    assert tasks.split_overlap(corpus) == [] and tasks.split_overlap(split_records[:20]) != []
    split_texts = {m["content"] for r in split_records for m in r["messages"]}
    if task.pooled:
        assert all(tasks.in_corpus_pool(key(r)) for r in corpus)
        assert not any(tasks.in_corpus_pool(key(r)) for r in split_records)
    else:  # facts: letters are not tied to a pool, so copying the letter is what a model can learn
        from collections import Counter

        for records in (corpus, tasks.task_records(name, "test")):
            letters = Counter(r["answer"] for r in records)
            assert min(letters.values()) > 0.2 * len(records), letters
    # the general text is prose: no task prompt or worked answer can occur inside it
    text = "\n".join(task_world.general_text(demo.N_TEXT))
    first_words = {t.split()[0] for t in split_texts}
    assert first_words <= {"Question:", "Answer:", "Reverse", "Give", "Count", "Join", "Remove"}
    for marker in ("Question:", "Answer:", "these words"):
        assert marker not in text


def _tv(a: list[str], b: list[str]) -> float:
    """Total-variation distance between the empirical distributions of a and b."""
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in set(ca) | set(cb))


def _answer_groups(name: str, records: list[dict]) -> dict[str, list[str]]:
    """Answers grouped where their value space is small enough to compare distributions: arith by
    tens; instruct's count / first / last instructions by instruction (the other instructions
    answer with a whole word list, determined by the input)."""
    if name == "arith":
        return {"tens": [str(int(r["answer"]) // 10) for r in records]}
    groups: dict[str, list[str]] = {}
    for r in records:
        op = " ".join(r["messages"][0]["content"].split(":")[0].split()[:3])
        if op in ("Count these words", "Give the first", "Give the last"):
            groups.setdefault(op, []).append(r["answer"])
    return groups


@pytest.mark.parametrize("name", ["arith", "instruct"])
def test_answer_distributions_match_across_splits_and_corpus(name):
    """Split by the input, not the answer: pre-training, train, val and test see the same answers
    (the first split of `instruct` put every count item of the splits at "3" and of the corpus at
    "4"), every test answer occurs in train and in the corpus, and no record is shared."""
    from paraknow import demo

    corpus = _answer_groups(name, tasks.corpus_records(name, demo.CORPUS[name]))
    train = _answer_groups(name, tasks.task_records(name, "train"))
    for split in ("train", "val", "test"):
        for group, answers in _answer_groups(name, tasks.task_records(name, split)).items():
            assert set(answers) <= set(corpus[group]), (split, group)
            if group.startswith("Give"):  # 40 words: sampling noise alone gives TV ~0.2 vs the corpus
                assert _tv(answers, corpus[group]) < 0.35, (split, group)
            else:  # count: 4 values, arith tens: 10
                assert _tv(answers, corpus[group]) < 0.1 and _tv(answers, train[group]) < 0.1, (split, group)
                assert set(answers) <= set(train[group]), (split, group)
    if name == "instruct":  # count is asked about lists of every length, in every split
        for answers in (corpus["Count these words"], train["Count these words"]):
            assert set(answers) == {"2", "3", "4", "5"}
    if name == "arith":  # every test answer was seen in training (a rare extreme one in pre-training only)
        seen = {r["answer"] for r in tasks.task_records(name, "train") + tasks.corpus_records(name, demo.CORPUS[name])}
        assert {r["answer"] for r in tasks.task_records(name, "test")} <= seen


def test_facts_test_split_asks_about_other_facts():
    part = task_world.fact_partition()
    assert not set(part["test"]) & set(part["train"])
    questions = {task_world.RELATIONS[rel][0].format(s=subj): (rel, subj)
                 for rel, subj, _ in task_world.world()["facts"]}

    def asked(records):
        return {questions[r["messages"][0]["content"].split("\n")[0][len("Question: "):]]
                for r in records}

    test_asked = asked(tasks.task_records("facts", "test"))
    train_asked = asked(tasks.task_records("facts", "train") + tasks.task_records("facts", "seed")
                        + tasks.task_records("facts", "val"))
    assert test_asked and not test_asked & train_asked
    # the pre-training corpus quizzes test facts too (the knowledge the teacher should hold)
    assert test_asked & asked(tasks.corpus_records("facts", 2000))
    # every fact the test asks about is stated in the general text
    text = " ".join(task_world.general_text(600))
    for rel, subj, value in part["test"]:
        assert subj in text and value in text


def test_deterministic_across_processes():
    """Same records in a fresh interpreter with another hash seed (no hash()/set order)."""
    code = ("import json; from paraknow.core import task_world, tasks; "
            "print(json.dumps([tasks.task_records(n, s)[:5] + tasks.task_records(n, s)[-3:] "
            "for n in tasks.TASKS for s in tasks.SPLITS] + [task_world.general_text(5, 1)]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    here = [tasks.task_records(n, s)[:5] + tasks.task_records(n, s)[-3:]
            for n in tasks.TASKS for s in tasks.SPLITS] + [task_world.general_text(5, 1)]
    assert json.loads(out) == here


def test_records_are_fresh_copies():
    a = tasks.task_records("arith", "seed")
    a[0]["answer"] = "changed"
    assert tasks.task_records("arith", "seed")[0]["answer"] != "changed"


def test_load_records_and_bad_refs():
    assert load_records("task:facts:seed") == tasks.task_records("facts", "seed")
    assert load_records("task:instruct") == tasks.task_records("instruct", "train")
    with pytest.raises(ParaknowError, match="arith"):
        tasks.task_records("nope", "train")
    with pytest.raises(ParaknowError, match="seed, train, val, test"):
        tasks.task_records("arith", "dev")
    with pytest.raises(ParaknowError):
        load_records("task:nope:test")


def test_arith_scoring():
    record = tasks.task_records("arith", "test")[0]
    answer = record["answer"]
    assert tasks.score(record, f"Answer: 1 + 2 = 3. So the answer is {answer}.")
    assert tasks.score(record, f"So the answer is {answer}")
    assert not tasks.score(record, f"So the answer is {int(answer) + 1}.")
    assert not tasks.score(record, "")
    assert tasks.score(record, f"So the answer is {answer}.0")  # numeric comparison
    assert not tasks.score(record, f"So the answer is {answer}.5")
    assert tasks.score(record, f"... = {answer}.")  # numeric: the last number
    assert not tasks.score(record, f"... = {answer}.", match="exact")
    for record in tasks.task_records("arith", "train"):
        assert 0 <= int(record["answer"]) < 100
        assert record["messages"][1]["content"].endswith(f"So the answer is {record['answer']}.")


def test_facts_scoring():
    record = tasks.task_records("facts", "test")[3]
    letter = record["answer"]
    wrong = next(x for x in "ABCD" if x != letter)
    assert letter in "ABCD"
    assert tasks.score(record, f"Answer: something. So the answer is {letter}.")
    assert tasks.score(record, f"({letter})")
    assert not tasks.score(record, f"So the answer is {wrong}.")
    assert not tasks.score(record, "I do not know")
    # options are four distinct values, the right one at the answer letter
    lines = record["messages"][0]["content"].split("\n")[1][len("Options: "):].split(", ")
    assert [l[-3:] for l in lines] == ["(A)", "(B)", "(C)", "(D)"]
    assert len({l[:-4] for l in lines}) == 4
    value = lines["ABCD".index(letter)][:-4]
    assert f"{value} ({letter})" in record["messages"][1]["content"]
    letters = [r["answer"] for r in tasks.task_records("facts", "train")]
    assert all(letters.count(x) > 150 for x in "ABCD")  # answers spread over the letters


def test_instruct_scoring():
    by_op = {}
    for record in tasks.task_records("instruct", "train"):
        by_op.setdefault(record["messages"][0]["content"].split(":")[0], record)
    assert len(by_op) == 6
    record = by_op["Reverse the order of these words"]
    words = record["messages"][0]["content"].split(": ", 1)[1].split()
    assert record["answer"] == " ".join(reversed(words))
    assert tasks.score(record, f"Answer: {record['answer']}")
    assert tasks.score(record, f"{record['answer']}\nmore text")
    assert not tasks.score(record, " ".join(words))
    first = by_op["Give the first of these words"]
    assert first["answer"] == first["messages"][0]["content"].split(": ", 1)[1].split()[0]
    commas = by_op["Join these words with commas"]
    assert commas["answer"] == ", ".join(commas["messages"][0]["content"].split(": ", 1)[1].split())
    count = by_op["Count these words"]
    assert count["answer"] == str(len(count["messages"][0]["content"].split(": ", 1)[1].split()))


def test_final_answer():
    from paraknow.core.answers import final_answer as f

    assert f("Answer: 3 + 4 = 7. So the answer is 7.") == "7"
    assert f("the answer is: Paris.\nextra") == "Paris"
    assert f("The answer is 1,234.") == "1,234"
    assert f("I think the best option is (C)") == "C"
    assert f("Hmm... B") == "B"
    assert f("  hello   world \n") == "hello world"
    assert f("") == ""
    assert f(None) == ""
    assert f("so 72 apples\n#### 72") == "72"


def test_score_generic_records():
    record = {"prompt": "2+2?", "completion": "Four. So the answer is 4."}
    assert tasks.score(record, "so the answer is 4")
    assert not tasks.score(record, "the answer is 5")
    gsm = {"prompt": "How much?", "completion": "3 * $4 = $12 each, so\n#### 1,200"}
    assert tasks.score(gsm, "The total is $1200.")
    assert not tasks.score(gsm, "The total is $1200.", match="exact")
    assert tasks.score({"prompt": "Capital?", "completion": "The answer is Paris."}, "the answer is paris")


def test_export_jsonl(tmp_path):
    path = tasks.export_jsonl("instruct", "seed", tmp_path / "seed.jsonl")
    assert load_records(str(path)) == tasks.task_records("instruct", "seed")


def test_general_text():
    a = task_world.general_text(50, seed=3)
    assert a == task_world.general_text(50, seed=3)
    assert a != task_world.general_text(50, seed=4)
    assert len(a) == 50 and all(isinstance(p, str) and p for p in a)
    test_prompts = set(prompts([r for n in tasks.TASKS for r in tasks.task_records(n, "test")]))
    assert not test_prompts & set(a)
