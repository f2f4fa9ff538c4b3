"""Tiny offline tokenizer builder and chat templates (dss.assets)."""

import json
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from transformers import AutoTokenizer

from dss import assets
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files


@pytest.fixture(scope="module")
def texts():
    """Self-Instruct outputs (unicode, paragraphs) and GSM8K answers with blank lines."""
    with open(DATA / "self_instruct" / "seed_tasks.jsonl") as f:
        outputs = [inst["output"] for line in f for inst in json.loads(line)["instances"]]
    with open(DATA / "gsm8k" / "test.jsonl") as f:
        answers = [json.loads(line)["answer"] for _, line in zip(range(200), f)]
    return outputs + [a.replace(".\n", ".\n\n") for a in answers]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("tok")
    assets.make_tokenizer(out, texts, vocab_size=700, chat_template=assets.POLICY_CHAT_TEMPLATE)
    return out


def test_saved_tokenizer_loads_with_auto_tokenizer(tok_dir, texts):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) >= 700 and tok.chat_template == assets.POLICY_CHAT_TEMPLATE
    named = (tok.bos_token, tok.eos_token, tok.pad_token)
    assert named == ("<|begin_of_text|>", "<|eot_id|>", "<|pad|>")
    for text in texts[:80]:  # byte-level: every text round-trips, offsets index the text
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] and tok.decode(enc["input_ids"]) == text
        spans = dict.fromkeys(enc["offset_mapping"])  # pieces of one character share a span
        assert "".join(text[s:e] for s, e in spans) == text


def test_punctuation_merges_with_following_newlines(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    pieces = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Done.\n\nNext step?!\nOk")
    assert [p for p, _ in pieces] == ["Done", ".ĊĊ", "Next", "Ġstep", "?!Ċ", "Ok"]
    assert ".ĊĊ" in tok.tokenize("It is done.\n\nNext")  # one token across the word's end


def test_verdict_and_special_tokens_are_single_tokens(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for word in assets.VERDICT_WORDS:
        assert tok.tokenize(word) == [word]
    for special in assets.SPECIAL_TOKENS:
        ids = tok.encode(f"a{special}b", add_special_tokens=False)
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == special
        assert special in tok.all_special_tokens


def test_too_small_vocab_is_an_error(tmp_path, texts):
    with pytest.raises(ValueError, match=r"'unsafe' is not a single token with vocab_size=270"):
        assets.make_tokenizer(tmp_path, texts[:20], vocab_size=270)


def test_policy_template_keeps_the_response_verbatim(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    response = "  Two lines.\n\nSecond line \n"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": response}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{response}<|eot_id|>"
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    enc = tok.apply_chat_template(messages, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == response + "<|eot_id|>"


def test_guardrail_templates_fail_loudly(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(TemplateError, match="unknown risk_name nope"):
        tok.apply_chat_template(
            messages, chat_template=assets.GRANITE_GUARDIAN_TEMPLATE, tokenize=False,
            guardian_config={"risk_name": "nope"},
        )
    with pytest.raises(TemplateError, match="pass guideline="):
        tok.apply_chat_template(messages, chat_template=assets.SHIELDGEMMA_TEMPLATE, tokenize=False)


def test_a_random_llama_takes_its_tokenizer_and_seed(tmp_path, tok_dir):
    """dss.tiny, the miniature and the bench build random checkpoints with one function."""
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file

    from dss.models import save_random_llama

    tok = AutoTokenizer.from_pretrained(tok_dir)
    fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        save_random_llama(tmp_path / name, tok, seed=seed, **fields)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32)
    assert hf.config.vocab_size == len(tok) and hf.config.num_hidden_layers == 2
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the seed decides the weights
    assert not np.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    save_random_llama(tmp_path / "v", tok, seed=0, vocab_size=len(tok) + 64, **fields)
    assert load_file(tmp_path / "v" / "model.safetensors")["model.embed_tokens.weight"].shape[0] == len(tok) + 64
