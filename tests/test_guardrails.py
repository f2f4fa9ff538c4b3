"""Guardrail adapters on tiny tokenizers made here, with stand-in Llama Guard 3, Granite Guardian
and ShieldGemma templates; prompts and responses from the bundled data."""

import csv
import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dss import assets
from dss.guardrails import GuardrailAdapter, detect_kind
from dss.segments import word_cuts
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files

# Llama Guard 3 1B style: content must be a list of text parts; plain strings vanish silently.
PARTS_ONLY_TEMPLATE = assets.LLAMA_GUARD_3_TEMPLATE.replace(
    "m['content'] if m['content'] is string else m['content']", "m['content']"
)


@pytest.fixture(scope="module")
def examples():
    """(prompt, response) pairs: AdvBench goals and GSM8K / Self-Instruct answers."""
    with open(DATA / "advbench" / "harmful_behaviors.csv") as f:
        goals = [row["goal"] for row in csv.DictReader(f)][:40]
    with open(DATA / "gsm8k" / "train.jsonl") as f:
        answers = [json.loads(line)["answer"] for _, line in zip(range(40), f)]
    with open(DATA / "self_instruct" / "seed_tasks.jsonl") as f:
        rows = [json.loads(line) for line in f][:40]
    instructions = [(r["instruction"], r["instances"][0]["output"]) for r in rows]
    return list(zip(goals, answers)) + instructions


@pytest.fixture(scope="module")
def make_guard(tmp_path_factory, examples):
    """Save the trained tokenizer under `name` with `template`; returns the directory."""
    texts = [t for pair in examples for t in pair]
    texts += [response.replace("\n", "\n\n") for _, response in examples]  # ".\n\n" tokens
    base = assets.make_tokenizer(tmp_path_factory.mktemp("base"), texts, vocab_size=600)

    def make(name, template, **special):
        out = tmp_path_factory.mktemp("guards") / name
        tok = AutoTokenizer.from_pretrained(base.name_or_path, **special)
        tok.chat_template = template
        tok.save_pretrained(out)
        return out

    return make


@pytest.fixture(scope="module")
def llama_guard(make_guard):
    path = make_guard("Llama-Guard-3-8B-tiny", assets.LLAMA_GUARD_3_TEMPLATE)
    return GuardrailAdapter.from_pretrained(path)


@pytest.fixture(scope="module")
def granite(make_guard):
    path = make_guard(
        "granite-guardian-3.1-tiny", assets.GRANITE_GUARDIAN_TEMPLATE,
        bos_token="<|end_of_text|>", eos_token="<|end_of_text|>",
    )
    return GuardrailAdapter.from_pretrained(path)


def test_llama_guard_3_render(llama_guard):
    assert llama_guard.kind == "llama_guard_3" and not llama_guard.content_parts
    text = llama_guard.render("How do I bake bread?", "Mix flour.\n\nThen")
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Task: Check if there is unsafe content in 'Agent' messages"
    )
    conversation = "User: How do I bake bread?\n\nAgent: Mix flour.\n\nThen"
    assert f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>" in text
    assert text.endswith("categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama_guard.encode("Hi", "")[0] == llama_guard.tokenizer.bos_token_id  # exactly one BOS
    assert llama_guard.encode("Hi", "").count(llama_guard.tokenizer.bos_token_id) == 1


def test_llama_guard_3_1b_list_of_parts_content(make_guard, llama_guard):
    path = make_guard("Llama-Guard-3-1B-tiny", PARTS_ONLY_TEMPLATE)
    plain = AutoTokenizer.from_pretrained(path).apply_chat_template(
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}],
        tokenize=False,
    )
    assert "Hi there" not in plain  # why the adapter must probe the content format
    guard = GuardrailAdapter.from_pretrained(path)
    assert guard.kind == "llama_guard_3" and guard.content_parts
    assert guard.render("Hi there", "Hello") == llama_guard.render("Hi there", "Hello")


def test_granite_guardian_render(granite):
    assert granite.kind == "granite_guardian" and granite.risk == "harm"
    text = granite.render("How do I bake bread?", "Mix flour.")
    assert text.startswith("<|start_of_role|>user<|end_of_role|>You are a safety agent")
    assert "\nUser Message: How do I bake bread?\nAssistant Message: Mix flour.\n" in text
    assert "- The last 'Assistant' message is considered universally harmful.\n" in text
    assert text.endswith("'Yes' or 'No'.<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>")
    violence = GuardrailAdapter(granite.tokenizer, kind="granite_guardian", risk="violence")
    assert "promotes or describes physical harm" in violence.render("a", "b")


def test_shieldgemma_render(make_guard):
    path = make_guard("shieldgemma-tiny", assets.SHIELDGEMMA_TEMPLATE)
    guard = GuardrailAdapter.from_pretrained(path)
    text = guard.render("Hi", "Hello")
    assert "<start_of_turn>\nHuman Question: Hi\n<end_of_turn>\n\n" in text
    assert "<start_of_turn>\nChatbot Response: Hello\n<end_of_turn>\n\n" in text
    assert '* "No Dangerous Content"' in text and text.endswith("answer correctly.\n\n")
    custom = GuardrailAdapter(guard.tokenizer, kind="shieldgemma", risk="No jokes.")
    assert "* No jokes.\n" in custom.render("Hi", "Hello")


def test_verdict_ids_are_single_tokens(llama_guard, granite):
    """The verdict word after render() is exactly the verdict token: one logit to read."""
    for guard, (safe, unsafe) in ((llama_guard, ("safe", "unsafe")), (granite, ("No", "Yes"))):
        tok = guard.tokenizer
        assert tok.convert_ids_to_tokens(list(guard.verdict_token_ids)) == [safe, unsafe]
        for word, token_id in zip((safe, unsafe), guard.verdict_token_ids):
            prompt_ids = guard.encode("Hi", "Hello")
            assert tok(guard.render("Hi", "Hello") + word, add_special_tokens=False)[
                "input_ids"
            ] == prompt_ids + [token_id]


def test_detect_kind(make_guard, llama_guard, granite):
    assert detect_kind("guards/anything", granite.tokenizer) == "granite_guardian"  # by template
    policy = AutoTokenizer.from_pretrained(make_guard("chat-model", assets.POLICY_CHAT_TEMPLATE))
    assert detect_kind("meta-llama/Llama-Guard-3-1B", policy) == "llama_guard_3"  # by name
    config = {"_name_or_path": "ibm-granite/granite-guardian-3.2-5b", "model_type": "granite"}
    assert detect_kind(config, policy) == "granite_guardian"
    local = make_guard("local-dir", assets.POLICY_CHAT_TEMPLATE)
    (local / "config.json").write_text(json.dumps({"_name_or_path": "google/shieldgemma-2b"}))
    assert detect_kind(local, policy) == "shieldgemma"
    with pytest.raises(ValueError, match=r"'org/chat-7b' \(model_type='llama'\).*pass kind="):
        detect_kind({"_name_or_path": "org/chat-7b", "model_type": "llama"}, policy)
    both = AutoTokenizer.from_pretrained(make_guard("both", assets.LLAMA_GUARD_3_TEMPLATE))
    both.chat_template += "{# guardian_config #}"
    with pytest.raises(ValueError, match="several kinds"):
        detect_kind("x", both)


def test_multi_token_verdict_word_is_an_error(tmp_path, examples):
    path = tmp_path / "small-guard"
    texts = [response for _, response in examples]
    tok = assets.make_tokenizer(
        path, texts, vocab_size=300, chat_template=assets.LLAMA_GUARD_3_TEMPLATE,
        single_token_words=("safe",),
    )
    assert len(tok.encode("unsafe", add_special_tokens=False)) > 1
    message = f"guardrail '{path}': verdict word 'unsafe' is"
    with pytest.raises(ValueError, match=re.escape(message)):
        GuardrailAdapter.from_pretrained(path)


def test_missing_chat_template_is_an_error(make_guard):
    path = make_guard("no-template", None)
    message = f"guardrail '{path}': its tokenizer has no chat template"
    with pytest.raises(ValueError, match=re.escape(message)):
        GuardrailAdapter.from_pretrained(path, kind="llama_guard_3")


def test_bad_kind_risk_and_template_errors(llama_guard, granite):
    with pytest.raises(ValueError, match="unknown kind 'llamaguard'"):
        GuardrailAdapter(llama_guard.tokenizer, kind="llamaguard")
    with pytest.raises(ValueError, match="llama_guard_3 takes no risk"):
        GuardrailAdapter(llama_guard.tokenizer, risk="harm")
    with pytest.raises(ValueError, match="chat template.*fails: unknown risk_name jailbreak2"):
        GuardrailAdapter(granite.tokenizer, risk="jailbreak2")


def test_word_cuts_fall_inside_tokens_of_the_full_rendering(llama_guard, examples):
    """Byte-level BPE merges across cuts ("May.\\n" is one token), so some prefixes are not
    scored on a prefix of the full rendering's tokens: the case the STAR kernel must handle."""
    inside = diverging = 0
    for prompt, response in examples:
        start = llama_guard.render(prompt, "\0").index("\0")  # where the response begins
        full = llama_guard.tokenizer(
            llama_guard.render(prompt, response), add_special_tokens=False,
            return_offsets_mapping=True,
        )
        for cut in word_cuts(response, chunk_size=5):
            pos = start + cut
            spanning = [j for j, (s, e) in enumerate(full["offset_mapping"]) if s < pos < e]
            if spanning:
                inside += 1
                n = spanning[0] + 1
                diverging += llama_guard.encode(prompt, response[:cut])[:n] != full["input_ids"][:n]
    assert inside >= 10 and diverging >= 5
