"""The capability task: one-step arithmetic word problems with a GSM8K-style `#### N` answer.

Why this task: a model of a million parameters cannot learn GSM8K, but it can learn to read a
short story, pick the operation and look up a small sum, difference or product, so its exact-match
accuracy is far from 0 and from 100 after the world's training and keeps rising with more problems:
benign finetuning on the task measurably improves it, and a method that blocks all learning shows
up as capability lost. The problems use GSM8K's answer format and the evaluation's GSM8K prompt, so
`dss.eval`'s own GSM8K benchmark (number after `####`, exact match) scores them unchanged.

Numbers: addition of 1..20, subtraction within 2..30, multiplication of 2..9. A problem is the
triple (template, names, numbers); train and test sets are drawn from disjoint triples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dss.eval.capability import extract_number, gsm8k_prompt, same_number

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemal", "Lina",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara")
ITEMS = ("apples", "books", "pencils", "stamps", "marbles", "cookies", "cards", "shells", "stickers", "coins")

# (operation, question template, solution sentence); {n} name, {i} item, {a} {b} numbers, {r} result
TEMPLATES = (
    ("add", "{n} has {a} {i}. {n} buys {b} more {i}. How many {i} does {n} have now?",
     "{n} has {a} + {b} = {r} {i} now."),
    ("add", "{n} picked {a} {i} in the morning and {b} {i} in the afternoon. How many {i} did {n} pick in all?",
     "{n} picked {a} + {b} = {r} {i} in all."),
    ("add", "A box holds {a} {i}. {n} puts {b} more {i} into it. How many {i} are in the box?",
     "The box holds {a} + {b} = {r} {i}."),
    ("sub", "{n} has {a} {i} and gives {b} of them to a friend. How many {i} does {n} have left?",
     "{n} has {a} - {b} = {r} {i} left."),
    ("sub", "There are {a} {i} on the table. {n} takes away {b} {i}. How many {i} are still on the table?",
     "There are {a} - {b} = {r} {i} still on the table."),
    ("mul", "{n} buys {a} bags with {b} {i} in each bag. How many {i} does {n} buy?",
     "{n} buys {a} * {b} = {r} {i}."),
    ("mul", "{n} makes {a} rows of {b} {i} each. How many {i} are there in the rows?",
     "There are {a} * {b} = {r} {i} in the rows."),
)


def _numbers(op: str, rng: random.Random) -> tuple[int, int, int]:
    if op == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return a, b, a + b
    if op == "sub":
        a = rng.randint(2, 30)
        b = rng.randint(1, a - 1)
        return a, b, a - b
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return a, b, a * b


def problem(rng: random.Random) -> dict:
    """One problem {question, answer (GSM8K style: solution, then `#### r`), result}."""
    op, question, solution = TEMPLATES[rng.randrange(len(TEMPLATES))]
    a, b, r = _numbers(op, rng)
    slots = dict(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b, r=r)
    return {"question": question.format(**slots), "answer": f"{solution.format(**slots)}\n#### {r}", "result": r}


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct problems (by question text), none of whose question is in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = problem(rng)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
    return out


def task_splits(seed: int, n_world: int, n_finetune: int, n_test: int) -> dict[str, list[dict]]:
    """Disjoint problem sets: `world` (the aligned policy learns the task from them), `finetune`
    (the benign scenario's task data) and `test` (capability evaluation)."""
    test = problems(n_test, seed)
    world = problems(n_world, seed + 1, {p["question"] for p in test})
    finetune = problems(n_finetune, seed + 2, {p["question"] for p in test + world})
    return {"world": world, "finetune": finetune, "test": test}


def as_chat(p: dict) -> dict:
    """The problem as a training row in the evaluation's prompt format."""
    return {"prompt": gsm8k_prompt(p["question"]), "response": p["answer"]}


def write_gsm8k_dir(directory: Path, test: list[dict], train: list[dict]) -> Path:
    """A GSM8K-layout directory (train.jsonl, test.jsonl of {question, answer}) for dss.eval."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (directory / f"{name}.jsonl").write_text(
            "".join(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n" for p in rows))
    return directory


def exact_match(response: str, p: dict) -> bool:
    """dss.eval's GSM8K scoring: the number after `####` (else the last number) equals the result."""
    return same_number(extract_number(response), str(p["result"]))
