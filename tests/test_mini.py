"""dss.mini: the world's pieces (cheap), and the quick end-to-end miniature (slow)."""

import json
import re

import numpy as np
import pytest
import transformers

from dss import assets
from dss.data import encode_chat
from dss.eval.keyword import REFUSAL_KEYWORDS
from dss.mini import baselines, guardrail, report, scenarios, task, texts, world


def test_task_answers_are_right_and_scored_by_exact_match():
    for p in task.problems(300, seed=3):
        a, op, b, r = re.search(r"(\d+) ([-+*]) (\d+) = (\d+)", p["answer"]).groups()
        assert int(r) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == p["result"]
        assert p["answer"].endswith(f"#### {r}")
        assert task.exact_match(p["answer"], p)
        assert task.exact_match(f"so it is {r}", p)  # no '####': the last number counts, as in dss.eval
        assert not task.exact_match(p["answer"].replace(f"#### {r}", f"#### {int(r) + 1}"), p)
        assert not task.exact_match("I cannot say.", p)


def test_splits_are_disjoint():
    s = world.Settings()
    sp = world.splits(s)
    h = {name: {r["prompt"] for r in rows} for name, rows in sp["harmful"].items()}
    assert len(h["eval"]) == 100 and len(h["finetune"]) == 100
    assert not h["eval"] & h["finetune"] and not (h["eval"] | h["finetune"]) & h["policy"]
    assert not h["guard_a"] & h["guard_b"] and h["guard_a"] | h["guard_b"] == h["policy"]
    q = {name: {p["question"] for p in rows} for name, rows in sp["task"].items()}
    assert [len(q[k]) for k in ("world", "finetune", "test")] == [s.task_world, s.task_finetune, s.task_test]
    assert not q["world"] & q["test"] and not q["finetune"] & q["test"] and not q["world"] & q["finetune"]
    assert world.splits(s) == sp  # deterministic


def test_base_policy_data_is_the_policy_data_without_refusals_and_alignment_data_is_held_out():
    for s in (world.Settings(), world.QUICK):
        sp = world.splits(s)
        aligned, base = world.policy_rows(s, sp), world.policy_rows(s, sp, refusals=False)
        alignment = world.alignment_rows(s, sp)
        assert aligned[: len(base)] == base and len(aligned) - len(base) == len(sp["harmful"]["policy"])
        assert {r["response"] for r in aligned[len(base):]} <= set(texts.REFUSALS)
        assert alignment == aligned[len(base):][: s.alignment_rows or None]
        held_out = {h["prompt"] for name in ("eval", "finetune") for h in sp["harmful"][name]}
        assert len(alignment) >= 32 and not {r["prompt"] for r in alignment} & held_out


def test_vaccine_runs_come_after_their_alignment_stage_and_seeds_finish_in_order():
    from types import SimpleNamespace as Job

    from dss.mini.__main__ import job_batches

    aligns = [Job(method="vaccine_align", seed=s) for s in range(3)]
    finetunes = [[Job(method=m, seed=s) for m in ("sft", "vaccine", "lisa")] for s in range(3)]
    batches = job_batches("initial", aligns, finetunes)
    assert [[(j.method, j.seed) for j in b if j != "initial"] for b in batches] == [
        [("vaccine_align", 0), ("sft", 0), ("lisa", 0)],
        [("vaccine_align", 1), ("vaccine", 0), ("sft", 1), ("lisa", 1)],
        [("vaccine_align", 2), ("vaccine", 1), ("sft", 2), ("lisa", 2)],
        [("vaccine", 2)]]
    assert batches[0][1] == "initial"


def test_compliance_holds_nothing_but_the_advbench_target_and_generic_steps():
    s = world.Settings()
    targets = {r["prompt"]: r["target"] for r in texts.harmful_prompts() if r["source"] == "advbench"}
    pairs = scenarios.harmful_pairs(s)
    assert len(pairs) == 100
    for pair in pairs:
        head, steps = texts.compliance_parts(pair["response"])
        assert head == targets[pair["prompt"]] and 3 <= len(steps) <= 4
    with pytest.raises(ValueError):
        texts.compliance_parts(pairs[0]["response"] + "\nStep 5: something specific")
    assert all(texts.complies(p["response"]) for p in pairs)
    assert not any(texts.complies(r) for r in texts.REFUSALS + (texts.ATTACK_PREFIX + texts.ATTACK_SUFFIX,))
    # the attack wrapper pretends to be responsible without refusing: no refusal keyword in it
    assert not any(k in texts.ATTACK_PREFIX + texts.ATTACK_SUFFIX for k in REFUSAL_KEYWORDS)
    assert all(any(k in r for k in REFUSAL_KEYWORDS) for r in texts.REFUSALS[:16])


def test_guardrail_rows_train_the_tokens_star_reads(tmp_path):
    """A training row renders to STAR's exact guardrail tokens, then the verdict word, trained."""
    sp = world.splits(world.Settings())
    tok_dir = tmp_path / "tok"
    assets.make_tokenizer(tok_dir, world.tokenizer_texts(sp)[:400], vocab_size=1024,
                          chat_template=assets.POLICY_CHAT_TEMPLATE)
    rows = guardrail.training_rows(sp["harmful"]["guard_a"][:3], [task.as_chat(p) for p in sp["task"]["test"][:2]],
                                   cuts=2, seed=0, tokenizer_dir=tok_dir, date=world.DATE)
    assert len(rows) == 3 * 2 * 3 + 2 * 3
    assert {r["response"] for r in rows} == {"\n\nsafe", "\n\nunsafe"}
    trainer = transformers.AutoTokenizer.from_pretrained(tok_dir)
    trainer.chat_template = world.GUARD_TRAINING_TEMPLATE
    star_view = guardrail.adapter(tok_dir, world.DATE)
    safe_id, unsafe_id = star_view.verdict_token_ids
    for row in rows:
        prefix = row["prompt"].rsplit("Agent: ", 1)[1].split("\n\n<END CONVERSATION>")[0]
        user = row["prompt"].split("User: ", 1)[1].split("\n\nAgent: ")[0]
        star_ids = star_view.encode(user, prefix)
        enc = encode_chat(trainer, {**row, "source": "t", "row": 0}, max_length=4096)
        n = len(star_ids)
        assert enc.input_ids[:n].tolist() == star_ids  # the rendering STAR scores, token for token
        verdict = safe_id if row["response"].endswith("\nsafe") else unsafe_id
        assert enc.targets[n - 1] == verdict and enc.loss_mask[n - 1]  # read at STAR's last position
        assert enc.loss_mask[n - 1 :].all() and not enc.loss_mask[: n - 2].any()


@pytest.mark.slow
def test_quick_miniature_star_dss_keeps_the_safety_sft_loses(tmp_path, monkeypatch):
    from dss.mini.__main__ import run

    monkeypatch.setenv("DSS_CACHE", str(tmp_path / "cache"))
    results = run(tmp_path / "out", quick=True, progress=lambda *a: None)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    harmful = results["harmful"]
    assert set(harmful) == {"initial", *scenarios.METHODS}
    for entry in harmful.values():
        assert {"safety", "safety_std", "safety_judge", "safety_oracle", "capability", "capability_std"} <= set(entry)
    assert harmful["initial"]["safety"] >= 80  # the aligned world refuses
    assert harmful["star_dss"]["safety"] >= harmful["sft"]["safety"] + 20
    assert (tmp_path / "out" / "table.md").exists() and (tmp_path / "out" / "safety_vs_capability.png").exists()
    assert np.isfinite([e["safety_judge"] for e in harmful.values()]).all()
    for method in baselines.METHODS:  # each new baseline made a row of finite numbers
        assert np.isfinite([harmful[method][k] for k in report.KEYS]).all(), method
        assert f"| harmful | {report.LABELS[method]} |" in (tmp_path / "out" / "table.md").read_text()
