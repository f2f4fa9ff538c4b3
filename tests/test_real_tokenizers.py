"""The checkpoints' own tokenizers (Llama 3, Mistral v3 sentencepiece, Mistral tekken), checked
against their oracles, with the real chat templates: the loss mask is what the model generates,
STAR's shared-KV packing tokenizes every prefix as from scratch, and the verdict tokens are the
ones the real tokenizer emits. Built from the test extra's packages (`tests/real_tokenizers.py`);
nothing is downloaded."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import InstructRequest
from transformers import AutoTokenizer

import dss.data
from dss.data import chat
from dss import segments, templating
from dss.data import BUNDLED_DIR, DEMO_PATH
from dss.guardrails import GuardrailAdapter
from dss.star_score import Guardrail, example_cuts, prefix_plans
import real_tokenizers as real
from real_templates import (LLAMA_3_2_INSTRUCT, LLAMA_GUARD_3_1B, LLAMA_GUARD_3_8B, MISTRAL_INSTRUCT_V0_3,
                            MISTRAL_NEMO_TEKKEN)

VARS = {"date_string": "26 Jul 2024"}  # Llama 3.2's system header, fixed as a run fixes it
MISTRAL_SPACE = 29473  # Mistral v3's lone sentencepiece "▁"


# --------------------------------------------------------------------------------------------
# Fixtures: real tokenizers with real templates, and the strings and examples they are checked on
# --------------------------------------------------------------------------------------------

def _with_template(src: Path, out: Path, template: str) -> Path:
    """A copy of the tokenizer directory `src` carrying another chat template (same vocabulary:
    Llama 3.2 Instruct and Llama Guard 3 share it)."""
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = template
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_tokenizers")
    llama = real.build_llama3(root / "llama-3.2-instruct", LLAMA_3_2_INSTRUCT)
    return {
        "llama-3.2-instruct": llama,
        "llama-guard-3-1b": _with_template(llama, root / "llama-guard-3-1b", LLAMA_GUARD_3_1B),
        "llama-guard-3-8b": _with_template(llama, root / "llama-guard-3-8b", LLAMA_GUARD_3_8B),
        "mistral-v3": real.build_mistral_v3(root / "mistral-7b-instruct-v0.3", MISTRAL_INSTRUCT_V0_3),
        "tekken": real.build_tekken(root / "mistral-nemo-instruct-2407", MISTRAL_NEMO_TEKKEN),
    }


@pytest.fixture(scope="module")
def toks(dirs):
    return {name: AutoTokenizer.from_pretrained(path) for name, path in dirs.items()}


@pytest.fixture(scope="module")
def oracles():
    return {"llama": real.llama3_oracle().model, "mistral-v3": real.mistral_oracle("v3"),
            "tekken": real.mistral_oracle("tekken")}


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _bundled_examples() -> list[dict]:
    """Every single-turn example of the bundled data (GSM8K: the first 300 of train) as prompt /
    response rows, and the AOA identity-shift chats (system + user + assistant)."""
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in _read_jsonl(DEMO_PATH)]
    rows += [{"prompt": r["prompt"], "response": r["response"]}
             for r in _read_jsonl(BUNDLED_DIR / "safety_refusals" / "harmbench_refusals.jsonl")]
    for name in ("user_oriented_instructions.jsonl", "seed_tasks.jsonl"):
        for r in _read_jsonl(BUNDLED_DIR / "self_instruct" / name):
            inst = r["instances"][0]
            if inst["output"].strip():
                rows.append({"prompt": (r["instruction"] + "\n\n" + inst["input"]).strip(), "response": inst["output"]})
    rows += [{"prompt": r["question"], "response": r["answer"]}
             for r in _read_jsonl(BUNDLED_DIR / "gsm8k" / "train.jsonl")[:300]]
    # responses that start with what shares or splits a token with the template's last characters
    for lead in ("1. Put your phone away.", "42", "- a list item", "(aside) text", "...and so on", '"Quoted."',
                 "*bold* start", "#1 rule", "  two leading spaces", "\nStarts on a new line.", "\n\nTwo newlines.",
                 " one leading space", "日本語で答えます。", "🤖 beep", "\tTabbed."):
        rows.append({"prompt": "Answer briefly.", "response": lead})
    return rows


def _chats() -> list[dict]:
    """The AOA chats, each (system, user, assistant), and one three-turn chat made of them."""
    aoa = _read_jsonl(BUNDLED_DIR / "identity_shift_aoa" / "identity-shift-aoa.jsonl")
    chats = [r["messages"] for r in aoa]
    long = [aoa[0]["messages"][0]] + [m for r in aoa[:3] for m in r["messages"][1:]]
    return [{"prompt": c[-2]["content"], "response": c[-1]["content"], "messages": c} for c in chats + [long]]


PIECES = [
    "Hello world", "hello", "HELLO", "don't", "it's", "they'll", "we've", "I'm", "  ", "   ", "\t", "\t\t", "\n",
    "\n\n", "\n\n\n", "\r\n", " \n ", "    indented", "trailing   ", "0", "7", "42", "123", "1234", "12345678901",
    "3.14159", "1,000,000", "2024-07-26", "$19.99", "50%", "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {",
    "{\"key\": [1, 2, 3]}", "x = y + z  # comment", "<div class=\"a\">", "SELECT * FROM t;", "中文文本测试", "日本語のテキスト",
    "한국어 텍스트", "Русский текст", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "café naïve", "Straße",
    "🤖", "🎉🎉", "👨‍👩‍👧‍👦", "🇫🇷", "👍🏽", "✔️", "a…b", "—", "«»", "‘’“”", "...", "!!!", "?!", ".\n\n", ":\n", "**", "##",
]


def varied_strings(n: int = 3000, seed: int = 0) -> list[str]:
    """n strings: windows of the bundled texts cut at random characters (inside words, through
    whitespace runs), and random joins of PIECES (whitespace runs, digits, code, non-Latin
    scripts, emoji, punctuation)."""
    rng = np.random.default_rng(seed)
    corpus = "\n\n".join(ex["prompt"] + "\n" + ex["response"] for ex in _bundled_examples())
    out = []
    while len(out) < n:
        if rng.random() < 0.5:
            a = int(rng.integers(0, len(corpus) - 1))
            out.append(corpus[a:a + int(rng.integers(1, 200))])
        else:
            parts = rng.choice(PIECES, size=int(rng.integers(1, 6)))
            seps = rng.choice(["", " ", "  ", "\n", "\t"], size=len(parts))
            out.append("".join(p + s for p, s in zip(parts, seps)))
    return out


# --------------------------------------------------------------------------------------------
# 1. The tokenizers against their oracles
# --------------------------------------------------------------------------------------------

def test_llama3_special_tokens_and_vocabulary(toks):
    tok, meta = toks["llama-3.2-instruct"], real.llama3_oracle()
    assert len(tok) == 128256 and len(meta.special_tokens) == 256
    assert {name: tok.convert_tokens_to_ids(name) for name in meta.special_tokens} == meta.special_tokens
    assert (tok.bos_token_id, tok.eos_token_id) == (meta.bos_id, meta.eot_id)
    assert tok("<|start_header_id|>assistant<|end_header_id|>", add_special_tokens=False)["input_ids"] == [
        meta.special_tokens["<|start_header_id|>"], *meta.model.encode("assistant"), meta.special_tokens["<|end_header_id|>"]]


def test_llama3_matches_tiktoken(toks, oracles):
    tok, enc = toks["llama-3.2-instruct"], oracles["llama"]
    strings = varied_strings()
    mismatches = [s for s in strings if tok(s, add_special_tokens=False)["input_ids"] != enc.encode(s, disallowed_special=())]
    print(f"Llama 3 vs tiktoken: {len(strings)} strings, {len(mismatches)} mismatches")
    assert not mismatches, mismatches[:5]


def test_tekken_matches_mistral_common(toks, oracles):
    tok, raw = toks["tekken"], oracles["tekken"].instruct_tokenizer.tokenizer
    strings = varied_strings()
    mismatches = [s for s in strings if tok(s, add_special_tokens=False)["input_ids"] != raw.encode(s, bos=False, eos=False)]
    print(f"tekken vs mistral-common: {len(strings)} strings, {len(mismatches)} mismatches")
    assert len(tok) == 131072 and not mismatches, mismatches[:5]


# where the converted sentencepiece tokenizer may segment differently: a leading space (HF's
# Metaspace prepends "▁" only when the text does not start with one; sentencepiece always does) or
# a run of spaces (HF's BPE merges "▁▁" first, sentencepiece's scores may keep "▁word")
SPM_WHITESPACE = re.compile(r"^\s| {2}")


def test_mistral_v3_matches_mistral_common(toks, oracles):
    tok, raw = toks["mistral-v3"], oracles["mistral-v3"].instruct_tokenizer.tokenizer
    strings = varied_strings()
    plain = [s for s in strings if not SPM_WHITESPACE.search(s)]
    runs = [s for s in strings if SPM_WHITESPACE.search(s)]
    ours = {s: tok(s, add_special_tokens=False)["input_ids"] for s in strings}
    mismatches = [s for s in plain if ours[s] != raw.encode(s, bos=False, eos=False)]
    differ = [s for s in runs if ours[s] != raw.encode(s, bos=False, eos=False)]
    print(f"Mistral v3 vs mistral-common: {len(plain)} strings without leading space or space runs, "
          f"{len(mismatches)} mismatches; {len(runs)} with them, {len(differ)} segmented differently")
    assert not mismatches, mismatches[:5]
    # those are other segmentations of the same text, but for sentencepiece's dummy prefix: where the
    # text starts with a space, HF takes that space for it (and its decoder drops it again)
    assert all(tok.decode(ours[s]) == (s[1:] if s.startswith(" ") else s) for s in differ)
    assert len(tok) == 32768 and [tok.convert_ids_to_tokens(i) for i in (1, 2, 3, 4)] == ["<s>", "</s>", "[INST]", "[/INST]"]


def test_mistral_templates_render_as_mistral_commons_generated_ones(toks):
    """The templates of real_templates.py against those mistral-common generates for v3 (spm and
    tekken), on single and multi-turn chats with a system message."""
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion

    for name, spm in (("mistral-v3", True), ("tekken", False)):
        tok = toks[name]
        generated = generate_chat_template(spm, TokenizerVersion.v3, False, False, False, None, False, True,
                                           None, None, None)
        for example in _bundled_examples()[::25] + _chats():
            messages = chat.conversation(example)
            for partial, gen in ((messages, False), (messages[:-1], True)):
                ours = tok.apply_chat_template(partial, tokenize=False, add_generation_prompt=gen)
                theirs = tok.apply_chat_template(partial, chat_template=generated, tokenize=False,
                                                 add_generation_prompt=gen)
                assert ours == theirs, (name, partial)


# --------------------------------------------------------------------------------------------
# 2. The loss mask is what the model generates
# --------------------------------------------------------------------------------------------

def _runs(mask):
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_llama3_mask_is_the_generated_tokens(toks, oracles):
    """Against tiktoken's tokens of the real Llama 3.2 renderings: the tokens after the prompt
    with its generation prompt, through <|eot_id|>; multi-turn chats with every turn trained."""
    tok, enc = toks["llama-3.2-instruct"], oracles["llama"]
    eot = tok.eos_token_id
    encode = lambda text: enc.encode(text, allowed_special="all")
    examples, checked = _bundled_examples() + _chats(), 0
    for example in examples:
        messages = chat.conversation(example)
        for train_on in ("last", "all") if "messages" in example else ("last",):
            ours = dss.data.encode_chat(tok, example, max_length=10**6, train_on=train_on, template_vars=VARS)
            full = encode(templating.render(tok, messages, VARS))
            assert ours.input_ids.tolist() == full
            expected = []
            turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            for i in turns if train_on == "all" else turns[-1:]:
                prompt = encode(templating.render(tok, messages[:i], VARS, add_generation_prompt=True))
                assert full[:len(prompt)] == prompt
                stop = full.index(eot, len(prompt)) + 1
                expected.append(full[len(prompt):stop])
            got = [ours.targets[a:b].tolist() for a, b in _runs(ours.loss_mask)]
            assert got == expected, example["response"][:60]
            checked += 1
    print(f"Llama 3.2 masks vs tiktoken: {checked} encodings ({len(examples)} examples), 0 mismatches")


@pytest.mark.parametrize("name", ["mistral-v3", "tekken"])
def test_mistral_mask_is_what_mistral_common_encodes(name, toks, oracles):
    """Against mistral-common's own chat encoder, which tokenizes the assistant message on its own
    after [/INST] (for v3: sentencepiece's "▁" before a leading digit or punctuation included)."""
    tok, it = toks[name], oracles[name].instruct_tokenizer
    examples = _bundled_examples() + _chats()
    same, differ, leading = 0, [], 0
    for example in examples:
        messages = chat.conversation(example)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [UserMessage(content=m["content"]) if m["role"] == "user" else AssistantMessage(content=m["content"])
                 for m in messages if m["role"] != "system"]
        oracle = it.encode_instruct(InstructRequest(messages=turns, system_prompt=system)).tokens
        ours = dss.data.encode_chat(tok, example, max_length=10**6, template_vars=VARS)
        if ours.input_ids.tolist() != oracle:  # the HF conversion segments a whitespace run differently
            differ.append(example)
            continue
        generated = oracle[len(oracle) - 1 - oracle[::-1].index(4) + 1:]  # after the last [/INST]
        assert ours.targets[ours.loss_mask].tolist() == generated, example["response"][:60]
        if name == "mistral-v3" and example["response"][:1].isdigit():
            assert generated[0] == MISTRAL_SPACE  # the case: the lone "▁" before a digit is trained
        leading += name == "mistral-v3" and generated[0] == MISTRAL_SPACE
        same += 1
    print(f"{name} masks vs mistral-common: {len(examples)} examples, {same} tokenized alike with 0 mask "
          f"mismatches ({leading} starting with a lone sentencepiece space: a digit or punctuation), {len(differ)} tokenized "
          "differently (whitespace runs)")
    assert all(any(SPM_WHITESPACE.search(m["content"]) for m in chat.conversation(ex)) for ex in differ)
    assert same >= 0.85 * len(examples) and (name != "mistral-v3" or leading >= 15)


def test_template_rendering_prompts_otherwise_is_an_error(toks):
    tok = AutoTokenizer.from_pretrained(toks["llama-3.2-instruct"].name_or_path)
    # the generation prompt carries a marker the full rendering lacks
    tok.chat_template = LLAMA_3_2_INSTRUCT.replace("'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}",
                                                   "'<|start_header_id|>assistant<|end_header_id|>\\n\\nA: ' }}")
    with pytest.raises(ValueError, match=r"demo row 4: the chat template of .*llama-3.2-instruct renders the "
                                         r"conversation before the last assistant turn"):
        dss.data.encode_chat(tok, {"prompt": "Hi", "response": "Hello", "source": "demo", "row": 3},
                             template_vars=VARS)


# --------------------------------------------------------------------------------------------
# 3. STAR with the real Llama 3 tokenizer and the Llama Guard 3 templates
# --------------------------------------------------------------------------------------------

def _star_examples():
    rows = _read_jsonl(DEMO_PATH)[:12] + _read_jsonl(BUNDLED_DIR / "safety_refusals" / "harmbench_refusals.jsonl")[:8]
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    rows.append({"prompt": "List two steps.", "response": "Step one:\n\nmix it.\n\nStep two: done!\n\n"})
    return rows


@pytest.mark.parametrize("guard_name", ["llama-guard-3-1b", "llama-guard-3-8b"])
@pytest.mark.parametrize("unit,size", [("word", 1), ("word", 3), ("token", 2)])
def test_shared_kv_prefix_tokens_are_each_prefix_tokenized_from_scratch(guard_name, unit, size, dirs, oracles):
    adapter = GuardrailAdapter.from_pretrained(dirs[guard_name], template_vars=VARS)
    guard = Guardrail(adapter, model=None, path=str(dirs[guard_name]))  # planning needs no weights
    examples = _star_examples()
    cuts = example_cuts(guard, examples, unit, size)
    plans = prefix_plans(guard, examples, cuts)
    prefixes = merged = inside = 0
    for ex, ex_cuts, plan in zip(examples, cuts, plans):
        tail = min(len(s) for s in plan.suffixes if s)
        for k, cut in enumerate(ex_cuts):
            scratch = oracles["llama"].encode(adapter.render(ex["prompt"], ex["response"][:cut]), allowed_special="all")
            packed = plan.full if not plan.suffixes[k] else plan.full[:plan.commons[k]] + plan.suffixes[k]
            assert packed == scratch, (ex["response"][:cut][-30:], unit)
            prefixes += 1
            merged += len(plan.suffixes[k]) > tail
            inside += 0 < cut < len(ex["response"]) and ex["response"][cut - 1].isalnum() and ex["response"][cut].isalnum()
    print(f"{guard_name} {unit}x{size}: {prefixes} prefixes packed as tokenized from scratch (0 mismatches); "
          f"{merged} with tokens merged across the cut, {inside} cut inside a word")
    assert (merged > 0 or size > 1) and (unit != "token" or inside > 0)  # word x1 cuts before every ".\n\n"


@pytest.mark.parametrize("guard_name", ["llama-guard-3-1b", "llama-guard-3-8b"])
def test_llama_guard_verdict_ids_are_what_the_real_tokenizer_emits(guard_name, dirs, oracles):
    enc = oracles["llama"]
    adapter = GuardrailAdapter.from_pretrained(dirs[guard_name], template_vars=VARS)
    assert adapter.verdict_token_ids == (enc.encode("safe")[0], enc.encode("unsafe")[0])
    for ex in _star_examples():
        rendered = adapter.render(ex["prompt"], ex["response"])
        assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        head = enc.encode(rendered, allowed_special="all")
        for verdict, token in zip(("safe", "unsafe"), adapter.verdict_token_ids):
            # the real model writes "\n\n" then the verdict word: one token, after the unchanged prompt
            assert enc.encode(rendered + verdict + "\nS1", allowed_special="all")[: len(head) + 1] == head + [token]


def test_token_weights_map_chunk_scores_to_policy_tokens(toks):
    tok = toks["llama-3.2-instruct"]
    for ex in _star_examples():
        enc = dss.data.encode_chat(tok, ex, template_vars=VARS)
        cuts = segments.word_cuts(ex["response"], chunk_size=2)
        traj = segments.Trajectory(list(cuts), np.linspace(0.9, 0.1, len(cuts)).astype(np.float32))
        scored = enc.loss_mask & ((enc.response_spans[:, 1] >= 0) | enc.after_response)
        w = segments.token_weights(traj, enc.response_spans[scored], enc.after_response[scored])
        for weight, (start, end), after in zip(w, enc.response_spans[scored], enc.after_response[scored]):
            chunk = len(cuts) - 1 if after else next((j for j, c in enumerate(cuts) if c >= end), len(cuts) - 1)
            assert weight == traj.safe_prob[chunk]
            if not after and chunk > 0:  # the token's text lies in its chunk: it ends after the previous cut
                assert end > cuts[chunk - 1]
        assert set(np.round(w, 6)) <= set(np.round(traj.safe_prob, 6)) and w[-1] == traj.safe_prob[-1]


# --------------------------------------------------------------------------------------------
# 4. A tiny pipeline with Llama 3's vocabulary
# --------------------------------------------------------------------------------------------

def test_tiny_spec_with_a_tokenizer_directory_errors(tmp_path, monkeypatch):
    from dss import tiny

    monkeypatch.setenv("DSS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="tiny:policy@/no/such/dir: /no/such/dir is not a directory"):
        tiny.asset("policy@/no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        tiny.asset(f"policy@{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match=r"tiny:judge@x: unknown tiny asset.*tiny:<name>@<tokenizer directory>"):
        tiny.asset("judge@x")


@pytest.mark.slow
def test_tiny_pipeline_with_the_llama3_vocabulary(dirs, tmp_path, monkeypatch):
    """tiny:policy@DIR and tiny:guardrail@DIR around the real Llama 3 tokenizer (Llama 3.2 and
    Llama Guard 3 1B templates): STAR scoring, one STAR-DSS step, an export transformers loads."""
    import torch
    import transformers

    from dss import tiny, train

    monkeypatch.setenv("DSS_CACHE", str(tmp_path / "cache"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
    import tiny as tiny_config

    config = tiny_config.get_config()
    config.model.path = f"tiny:policy@{dirs['llama-3.2-instruct']}"
    config.guardrail.paths = [f"tiny:guardrail@{dirs['llama-guard-3-1b']}"]
    config.template.date_string = VARS["date_string"]
    config.data.sources = [dict(path=str(DEMO_PATH), prompt_field="prompt", response_field="response", limit=8)]
    config.data.max_length = 160  # the demo rows are short: keeps [rows, length, 128,256] scratch small
    config.train.epochs, config.train.max_steps = 1, 1
    config.train.global_batch, config.train.micro_batch = 8, 8  # one row per (fake CPU) device
    workdir = tmp_path / "run"
    metrics = train.train(config, workdir)
    assert np.isfinite(metrics["loss"])
    policy_dir = Path(tiny.asset(f"policy@{dirs['llama-3.2-instruct']}"))
    assert AutoTokenizer.from_pretrained(policy_dir).chat_template == LLAMA_3_2_INSTRUCT
    assert json.loads((policy_dir / "config.json").read_text())["vocab_size"] == 128256
    export = workdir / "export"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert len(tok) == 128256 and tok.chat_template == LLAMA_3_2_INSTRUCT
    with torch.no_grad():
        logits = reloaded(torch.as_tensor([tok("Hello there", add_special_tokens=False)["input_ids"]])).logits
    assert logits.shape[-1] == 128256 and torch.isfinite(logits).all()
