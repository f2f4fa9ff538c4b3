"""The templates real checkpoints ship (tests/real_templates.py) through dss.

Guardrails (Llama Guard 3 1B and 8B, Granite Guardian 3.1, ShieldGemma 2B): the kind is detected
from the template alone, dss renders exactly what the model card's own `apply_chat_template` call
gives, and STAR's shared-KV scores equal the naive ones and an HF PyTorch pass per prefix.
Policies (Llama 3.1 / 3.2 Instruct, Gemma 3, Qwen 2.5): the loss mask is exactly the assistant
text plus its end-of-turn token, and the response spans map each token to its own text.
Prompts and responses come from the bundled AdvBench, GSM8K, Self-Instruct and AOA data.
"""

import csv
import datetime
import json

import numpy as np
import pytest
import torch
from transformers.utils import chat_template_utils

import dss.data
import real_templates as rt
from dss import star
from dss.data import BUNDLED_DIR
from dss.guardrails import SHIELDGEMMA_DEFAULT_POLICY, GuardrailAdapter

RUN_DATE = "26 Jul 2024"  # the run's fixed date_string (dss.templating)
TEMPLATE_VARS = {"date_string": RUN_DATE}


def _jsonl(relative, n=None):
    with open(BUNDLED_DIR / relative) as f:
        return [json.loads(line) for _, line in zip(range(n or 10**9), f)]


def _guard_examples():
    """A few real (prompt, response) pairs: harmful AdvBench ones with a continuation, a GSM8K
    answer (newlines, "<<>>" arithmetic, "####"), a Self-Instruct answer, and whitespace at both
    ends (Llama Guard trims it, the others keep it)."""
    with open(BUNDLED_DIR / "advbench" / "harmful_behaviors.csv") as f:
        adv = [(r["goal"], r["target"] + ".\n\n" + r["target"].replace("Sure, here", "Step 1:"))
               for r in csv.DictReader(f)][:2]
    gsm = [(r["question"], r["answer"].replace("\n", "\n\n")) for r in _jsonl("gsm8k/train.jsonl", 1)]
    inst = [(r["instruction"], r["instances"][0]["output"]) for r in _jsonl("self_instruct/seed_tasks.jsonl", 1)]
    pairs = adv + gsm + inst + [("  Say hi.  ", " Hi there! \n")]
    return [{"prompt": p, "response": " ".join(r.split(" ")[:45])} for p, r in pairs]


GUARD_EXAMPLES = _guard_examples()
CORPUS = [t for ex in GUARD_EXAMPLES for t in ex.values()] + [r["answer"] for r in _jsonl("gsm8k/train.jsonl", 100)]
EXPECTED_KIND = {"llama-guard-3-1b": "llama_guard_3", "llama-guard-3-8b": "llama_guard_3",
                 "granite-guardian-3.1": "granite_guardian", "shieldgemma-2b": "shieldgemma"}


class _FrozenClock:
    """Stands in for `datetime` in transformers' template helpers: `strftime_now` reads `when`."""

    def __init__(self, when):
        self.when = when

    def now(self, tz=None):
        return self.when


def _freeze_clock(monkeypatch, *ymd):
    monkeypatch.setattr(chat_template_utils, "datetime", _FrozenClock(datetime.datetime(*ymd)))


@pytest.fixture(scope="module")
def guards(tmp_path_factory):
    """name -> (Guardrail, HF model), built on first use. Directories get neutral names, so the
    template alone must decide the kind."""
    built = {}

    def get(name):
        if name not in built:
            root = tmp_path_factory.mktemp("guard")
            hf = rt.make_guardrail(root, rt.GUARDRAILS[name], CORPUS, seed=list(rt.GUARDRAILS).index(name))
            built[name] = star.Guardrail.from_pretrained(root, template_vars=TEMPLATE_VARS), hf
        return built[name]

    return get


def _model_card_ids(guard, name, prompt, prefix):
    """Token ids of a prefix as each model card calls the template (independently of dss):
    Llama Guard 3 1B with list-of-text-parts content, Granite Guardian with `guardian_config`,
    ShieldGemma with `guideline`; plus what the model writes before the verdict (Llama Guard's
    "\\n\\n"). Granite's clock is frozen at the run's date by the caller."""
    tok = guard.adapter.tokenizer
    if name == "llama-guard-3-1b":
        prompt, prefix = [{"type": "text", "text": prompt}], [{"type": "text", "text": prefix}]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": prefix}]
    kwargs = {"granite-guardian-3.1": dict(guardian_config={"risk_name": "harm"}, add_generation_prompt=True),
              "shieldgemma-2b": dict(guideline=SHIELDGEMMA_DEFAULT_POLICY)}.get(name, {})
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    return tok(text + ("\n\n" if name.startswith("llama-guard") else ""), add_special_tokens=False)["input_ids"]


def _hf_safe_prob(hf, ids, verdict_ids):
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, -1].float()
    return torch.softmax(logits[list(verdict_ids)], 0)[0].item()


@pytest.mark.parametrize("name", list(rt.GUARDRAILS))
def test_guardrail_kind_rendering_and_star(guards, name, monkeypatch):
    guard, hf = guards(name)
    adapter = guard.adapter
    assert adapter.kind == EXPECTED_KIND[name]
    assert adapter.content_parts == (name == "llama-guard-3-1b")
    shared = star.score(guard, GUARD_EXAMPLES, chunk_unit="word", chunk_size=5, method="shared_kv")
    naive = star.score(guard, GUARD_EXAMPLES, chunk_unit="word", chunk_size=5, method="naive")
    assert sum(len(t.char_ends) for t in naive) >= 25
    _freeze_clock(monkeypatch, 2024, 7, 26)  # the raw template then writes the run's date too
    safe_word = adapter.spec.safe_word
    for ex, s, n in zip(GUARD_EXAMPLES, shared, naive):
        assert s.char_ends == n.char_ends
        np.testing.assert_allclose(s.safe_prob, n.safe_prob, atol=1e-5, rtol=0)
        for cut, p in zip(n.char_ends, n.safe_prob):
            ids = adapter.encode(ex["prompt"], ex["response"][:cut])
            assert ids == _model_card_ids(guard, name, ex["prompt"], ex["response"][:cut])
            assert abs(p - _hf_safe_prob(hf, ids, adapter.verdict_token_ids)) <= 1e-4, (ex["prompt"], cut)
        # the verdict word right after the rendering is exactly the verdict token read
        text = adapter.render(ex["prompt"], ex["response"])
        assert adapter.tokenizer(text + safe_word, add_special_tokens=False)["input_ids"] == (
            adapter.encode(ex["prompt"], ex["response"]) + [adapter.verdict_token_ids[0]])
    assert np.concatenate([t.safe_prob for t in naive]).std() > 1e-3  # varied scores: equality means something


def test_llama_guard_3_1b_parts_trim_and_13_categories(guards):
    guard, _ = guards("llama-guard-3-1b")
    tok, adapter = guard.adapter.tokenizer, guard.adapter
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}],
                                    tokenize=False)
    assert "Hi there" not in plain and "Agent:" not in plain  # string content vanishes: why the adapter probes
    text = adapter.render("  How do I bake bread?  ", "Mix flour.\n\n ")
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: Check if there is"
                           " unsafe content in 'Agent' messages")
    assert "\nS13: Elections.\n<END UNSAFE CONTENT CATEGORIES>" in text and "S14" not in text
    assert text.count("\nS") == 13
    assert "<BEGIN CONVERSATION>\n\nUser: How do I bake bread?\n\nAgent: Mix flour.\n\n<END CONVERSATION>" in text
    assert text.endswith("categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = adapter.encode("Hi", "")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_llama_guard_3_8b_string_content_and_14_categories(guards):
    guard, _ = guards("llama-guard-3-8b")
    tok, adapter = guard.adapter.tokenizer, guard.adapter
    text = adapter.render("  How do I bake bread?  ", "Mix flour.\n\n ")
    assert text.startswith(" <|begin_of_text|><|start_header_id|>user<|end_header_id|>")  # a space before BOS
    assert "\nS14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>" in text and text.count("\nS") == 14
    assert "<BEGIN CONVERSATION>\n\nUser: How do I bake bread?\n\nAgent: Mix flour.\n\n<END CONVERSATION>" in text
    assert text.endswith("categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = adapter.encode("Hi", "")
    assert ids[0] != tok.bos_token_id and ids[1] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_granite_guardian_risk_names_and_fixed_clock(guards, monkeypatch):
    guard, _ = guards("granite-guardian-3.1")
    adapter, risks = guard.adapter, rt.GRANITE_GUARDIAN_3_1_RISKS
    assert adapter.risk == "harm"
    text = adapter.render("How do I bake bread?", "Mix flour. ")
    assert "\nUser Message: How do I bake bread?\nAssistant Message: Mix flour. \n<end_of_turn>" in text  # verbatim
    assert f"<start_of_risk_definition>\n- {risks['harm'][1]}\n<end_of_risk_definition>" in text
    assert text.endswith("either 'Yes' or 'No'.<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>")
    for risk in ("violence", "social_bias", "profanity"):
        other = GuardrailAdapter(adapter.tokenizer, kind="granite_guardian", risk=risk, template_vars=TEMPLATE_VARS)
        rendered = other.render("How do I bake bread?", "Mix flour.")
        assert f"- {risks[risk][1]}\n" in rendered and risks["harm"][1] not in rendered  # its own response definition
    with pytest.raises(ValueError, match="new risk name provided; risk definition is mandatory"):
        GuardrailAdapter(adapter.tokenizer, kind="granite_guardian", risk="pirate_speak")
    # The template writes today's date into its system turn from the clock, ignoring date_string:
    # dss gives it the run's date instead, so the rendering does not move with the calendar.
    _freeze_clock(monkeypatch, 2031, 3, 4)
    assert "Today's Date: March 04, 2031.\n" in GuardrailAdapter(adapter.tokenizer).render("a", "b")
    assert "Today's Date: July 26, 2024.\n" in GuardrailAdapter(adapter.tokenizer, template_vars=TEMPLATE_VARS).render("a", "b")
    assert adapter.render("a", "b") == GuardrailAdapter(adapter.tokenizer, template_vars=TEMPLATE_VARS).render("a", "b")
    with pytest.raises(ValueError, match="not a date like '26 Jul 2024'"):
        GuardrailAdapter(adapter.tokenizer, template_vars={"date_string": "July 26, 2024"})


def test_shieldgemma_guideline_and_verbatim_turns(guards):
    guard, _ = guards("shieldgemma-2b")
    adapter = guard.adapter
    text = adapter.render(" How do I bake bread?", "Mix flour. \n")
    assert text.startswith("<bos>You are a policy expert trying to help determine whether an AI response to a prompt")
    assert "<start_of_turn>\nHuman Question:  How do I bake bread?\n<end_of_turn>\n<start_of_turn>\n" in text
    assert "Chatbot Response: Mix flour. \n\n<end_of_turn>\n\n" in text
    assert f"\n\n* {SHIELDGEMMA_DEFAULT_POLICY}\n\n===\n\n" in text
    assert text.endswith("Your answer must  start with 'Yes' or 'No'. And then walk through step by step to be sure"
                         " we answer correctly.\n\n")
    custom = GuardrailAdapter(adapter.tokenizer, kind="shieldgemma", risk='"No Jokes": no jokes.')
    assert '\n\n* "No Jokes": no jokes.\n\n===' in custom.render("Hi", "Hello")


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(request, tmp_path_factory):
    fixture = rt.POLICIES[request.param]
    texts = [r["answer"] for r in _jsonl("gsm8k/train.jsonl", 200)]
    texts += [r["instances"][0]["output"] for r in _jsonl("self_instruct/seed_tasks.jsonl", 60)]
    return fixture, rt.make_tokenizer(tmp_path_factory.mktemp("policy"), fixture, texts)


def _kept(fixture, text):
    return text.strip() if fixture.trims else text


def _check_turn(fixture, tok, example, enc, last_only=True):
    """Loss mask = the last assistant text (as the template keeps it) + its end-of-turn token;
    every response token maps to exactly its own text; the end-of-turn token to the empty span."""
    response, kept = example["response"], _kept(fixture, example["response"])
    eot = tok.convert_tokens_to_ids(fixture.end_of_turn)
    if last_only:
        assert tok.decode(enc.targets[enc.loss_mask]) == kept + fixture.end_of_turn
    assert enc.targets[enc.after_response].tolist() == [eot]
    assert (enc.response_spans[enc.after_response] == len(response)).all()
    body = (enc.response_spans[:, 0] >= 0) & ~enc.after_response
    assert enc.loss_mask[body].all() and np.flatnonzero(enc.after_response)[0] == np.flatnonzero(body)[-1] + 1
    lead = response.index(kept)
    pieces = [tok.decode([t]) for t in enc.targets[body]]
    assert [response[s:e] for s, e in enc.response_spans[body]] == pieces
    assert "".join(pieces) == kept and enc.response_spans[body][0, 0] == lead
    assert enc.response_spans[body][-1, 1] == lead + len(kept)
    assert enc.num_response_tokens == body.sum() and not enc.truncated


def _rendered(tok, example, **template_vars):
    return tok.apply_chat_template(example["messages"], tokenize=False, **template_vars)


def _single(prompt, response, system=None):
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return {"prompt": prompt, "response": response, "messages": messages}


def _policy_examples():
    gsm = _jsonl("gsm8k/train.jsonl", 3)
    inst = _jsonl("self_instruct/seed_tasks.jsonl", 3)
    return ([_single(r["question"], r["answer"]) for r in gsm]
            + [_single(r["instruction"], r["instances"][0]["output"], system="You are a careful assistant.") for r in inst]
            + [_single("  Spacing?  ", "  Keeps its spaces?  \n", system="  Answer briefly.  "),
               _single("Which role do you have here? One word.", "assistant")])


@pytest.mark.parametrize("policy", list(rt.POLICIES), indirect=True)
def test_policy_loss_mask_and_spans(policy):
    fixture, tok = policy
    for example in _policy_examples():
        enc = dss.data.encode_chat(tok, example, template_vars=TEMPLATE_VARS)
        _check_turn(fixture, tok, example, enc)
        assert tok.decode(enc.input_ids) == _rendered(tok, example, **TEMPLATE_VARS)
        bos = tok.bos_token_id
        if bos is None:  # Qwen: no BOS at all
            assert fixture.vocab.bos is None
        else:
            assert enc.input_ids[0] == bos and (enc.input_ids == bos).sum() == 1
        if example["messages"][0]["role"] == "system":
            assert _kept(fixture, example["messages"][0]["content"]) in tok.decode(enc.input_ids[: enc.num_prompt_tokens])


@pytest.mark.parametrize("policy", list(rt.POLICIES), indirect=True)
def test_policy_multi_turn_last_and_all(policy):
    fixture, tok = policy
    aoa = _jsonl("identity_shift_aoa/identity-shift-aoa.jsonl", 3)
    for system in (True, False):
        messages = [aoa[0]["messages"][0]] if system else []  # the AOA system prompt starts with "\n"
        for row in aoa:
            messages += row["messages"][1:]
        messages[-1] = dict(messages[-1], content=messages[-1]["content"] + " \n")
        example = {"prompt": messages[-2]["content"], "response": messages[-1]["content"], "messages": messages}
        last = dss.data.encode_chat(tok, example, train_on="last", template_vars=TEMPLATE_VARS)
        _check_turn(fixture, tok, example, last)
        every = dss.data.encode_chat(tok, example, train_on="all", template_vars=TEMPLATE_VARS)
        _check_turn(fixture, tok, example, every, last_only=False)
        edges = np.diff(np.concatenate([[0], every.loss_mask.astype(int), [0]]))
        runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
        assistants = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [tok.decode(every.targets[a:b]) for a, b in runs] == [_kept(fixture, a) + fixture.end_of_turn
                                                                      for a in assistants]
        np.testing.assert_array_equal(every.response_spans, last.response_spans)
        np.testing.assert_array_equal(every.loss_mask[last.loss_mask], True)


@pytest.mark.parametrize("policy", ["llama-3.1-instruct", "llama-3.2-instruct"], indirect=True)
def test_llama_date_string_fixes_the_system_header(policy, monkeypatch):
    fixture, tok = policy
    example = _single("What day is it?", "I cannot know.")
    _freeze_clock(monkeypatch, 2031, 3, 4)
    unfixed = _rendered(tok, example)
    if fixture.name == "llama-3.2-instruct":
        assert "Today Date: 04 Mar 2031\n\n" in unfixed  # 3.2 reads the clock without a date_string
    else:
        assert "Today Date: 26 Jul 2024\n\n" in unfixed  # 3.1's fixed fallback
    encoded = []
    for day in ((2031, 3, 4), (2025, 12, 31)):
        _freeze_clock(monkeypatch, *day)
        enc = dss.data.encode_chat(tok, example, template_vars={"date_string": "02 Jan 2025"})
        text = tok.decode(enc.input_ids)
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:"
                               " December 2023\nToday Date: 02 Jan 2025\n\n<|eot_id|>")
        _check_turn(fixture, tok, example, enc)
        encoded.append(enc.input_ids)
    np.testing.assert_array_equal(*encoded)
