"""Capability benchmarks: did finetuning keep the model useful? MMLU, ARC-Challenge, GSM8K.

Multiple choice (MMLU, ARC-C) is scored two ways: `generate` asks for the letter and parses it from
free text (what a chat user sees), `loglik` compares the model's log-likelihood of each option
letter after the same prompt (robust for models that ramble). GSM8K is 8-shot chain of thought
with solutions from the train split; the model's final number (after `####`, else after "answer
is", else the last number) must equal the reference number after `####`.

Models are reached through a policy object with `generate(prompts, prefills, max_new_tokens, seed)
-> texts` and `continuation_logprobs(prompts, prefills, continuations) -> floats` (see
`dss.eval.policy`), so everything here except the two `run_*` functions is plain text handling.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Sequence

from dss.errors import UserError
from dss.eval.io import LOCAL_SUFFIXES, column, is_local, read_rows

__all__ = [
    "LETTERS", "accuracy", "extract_number", "gsm8k_prompt", "load_arc", "load_gsm8k", "load_mmlu",
    "mc_prompt", "parse_choice", "run_gsm8k", "run_multiple_choice", "same_number",
]

LETTERS = "ABCDEFGHIJ"


def _limit(items: list[dict], limit: int, source) -> list[dict]:
    if not items:
        raise UserError(f"{source}: no questions")
    return items[:limit] if limit else items


# ---------------------------------------------------------------- multiple choice

def _mc_item(row: dict, i: int, source, subject=None) -> dict:
    """Normalise one row: `choices` a list (or columns A..D), `answer` an index or a letter/label."""
    choices = row.get("choices")
    labels = None
    if isinstance(choices, dict):  # ARC: {"text": [...], "label": ["A", ...] or ["1", ...]}
        choices, labels = list(choices["text"]), [str(x) for x in choices["label"]]
    elif choices is None:
        choices = [row[x] for x in LETTERS if row.get(x) not in (None, "")]
    choices = [str(c) for c in choices]
    if not 2 <= len(choices) <= len(LETTERS):
        raise UserError(f"{source}: row {i} has {len(choices)} choices")
    answer = column(row, ("answer", "answerKey", "label"), source, i)
    keys = labels or list(LETTERS[: len(choices)])
    if labels or not str(answer).strip().isdigit():  # a label or letter, else an index
        if str(answer).strip() not in keys:
            raise UserError(f"{source}: row {i} has answer {answer!r}, not one of {keys}")
        answer = keys.index(str(answer).strip())
    answer = int(answer)
    if not 0 <= answer < len(choices):
        raise UserError(f"{source}: row {i} has answer index {answer} for {len(choices)} choices")
    return {"id": str(row.get("id") or i), "question": str(column(row, ("question",), source, i)),
            "choices": choices, "answer": answer, "subject": row.get("subject") or subject}


def load_mmlu(path: str = "cais/mmlu", limit: int = 0) -> list[dict]:
    """MMLU test questions: a local file with question, choices (or A-D columns), answer (index or
    letter) and optionally subject; or the hub dataset (config "all", split "test")."""
    rows = read_rows(path, config=None if is_local(path) else "all", split="test")
    return _limit([_mc_item(r, i, path) for i, r in enumerate(rows)], limit, path)


def load_arc(path: str = "allenai/ai2_arc", limit: int = 0) -> list[dict]:
    """ARC-Challenge test questions: a local file in the hub layout (question, choices {text,
    label}, answerKey) or the hub dataset (config "ARC-Challenge", split "test")."""
    rows = read_rows(path, config=None if is_local(path) else "ARC-Challenge", split="test")
    return _limit([_mc_item(r, i, path) for i, r in enumerate(rows)], limit, path)


def mc_prompt(item: dict) -> str:
    subject = item.get("subject")
    head = f"The following is a multiple choice question about {subject.replace('_', ' ')}.\n\n" if subject else ""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{head}{item['question'].strip()}\n{options}\n\nAnswer with the letter of the correct option."


# "A" followed by a lowercase word is the article ("A car is red"), unless the word is one that
# follows an option letter ("A or B", "A is correct").
_ARTICLE = re.compile(r"\s+(?!(?:or|and|is|was|seems|would|because|since)\b)[a-z]")


def parse_choice(text: str, n_choices: int, choices: Sequence[str] = ()) -> int | None:
    """The chosen option's index in a free-text answer, or None. In order: an explicit "answer
    is (B)" / "Answer: B" / "option B" (the last one), \\boxed{B}, a leading "B." / "(B)", a
    single distinct standalone letter (the article "A " before a lowercase word is not one), and
    finally the text of exactly one option."""
    letters = LETTERS[:n_choices]
    t = re.sub(r"[*_`]", "", text or "").strip()
    cls = f"([{letters}])"
    end = r"(?![A-Za-z0-9'])"
    for pattern, pick in (
        (rf"(?i:answer|option|choice)(?:\s+(?i:is|would be|:))?\s*[:\-]?\s*[\(\[]?\s*{cls}{end}", -1),
        (rf"\\boxed\{{\s*{cls}\s*\}}", -1),
        (rf"^[\(\[]?{cls}(?:[\)\].:,]|\s*$|\s+(?![a-z]))", 0),
    ):
        found = re.findall(pattern, t)
        if found:
            return letters.index(found[pick])
    standalone = {m.group(1) for m in re.finditer(rf"(?<![A-Za-z0-9']){cls}{end}", t)
                  if not (m.group(1) == "A" and _ARTICLE.match(t, m.end()))}
    if len(standalone) == 1:
        return letters.index(standalone.pop())
    named = [i for i, c in enumerate(choices)
             if c.strip() and re.search(rf"(?<!\w){re.escape(c.strip())}(?!\w)", t, re.IGNORECASE)]
    return named[0] if len(named) == 1 else None


def run_multiple_choice(policy, items: Sequence[dict], mode: str = "generate", prefill: str = "Answer:",
                        max_new_tokens: int = 32, seed: int = 0) -> list[dict]:
    """One result row per item: {id, subject, answer, prediction (letters; None if unparsed),
    correct} plus the response (generate) or each option's log-likelihood (loglik)."""
    prompts = [mc_prompt(it) for it in items]
    rows = [{"id": it["id"], "subject": it["subject"], "answer": LETTERS[it["answer"]]} for it in items]
    if mode == "generate":
        responses = policy.generate(prompts, [prefill or None] * len(items), max_new_tokens, seed)
        for row, it, response in zip(rows, items, responses):
            choice = parse_choice(response, len(it["choices"]), it["choices"])
            row.update(response=response, prediction=None if choice is None else LETTERS[choice])
    elif mode == "loglik":
        lead = " " if prefill else ""
        flat = [(p, prefill or None, lead + LETTERS[j])
                for p, it in zip(prompts, items) for j in range(len(it["choices"]))]
        scores = iter(policy.continuation_logprobs(*zip(*flat)))
        for row, it in zip(rows, items):
            logprobs = [next(scores) for _ in it["choices"]]
            row.update(logprobs=logprobs, prediction=LETTERS[max(range(len(logprobs)), key=logprobs.__getitem__)])
    else:
        raise UserError(f"multiple choice mode must be 'generate' or 'loglik', got {mode!r}")
    for row in rows:
        row["correct"] = row["prediction"] == row["answer"]
    return rows


# ---------------------------------------------------------------- GSM8K

_NUMBER = r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # no minus in "10-15"
GSM8K_INSTRUCTION = ("Solve the math word problem. Reason step by step, then give the final answer as a "
                     "number after '####'.")


def _split_file(directory: Path, split: str) -> Path:
    for suffix in LOCAL_SUFFIXES:
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    raise FileNotFoundError(f"{directory}: no {split}.jsonl (or .json/.csv/.parquet) for GSM8K")


def load_gsm8k(path: str = "openai/gsm8k", split: str = "test", limit: int = 0) -> list[dict]:
    """GSM8K `split` as {id, question, solution, answer}: `answer` is the number after `####`.
    `path`: a directory with train.jsonl/test.jsonl (the original release) or a hub id
    (config "main")."""
    local = is_local(path)
    rows = read_rows(_split_file(Path(path).expanduser(), split) if local else path,
                     config=None if local else "main", split=split)
    items = []
    for i, row in enumerate(rows):
        solution = str(column(row, ("answer",), path, i))
        if "####" not in solution:
            raise UserError(f"{path} ({split}): row {i} has no '####' in its answer")
        answer = extract_number(solution.rsplit("####", 1)[1])
        if answer is None:
            raise UserError(f"{path} ({split}): row {i} has no number after '####'")
        items.append({"id": str(i), "question": str(column(row, ("question",), path, i)), "solution": solution,
                      "answer": answer})
    return _limit(items, limit, path)


def gsm8k_prompt(question: str, fewshot: Sequence[dict] = ()) -> str:
    """Instruction, worked examples (train solutions without their <<calculator>> notes), question."""
    parts = [GSM8K_INSTRUCTION]
    for ex in fewshot:
        solution = re.sub(r"<<[^>]*>>", "", ex["solution"]).strip()
        parts.append(f"Question: {ex['question'].strip()}\nAnswer: {solution}")
    parts.append(f"Question: {question.strip()}")
    return "\n\n".join(parts)


def _canonical(number: str) -> str | None:
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f") if value != 0 else "0"


def extract_number(text: str) -> str | None:
    """The model's final answer as a canonical number string ("1,000.50" -> "1000.5"), or None.

    Text after a new "Question:" (the model continuing the few-shot pattern) is ignored; then the
    first number after `####`, else the last after "answer (is)(:)", else the last number."""
    text = re.split(r"\n\s*Question:", text or "")[0]
    money = r"\s*\$?\s*"
    for pattern, pick in ((rf"####{money}({_NUMBER})", 0), (rf"(?i:answer)(?:\s+is)?\s*:?{money}({_NUMBER})", -1),
                          (rf"({_NUMBER})", -1)):
        found = re.findall(pattern, text)
        if found:
            return _canonical(found[pick])
    return None


def same_number(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted answers ("18" == "18.00"); False if either is missing."""
    if a is None or b is None:
        return False
    return Decimal(a.replace(",", "")) == Decimal(b.replace(",", ""))


def run_gsm8k(policy, items: Sequence[dict], fewshot: Sequence[dict] = (), max_new_tokens: int = 512,
              seed: int = 0) -> list[dict]:
    """One row per item: {id, answer, response, prediction, correct}."""
    responses = policy.generate([gsm8k_prompt(it["question"], fewshot) for it in items], [None] * len(items),
                                max_new_tokens, seed)
    rows = []
    for it, response in zip(items, responses):
        prediction = extract_number(response)
        rows.append({"id": it["id"], "answer": it["answer"], "response": response, "prediction": prediction,
                     "correct": same_number(prediction, it["answer"])})
    return rows


def accuracy(rows: Sequence[dict]) -> dict:
    """{"n", "correct", "accuracy" (%), "unparsed"} of result rows."""
    n, correct = len(rows), sum(bool(r["correct"]) for r in rows)
    return {"n": n, "correct": correct, "accuracy": 100.0 * correct / n if n else None,
            "unparsed": sum(r.get("prediction") is None for r in rows)}
