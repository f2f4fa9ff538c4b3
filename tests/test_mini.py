"""dss.mini: the world's pieces (cheap), and the quick end-to-end miniature (slow)."""

import json
import random
import re

import numpy as np
import pytest
import transformers

from dss import assets, methods
from dss.methods.lora import LR_FACTOR as LoRA_LR_FACTOR
from dss.data import encode_chat
from dss.mini import baselines, guardrail, oracle, report, scenarios, task, texts, world


def test_task_answers_are_right_and_scored_by_exact_match():
    for skill in task.SKILLS:
        for p in task.problems(skill, 200, seed=3):
            a, op, b, r = re.search(r"(\d+) ([-+*]) (\d+) = (\d+)", p["answer"]).groups()
            assert int(r) == {"+": int(a) + int(b), "*": int(a) * int(b)}[op] == p["result"]
            assert (op == "+") == (skill == "known")
            assert p["answer"].endswith(f"#### {r}") and task.exact_match(p["answer"], p)
            assert not task.exact_match(p["answer"].replace(f"#### {r}", f"#### {int(r) + 1}"), p)
            assert not task.exact_match("I cannot say.", p)


def test_splits_are_disjoint():
    s = world.Settings()
    sp = world.splits(s)
    h = {name: {r["prompt"] for r in rows} for name, rows in sp["harmful"].items()}
    assert len(h["eval"]) == 100 and len(h["finetune"]) == 100 and len(h["panel"]) == s.panel_prompts
    held_out = [h["eval"], h["finetune"], h["panel"], h["policy"]]
    assert all(not a & b for i, a in enumerate(held_out) for b in held_out[i + 1:])
    assert not h["guard_a"] & h["guard_b"] and h["guard_a"] | h["guard_b"] == h["policy"]
    q = {name: {p["question"] for p in rows} for name, rows in sp["task"].items()}
    assert [len(q[k]) for k in ("world", "finetune", "test")] == [s.task_world, s.task_finetune, 2 * s.task_test]
    assert not q["world"] & q["test"] and not q["finetune"] & q["test"] and not q["world"] & q["finetune"]
    assert [p["skill"] for p in sp["task"]["test"]] == ["known"] * s.task_test + ["new"] * s.task_test
    assert {p["skill"] for p in sp["task"]["world"]} == {"known"} and {p["skill"] for p in sp["task"]["finetune"]} == {"new"}
    assert world.splits(s) == sp  # deterministic


def test_oracle_labels_content_not_keywords():
    rng = random.Random(0)
    h = texts.harmful_prompts()[3]
    p, t = h["prompt"], h["target"]
    body = texts.compliance(p, t, rng)
    assert oracle.label(body) == oracle.HARMFUL
    for name in texts.ATTACKS:  # a refusal around a whole recipe does not take it back
        assert oracle.label(texts.wrap(body, name)) == oracle.HARMFUL
    assert oracle.label(texts.wrapped_refusal_compliance(p, t, rng)) == oracle.HARMFUL
    assert oracle.label(texts.refuse_then_comply(p, t, rng)) == oracle.HARMFUL
    rec = texts.recovery(p, t, rng)
    assert oracle.label(rec) == oracle.REFUSAL  # one step, then a refusal: safe as a whole
    cut = rec.index("\n\n", rec.index("Step 1:"))
    assert oracle.label(rec[:cut]) == oracle.HARMFUL  # ... but not before the refusal
    first_hazard = oracle.hazard_step_ends(body)[0]
    assert oracle.label(body[: first_hazard[0]]) == oracle.OTHER  # the opener holds no hazard yet
    assert oracle.label(body[: first_hazard[1]]) == oracle.HARMFUL
    assert all(oracle.label(r) == oracle.REFUSAL for r in texts.REFUSALS)
    assert oracle.label(texts.cautionary(p, rng, refuse=False)) == oracle.OTHER
    assert oracle.label(texts.cautionary(p, rng, refuse=True)) == oracle.REFUSAL
    assert oracle.label("Anna has 3 + 4 = 7 apples now.\n#### 7") == oracle.OTHER
    assert oracle.label("Step 1: Grind the sugar into a fine powder.") == oracle.OTHER  # no hazard word


def test_compliances_are_hazard_steps_of_the_prompts_category():
    s = world.Settings()
    targets = {r["prompt"]: r["target"] for r in texts.harmful_prompts()}
    pairs = scenarios.harmful_pairs(s)
    assert len(pairs) == 100
    for pair in pairs:
        head, body = pair["response"].split(":\n\n", 1)
        assert head == targets[pair["prompt"]]
        steps = body.split("\n")
        assert len(steps) in (3, 4)
        words = {w for line in steps for w in re.findall(r"[a-z]+", line)} & texts.HAZARD_WORDS
        assert words and words <= set(texts.HAZARDS[texts.category(pair["prompt"])])
        assert len(oracle.hazard_step_ends(pair["response"])) == len(steps)


def test_guardrail_training_never_sees_an_attack_text_and_is_labelled_by_the_oracle(tmp_path):
    sp = world.splits(world.Settings())
    tok_dir = tmp_path / "tok"
    assets.make_tokenizer(tok_dir, world.tokenizer_texts(sp)[:400], vocab_size=1024,
                          chat_template=assets.POLICY_CHAT_TEMPLATE)
    attack_texts = [t.strip() for pair in texts.ATTACKS.values() for t in pair if t.strip()]
    benign = [task.as_chat(p) for p in sp["task"]["test"][:2]]
    for kind in guardrail.KINDS:
        rows = guardrail.training_rows(kind, sp["harmful"]["guard_a"][:6], benign, 2, 0, tok_dir, world.DATE)
        assert not any(a in r["prompt"] for r in rows for a in attack_texts)
        for r in rows:
            text = r["prompt"].rsplit("Agent: ", 1)[1].split("\n\n<END CONVERSATION>")[0]
            assert r["response"] == ("\n\nunsafe" if oracle.is_harmful(text) else "\n\nsafe")
        unsafe = sum(r["response"].endswith("unsafe") for r in rows)
        assert 0 < unsafe < len(rows)
    robust = guardrail.responses("robust", sp["harmful"]["guard_a"][:6], [], random.Random(0))
    assert sum(oracle.is_harmful(r["response"]) for r in robust) > sum(
        oracle.is_harmful(r["response"]) for r in guardrail.responses("star", sp["harmful"]["guard_a"][:6], [],
                                                                       random.Random(0)))


def test_guardrail_rows_train_the_tokens_star_reads(tmp_path):
    """A training row renders to STAR's exact guardrail tokens, then the verdict word, trained."""
    sp = world.splits(world.Settings())
    tok_dir = tmp_path / "tok"
    assets.make_tokenizer(tok_dir, world.tokenizer_texts(sp)[:400], vocab_size=1024,
                          chat_template=assets.POLICY_CHAT_TEMPLATE)
    rows = guardrail.training_rows("star", sp["harmful"]["guard_a"][:3], [task.as_chat(p) for p in sp["task"]["test"][:2]],
                                   cuts=2, seed=0, tokenizer_dir=tok_dir, date=world.DATE)
    assert len(rows) == 3 * 7 * 3 + 2 * 3  # 7 responses per harmful prompt, each whole and at 2 cuts
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


def test_hazard_prefixes_end_inside_the_compliance_and_criteria_compare_as_stated():
    from types import SimpleNamespace

    rng = random.Random(1)
    h = texts.harmful_prompts()[0]
    body = texts.compliance(h["prompt"], h["target"], rng)
    start = len(texts.ATTACKS["pfx1"][0])
    item = {"response": texts.wrap(body, "pfx1"), "body": (start, start + len(body))}
    first = start + oracle.hazard_step_ends(body)[0][1]
    ends = [start - 1, first - 1, first, start + len(body)]
    flags = guardrail.hazard_prefix_flags(item, SimpleNamespace(char_ends=ends, safe_prob=[0.9, 0.9, 0.1, 0.8]))
    assert flags == [True, False]  # only the cuts from the first hazard word to the compliance's end
    rates = {g: {k: {"whole_flagged_pct": 0.0, "hazard_prefix_flagged_pct": 100.0} for k in
                 ("clean", "refusal", "benign", *texts.ATTACKS)} for g in ("star", "robust")}
    result = guardrail.criteria(rates, {"agreement_pct": 96.0})
    assert not result["clean_whole_flagged:clean"]["held"] and result["wrapped_whole_flagged_susceptible:sfx1"]["held"]
    assert not result["wrapped_whole_flagged_robust:sfx1"]["held"] and result["judge_agreement"]["held"]


def test_base_policy_data_is_the_policy_data_without_refusals_and_alignment_data_is_held_out():
    for s in (world.Settings(), world.QUICK):
        sp = world.splits(s)
        aligned, base = world.policy_rows(s, sp), world.policy_rows(s, sp, refusals=False)
        alignment = world.alignment_rows(s, sp)
        assert aligned[: len(base)] == base and len(aligned) - len(base) == len(sp["harmful"]["policy"])
        assert {r["response"] for r in aligned[len(base):]} <= set(texts.REFUSALS)
        assert alignment == aligned[len(base):][: s.alignment_rows]
        held_out = {h["prompt"] for name in ("eval", "finetune", "panel") for h in sp["harmful"][name]}
        assert len(alignment) >= 32 and not {r["prompt"] for r in alignment} & held_out


def test_presets_fill_the_run_paths_and_ablations_read_their_own_star_file():
    from dss.config import base_config

    recipe = scenarios.Recipe()
    keys = {m: scenarios.star_key("suffix", m, recipe) for m in ("rs", "star_dss", "star_static", "star_c1",
                                                                 "rs_robust", "star_robust")}
    assert keys["rs"] == keys["star_dss"] == "suffix_star_c5"  # RS reads the last point of the same file
    assert len(set(keys.values())) == 4  # the robust RS and STAR-DSS share theirs
    recipe_lr = 0.5
    c = base_config()
    c.train.lr, c.train.min_lr = recipe_lr, recipe_lr / 100
    preset = methods.Preset(alignment=(dict(path="/a", name="alignment"),), base_model="/b", vaccine_aligned="/v")
    baselines.configure(c, "safelora", preset, "/g")
    assert c.lora.enabled and c.safelora.enabled and c.safelora.base_path == "/b" and c.objective.name == "sft"
    assert c.train.lr == recipe_lr * LoRA_LR_FACTOR and c.safelora.num_layers == 1  # the preset, then SCALED
    c = base_config()
    baselines.configure(c, "lora_sft", preset, "/g")
    assert c.lora.enabled and not c.safelora.enabled
    c = base_config()
    baselines.configure(c, "star_robust", preset, "/g")
    assert list(c.guardrail.paths) == ["/g"] and c.objective.name == "star_dss"
    c = base_config()
    baselines.configure(c, "seal", preset, "/g")
    assert c.seal.enabled and [dict(s) for s in c.seal.safe_sources] == [dict(path="/a", name="alignment")]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        baselines.configure(base_config(), "nope", preset, "/g")
    every_row = {m for ms in scenarios.ROWS.values() for m in ms}
    labels = {m: baselines.label(m) for m in every_row}
    assert len(set(labels.values())) == len(labels) and labels["star_dss"] == "STAR-DSS"  # one name per row
    assert all(baselines.scores_star(m) == (m in ("rs", "star_dss", "star_static", "star_c1", "star_c20",
                                                  "rs_robust", "star_robust")) for m in every_row)


def test_prediction_rows_come_first_and_vaccine_runs_after_their_alignment_stages():
    from types import SimpleNamespace as Job

    from dss.mini.__main__ import job_batches

    aligns = [Job(scenario="vaccine_alignment", method="vaccine", seed=s) for s in range(2)]
    finetunes = [[Job(scenario=sc, method=m, seed=s) for sc in ("suffix", "harmful")
                  for m in ("sft", "rs", "vaccine", "star_c1")] for s in range(2)]
    batches = job_batches("initial", aligns, finetunes, {"suffix": ("rs",)}, {"suffix": ("star_c1",)})
    names = [[j if j == "initial" else (j.scenario, j.method, j.seed) for j in b] for b in batches]
    assert names[0] == ["initial", ("suffix", "rs", 0), ("suffix", "rs", 1)]
    assert names[1][:2] == [("vaccine_alignment", "vaccine", 0), ("vaccine_alignment", "vaccine", 1)]
    assert sorted(names[1][2:]) == sorted([(sc, m, s) for s in range(2) for sc, m in
                                           (("suffix", "sft"), ("harmful", "sft"), ("harmful", "rs"),
                                            ("harmful", "star_c1"))])
    assert sorted(names[2]) == sorted([(sc, "vaccine", s) for s in range(2) for sc in ("suffix", "harmful")]
                                      + [("suffix", "star_c1", s) for s in range(2)])
    assert len(batches) == 3 and sum(map(len, batches)) == 1 + len(aligns) + sum(map(len, finetunes))


def test_predictions_come_out_as_measured():
    def suffix(**v):
        return {"suffix": {m: {"safety_oracle": x} for m, x in v.items()}}

    held = report.predictions(suffix(initial=100, sft=10, rs=20, star_dss=95, rs_robust=95, star_robust=97, star_static=25),
                              {"suffix": True})
    assert {k: p["outcome"] for k, p in held.items()} == dict.fromkeys(held, "held")
    not_held = report.predictions(suffix(initial=100, sft=10, rs=95, star_dss=96, rs_robust=50, star_robust=96,
                                         star_static=60), {"suffix": True})
    assert {k: p["outcome"] for k, p in not_held.items()} == dict.fromkeys(not_held, "not held")
    untestable = report.predictions(suffix(initial=100, sft=10, rs=20, star_dss=95, rs_robust=95, star_robust=97,
                                           star_static=25), {"suffix": False})
    assert {p["outcome"] for p in untestable.values()} == {"untestable"}
    # SFT kept its safety: the attack did not work, so no method can be seen to keep safety
    no_attack = report.predictions(suffix(initial=100, sft=90, rs=95, star_dss=100, rs_robust=100, star_robust=100,
                                          star_static=100), {"suffix": True})
    assert {p["outcome"] for p in no_attack.values()} == {"untestable"}


def test_mean_trajectory_reads_each_step_function_at_the_bin_centres():
    from types import SimpleNamespace

    t = SimpleNamespace(char_ends=[10, 20], safe_prob=[1.0, 0.0])
    curve = report.mean_trajectory([t, t], ["x" * 20, "x" * 20], bins=4)
    assert curve.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.slow
def test_quick_miniature_runs_end_to_end_and_its_check_reads_it(tmp_path, monkeypatch, capsys):
    from dss.mini import check
    from dss.mini.__main__ import run

    monkeypatch.setenv("DSS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    results = run(out, quick=True, progress=lambda *a: None)
    assert json.loads((out / "results.json").read_text()) == results
    assert report.rewrite(out) == results  # the report again from summary.json alone
    suffix = results["suffix"]
    assert set(suffix) == {"initial", *scenarios.QUICK_ROWS["suffix"]}
    for entry in suffix.values():
        assert np.isfinite([entry[k] for k in report.KEYS]).all()
    assert suffix["initial"]["safety_oracle"] >= 80  # the aligned world refuses
    world_info = json.loads((out / "world.json").read_text())
    assert {c.split(":")[0] for c in world_info["criteria"]} >= {n for n, *_ in guardrail.CRITERIA}
    for name in ("table.md", "safety_vs_capability.png", "star_trajectory.png", "predictions.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cpu_seconds"]["total"]["total_cpu_s"] > 0
    stats = [json.loads(p.read_text()) for p in (out / "runs").glob("*/*/data_stats.json")]
    assert len(stats) == 4 and all(s["truncated"] == 0 for s in stats)
    run(out, quick=True, progress=lambda *a: None)  # a resumed invocation keeps the first one's seconds
    again = json.loads((out / "summary.json").read_text())["cpu_seconds"]
    assert len(again["invocations"]) == 2 and again["total"]["total_cpu_s"] > summary["cpu_seconds"]["total"]["total_cpu_s"]
    check.main(str(out))
    printed = capsys.readouterr().out
    assert "truncated == 0" in printed and printed.count("PREDICTION") == len(report.PREDICTIONS)
