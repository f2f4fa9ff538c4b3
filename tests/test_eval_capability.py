"""Capability benchmarks: GSM8K answer extraction on the real data, letter parsing, loaders, scoring."""

import json
from pathlib import Path

import pytest

from dss.eval import capability as cap
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files


def _gsm8k_rows(split):
    with open(DATA / "gsm8k" / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("split,count", [("train", 1000), ("test", 500)])  # the bundled, trimmed files
def test_gsm8k_reference_answers_parse_to_their_final_numbers(split, count):
    rows = _gsm8k_rows(split)
    items = cap.load_gsm8k(str(DATA / "gsm8k"), split=split)
    assert len(items) == len(rows) == count
    with_commas = 0
    for row, item in zip(rows, items):
        final = row["answer"].rsplit("####", 1)[1].strip()
        with_commas += "," in final
        assert item["answer"] == final.replace(",", "")
        assert cap.extract_number(row["answer"]) == item["answer"]  # the whole solution, as a model writes it
        assert cap.same_number(cap.extract_number(row["answer"]), final)
    assert with_commas >= 4  # "1,080" style answers are exercised


@pytest.mark.parametrize("text,expected", [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("#### 18\n\nQuestion: Another problem? Answer: 5 #### 5", "18"),
    ("She has 5 apples. The answer is 42.", "42"),
    ("The final answer is: $1,234.50", "1234.5"),
    ("Answer: 7 (after 3 steps)", "7"),
    ("So the total is 18.00 dollars", "18"),
    ("It drops by 3, so the change is -3", "-3"),
    ("between 10-15 items; she buys 15", "15"),
    ("####-12", "-12"),
    ("The answer is 1,000,000", "1000000"),
    ("I don't know.", None),
    ("", None),
])
def test_gsm8k_model_style_outputs(text, expected):
    assert cap.extract_number(text) == expected


def test_same_number():
    assert cap.same_number("18", "18.00") and cap.same_number("1,000", "1000")
    assert not cap.same_number("-3", "3") and not cap.same_number(None, "3") and not cap.same_number("3", None)


def test_gsm8k_prompt_uses_train_solutions_without_calculator_notes():
    fewshot = cap.load_gsm8k(str(DATA / "gsm8k"), split="train", limit=8)
    prompt = cap.gsm8k_prompt("How many legs do 3 cats have?", fewshot)
    assert prompt.startswith(cap.GSM8K_INSTRUCTION)
    assert prompt.count("Question: ") == 9 and prompt.count("\n#### ") == 8
    assert "<<" not in prompt and prompt.endswith("Question: How many legs do 3 cats have?")
    assert fewshot[0]["question"].strip() in prompt


@pytest.mark.parametrize("text,expected", [
    ("B", 1), ("B. Paris", 1), ("(C)", 2), (" B) because it is the capital", 1),
    ("The answer is C.", 2), ("Answer: D", 3), ("**Answer: A**", 0), ("The correct answer is (B) because", 1),
    ("I think the answer is B, not A.", 1), ("A good question! The answer is D", 3), ("Option C is correct", 2),
    ("\\boxed{B}", 1), ("I choose B because it is right", 1), ("C\n\nExplanation: the others are wrong", 2),
    ("A", 0), ("A. 42", 0), ("A car is red", None), ("none of these", None), ("answer: b", None), ("", None),
    ("A or B, hard to say", None), ("A is correct", 0), ("E", None),
])
def test_parse_choice(text, expected):
    assert cap.parse_choice(text, 4) == expected


def test_parse_choice_by_option_text_and_five_options():
    options = ["London", "Paris", "Rome", "Berlin"]
    assert cap.parse_choice("It is Paris, of course.", 4, options) == 1
    assert cap.parse_choice("Paris or Rome", 4, options) is None
    assert cap.parse_choice("The answer is E", 5) == 4


def test_mc_prompt():
    item = {"question": "What is 2+2? ", "choices": ["3", "4"], "subject": "high_school_mathematics"}
    assert cap.mc_prompt(item) == ("The following is a multiple choice question about high school mathematics.\n\n"
                                   "What is 2+2?\nA. 3\nB. 4\n\nAnswer with the letter of the correct option.")


def test_mmlu_and_arc_loaders(tmp_path):
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "q0", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2},
        {"question": "q1", "subject": "law", "choices": ["a", "b", "c", "d"], "answer": 0},
    ]))
    items = cap.load_mmlu(str(mmlu))
    assert [(i["id"], i["answer"], i["subject"]) for i in items] == [("0", 2, "anatomy"), ("1", 0, "law")]
    csv_file = tmp_path / "mmlu.csv"
    csv_file.write_text("question,A,B,C,D,answer\nq,w,x,y,z,D\n")
    assert cap.load_mmlu(str(csv_file))[0]["answer"] == 3 and cap.load_mmlu(str(csv_file))[0]["choices"] == list("wxyz")

    arc = tmp_path / "arc.jsonl"
    arc.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "Mercury_1", "question": "q", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
         "answerKey": "B"},
        {"id": "NYSED_2", "question": "q", "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]},
         "answerKey": "4"},
    ]))
    items = cap.load_arc(str(arc), limit=2)
    assert [(i["id"], i["answer"], len(i["choices"])) for i in items] == [("Mercury_1", 1, 3), ("NYSED_2", 3, 4)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "C"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 0 has answer 'C'"):
        cap.load_mmlu(str(bad))


class ScriptedPolicy:
    """Stands in for dss.eval.policy.Policy: fixed responses / option scores."""

    def __init__(self, responses=(), scores=None):
        self.responses, self.scores, self.calls = list(responses), scores, []

    def generate(self, prompts, prefills, max_new_tokens, seed=0):
        self.calls.append((list(prompts), list(prefills), max_new_tokens))
        return [self.responses.pop(0) for _ in prompts]

    def continuation_logprobs(self, prompts, prefills, continuations):
        self.calls.append((list(prompts), list(prefills), list(continuations)))
        return [self.scores[(p, c)] for p, c in zip(prompts, continuations)]


ITEMS = [{"id": "a", "question": "q1", "choices": ["x", "y", "z", "w"], "answer": 1, "subject": None},
         {"id": "b", "question": "q2", "choices": ["x", "y", "z", "w"], "answer": 3, "subject": None},
         {"id": "c", "question": "q3", "choices": ["x", "y"], "answer": 0, "subject": None}]


def test_multiple_choice_generate_and_loglik():
    policy = ScriptedPolicy([" B. y", "I cannot tell", " The answer is A"])
    rows = cap.run_multiple_choice(policy, ITEMS, mode="generate", prefill="Answer:", max_new_tokens=8)
    assert [(r["prediction"], r["correct"]) for r in rows] == [("B", True), (None, False), ("A", True)]
    assert policy.calls[0][1] == ["Answer:"] * 3 and policy.calls[0][2] == 8
    assert cap.accuracy(rows) == {"n": 3, "correct": 2, "accuracy": 200 / 3, "unparsed": 1}

    prompts = [cap.mc_prompt(it) for it in ITEMS]
    best = {0: "C", 1: "D", 2: "A"}
    scores = {(p, f" {letter}"): (0.0 if letter == best[i] else -1.0 - j)
              for i, (p, it) in enumerate(zip(prompts, ITEMS)) for j, letter in enumerate("ABCD"[: len(it["choices"])])}
    policy = ScriptedPolicy(scores=scores)
    rows = cap.run_multiple_choice(policy, ITEMS, mode="loglik", prefill="Answer:")
    assert [r["prediction"] for r in rows] == ["C", "D", "A"] and [r["correct"] for r in rows] == [False, True, True]
    assert len(policy.calls[0][2]) == 4 + 4 + 2
    with pytest.raises(ValueError, match="mode"):
        cap.run_multiple_choice(policy, ITEMS, mode="cloze")


def test_run_gsm8k_scores_numbers():
    items = [{"id": "0", "question": "q", "answer": "18"}, {"id": "1", "question": "r", "answer": "1000"}]
    policy = ScriptedPolicy(["9 * 2 = 18\n#### 18", "The answer is 1,000.00"])
    rows = cap.run_gsm8k(policy, items, fewshot=[], max_new_tokens=64)
    assert [r["correct"] for r in rows] == [True, True] and rows[1]["prediction"] == "1000"
    policy = ScriptedPolicy(["#### 17", "no idea"])
    assert cap.accuracy(cap.run_gsm8k(policy, items)) == {"n": 2, "correct": 0, "accuracy": 0.0, "unparsed": 1}


def test_hub_sources_through_datasets(monkeypatch):
    """Hub ids go to datasets.load_dataset (faked: no network) with the hub layouts and configs."""
    import datasets

    calls = []
    hub = {
        ("cais/mmlu", "all"): {"test": [{"question": "q", "subject": "law", "choices": list("abcd"), "answer": 3}],
                               "dev": [{"question": "x", "subject": "law", "choices": list("abcd"), "answer": 0}]},
        ("allenai/ai2_arc", "ARC-Challenge"): {"test": [{"id": "Q1", "question": "q", "answerKey": "2",
                                                          "choices": {"text": ["a", "b"], "label": ["1", "2"]}}]},
        ("openai/gsm8k", "main"): {"train": [{"question": "t", "answer": "1+1=2\n#### 2"}],
                                   "test": [{"question": "s", "answer": "#### 1,000"}]},
    }

    def load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in hub[(name, config)].items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert [(i["question"], i["answer"]) for i in cap.load_mmlu()] == [("q", 3)]
    assert [(i["id"], i["answer"]) for i in cap.load_arc()] == [("Q1", 1)]
    assert cap.load_gsm8k()[0]["answer"] == "1000" and cap.load_gsm8k(split="train")[0]["answer"] == "2"
    assert [c[1] for c in calls] == ["all", "ARC-Challenge", "main", "main"]
