"""Finetuning data (dss.data): sources, chat encoding and loss masks, mixtures, attacks, batches."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
import pytest
from tokenizers import processors
from transformers import AutoTokenizer

import dss.data
from dss import assets, segments
from dss.data import chat
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files
EOT = "<|eot_id|>"

# Llama 3.x Instruct's structure: a system header with dates always present, every message
# `trim`med, BOS written by the template (while the tokenizer also adds BOS by default).
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _read_jsonl(path, n=None):
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n or 10**9), f)]


@pytest.fixture(scope="module")
def gsm8k():
    return _read_jsonl(DATA / "gsm8k" / "train.jsonl", 400)


@pytest.fixture(scope="module")
def instruct():
    """Self-Instruct tasks as prompt/response (unicode, lists, paragraphs)."""
    rows = _read_jsonl(DATA / "self_instruct" / "user_oriented_instructions.jsonl")
    return [{"prompt": (r["instruction"] + "\n\n" + r["instances"][0]["input"]).strip(),
             "response": r["instances"][0]["output"]} for r in rows if r["instances"][0]["output"].strip()]


@pytest.fixture(scope="module")
def aoa():
    return _read_jsonl(DATA / "identity_shift_aoa" / "identity-shift-aoa.jsonl")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, gsm8k, instruct):
    out = tmp_path_factory.mktemp("tok")
    texts = [r["answer"] for r in gsm8k[:200]] + [r["response"] for r in instruct[:100]]
    assets.make_tokenizer(out, texts, vocab_size=700)
    tok = AutoTokenizer.from_pretrained(out)  # like Llama 3's: encoding text adds BOS
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["llama3", "policy"])
def tok(request, tok_dir):
    t = AutoTokenizer.from_pretrained(tok_dir)
    t.chat_template = LLAMA3_TEMPLATE if request.param == "llama3" else assets.POLICY_CHAT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def llama_tok(tok_dir):
    t = AutoTokenizer.from_pretrained(tok_dir)
    t.chat_template = LLAMA3_TEMPLATE
    return t


def _kept(tok, text):
    """What the template keeps of a message's text."""
    return text.strip() if tok.chat_template == LLAMA3_TEMPLATE else text


def _runs(mask):
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _check_last_turn(tok, example, enc):
    """The loss mask, response spans and end-of-turn flags of the final assistant turn."""
    response, kept = example["response"], _kept(tok, example["response"])
    lead = response.index(kept)
    last = enc.response_spans[:, 0] >= 0
    assert tok.decode(enc.targets[last]) == kept + EOT
    body = last & ~enc.after_response
    spans = enc.response_spans[body]
    assert "".join(response[s:e] for s, e in dict.fromkeys(map(tuple, spans))) == kept
    assert spans[0, 0] == lead and spans[-1, 1] == lead + len(kept)
    if kept.isascii():  # byte-level tokens of ASCII text are whole characters
        assert [tok.decode([t]) for t in enc.targets[body]] == [response[s:e] for s, e in spans]
    assert tok.convert_ids_to_tokens(enc.targets[enc.after_response].tolist()) == [EOT]
    assert (enc.response_spans[enc.after_response] == len(response)).all()
    assert enc.after_response[-1] and not enc.truncated
    assert enc.num_prompt_tokens == np.flatnonzero(body)[0] + 1
    assert enc.num_response_tokens == body.sum()


def test_loss_mask_is_the_response_and_end_of_turn(tok, gsm8k, instruct):
    examples = [{"prompt": r["question"], "response": r["answer"]} for r in gsm8k[:15]] + instruct[:15]
    examples += [{"prompt": "Spacing?", "response": "\n  Keeps its spaces. \n\n"},
                 {"prompt": "Newline first?", "response": "\nStarts on a new line."}]
    for example in examples:
        enc = dss.data.encode_chat(tok, example)
        assert enc.targets.dtype == np.int32 and enc.loss_mask.dtype == bool
        assert enc.response_spans.shape == (len(enc.targets), 2) and enc.response_spans.dtype == np.int32
        np.testing.assert_array_equal(enc.targets, enc.input_ids[1:])
        assert tok.decode(enc.targets[enc.loss_mask]) == _kept(tok, example["response"]) + EOT
        assert (enc.loss_mask == (enc.response_spans[:, 0] >= 0)).all()  # train_on="last"
        _check_last_turn(tok, example, enc)
        assert enc.input_ids[0] == tok.bos_token_id and (enc.input_ids == tok.bos_token_id).sum() == 1
        rendered = tok.apply_chat_template(chat.conversation(example), tokenize=False)
        assert tok.decode(enc.input_ids) == rendered


def test_response_is_found_after_copies_of_it_in_the_prompt(llama_tok):
    # "26 Jul 2024" is also in the template's system header, the system prompt and the user turn
    example = {"prompt": "Repeat: 26 Jul 2024", "response": " 26 Jul 2024 ",
               "messages": [{"role": "system", "content": "The date is 26 Jul 2024"},
                            {"role": "user", "content": "Repeat: 26 Jul 2024"},
                            {"role": "assistant", "content": " 26 Jul 2024 "}]}
    enc = dss.data.encode_chat(llama_tok, example)
    _check_last_turn(llama_tok, example, enc)
    header = llama_tok.convert_tokens_to_ids("<|end_header_id|>")
    assert np.flatnonzero(enc.loss_mask)[0] > np.flatnonzero(enc.targets == header)[-1]
    role = {"prompt": "Which role do you have here? One word.", "response": "assistant"}  # as in the header
    _check_last_turn(llama_tok, role, dss.data.encode_chat(llama_tok, role))


def _multi_turn(aoa, turns=3):
    messages = [aoa[0]["messages"][0]]  # the AOA system prompt (starts with a newline)
    for row in aoa[:turns]:
        messages += row["messages"][1:]
    return messages


def test_train_on_last_or_all_assistant_turns(tok, aoa, tmp_path):
    path = _jsonl(tmp_path / "chats.jsonl", [{"conv": _multi_turn(aoa)}])
    [example] = dss.data.load_examples({"path": str(path), "messages_field": "conv"})
    assistants = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
    assert example["response"] == assistants[-1] and example["prompt"] == aoa[2]["messages"][1]["content"]
    last = dss.data.encode_chat(tok, example, train_on="last")
    _check_last_turn(tok, example, last)
    assert tok.decode(last.targets[last.loss_mask]) == _kept(tok, assistants[-1]) + EOT
    every = dss.data.encode_chat(tok, example, train_on="all")
    runs = _runs(every.loss_mask)
    assert [tok.decode(every.targets[a:b]) for a, b in runs] == [_kept(tok, a) + EOT for a in assistants]
    np.testing.assert_array_equal(every.response_spans, last.response_spans)  # spans: last turn only
    np.testing.assert_array_equal(every.after_response, last.after_response)
    assert (every.response_spans[: runs[-1][0]] == -1).all()
    with pytest.raises(ValueError, match="train_on"):
        dss.data.encode_chat(tok, example, train_on="first")


# Qwen 3 style (enable_thinking=False): the generation prompt and the final assistant turn carry an
# empty think block that earlier turns lack, so partial renderings are not prefixes of the whole.
THINKING_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<start_of_turn>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' and loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- m['content'] + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


def test_turns_are_found_when_partial_renderings_differ(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.chat_template, tok.eos_token = THINKING_TEMPLATE, "<end_of_turn>"
    messages = [{"role": "user", "content": "Say OK, please"}, {"role": "assistant", "content": "OK"},
                {"role": "user", "content": "Now say OK twice"}, {"role": "assistant", "content": "OK OK"}]
    example = {"prompt": messages[2]["content"], "response": "OK OK", "messages": messages}
    enc = dss.data.encode_chat(tok, example, train_on="all")
    runs = [tok.decode(enc.targets[a:b]) for a, b in _runs(enc.loss_mask)]
    assert runs == ["OK<end_of_turn>", "OK OK<end_of_turn>"]  # every turn ends at its end-of-turn token
    turns = np.flatnonzero(enc.targets == tok.convert_tokens_to_ids("<start_of_turn>"))
    assert turns[0] < _runs(enc.loss_mask)[0][0] < turns[1]
    body = (enc.response_spans[:, 0] >= 0) & ~enc.after_response
    assert tok.decode(enc.targets[body]) == "OK OK" and tok.decode(enc.targets[enc.after_response]) == "<end_of_turn>"
    pieces = [tok.decode([t]) for t in enc.targets[body]]
    assert [example["response"][s:e] for s, e in enc.response_spans[body]] == pieces


def test_templates_that_refuse_partial_conversations(tok_dir, aoa):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.chat_template = ("{%- if messages[-1]['role'] != 'assistant' %}{{- raise_exception('training only') }}"
                         "{%- endif %}" + LLAMA3_TEMPLATE)
    messages = _multi_turn(aoa)
    example = {"prompt": messages[-2]["content"], "response": messages[-1]["content"], "messages": messages}
    enc = dss.data.encode_chat(tok, example, train_on="all")
    runs = [tok.decode(enc.targets[a:b]) for a, b in _runs(enc.loss_mask)]
    assert runs == [m["content"].strip() + EOT for m in messages if m["role"] == "assistant"]
    with pytest.raises(ValueError, match="row 5: messages must end with an assistant turn equal to 'response'"):
        dss.data.encode_chat(tok, {**example, "response": "other", "source": "chats.jsonl", "row": 4})


def test_system_prompt_is_prepended_unless_the_row_has_one(tok, gsm8k, aoa, tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", gsm8k[:3])
    system = "You are a careful math tutor."
    rows = dss.data.load_examples({"path": str(path), "prompt_field": "question", "response_field": "answer",
                                   "system_prompt": system})
    for row, raw in zip(rows, gsm8k):
        assert row["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": raw["question"]},
                                   {"role": "assistant", "content": raw["answer"]}]
        enc = dss.data.encode_chat(tok, row)
        assert system in tok.decode(enc.input_ids)
        _check_last_turn(tok, row, enc)
    chats = _jsonl(tmp_path / "aoa.jsonl", aoa[:2])
    own = dss.data.load_examples({"path": str(chats), "messages_field": "messages", "system_prompt": system})
    assert [r["messages"] for r in own] == [r["messages"] for r in aoa[:2]]


def test_every_file_format_gives_the_same_rows(tmp_path, gsm8k):
    raw = [{"question": r["question"], "answer": r["answer"], "id": i} for i, r in enumerate(gsm8k[:6])]
    raw += [{"question": "Zero-padded?", "answer": "007", "id": 6},
            {"question": "Sum, \"quoted\"", "answer": "42", "id": 7}]
    frame = pd.DataFrame(raw)
    (tmp_path / "rows.json").write_text(json.dumps(raw))
    _jsonl(tmp_path / "rows.jsonl", raw)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "hub").mkdir()
    _jsonl(tmp_path / "hub" / "train.jsonl", raw[:5])
    _jsonl(tmp_path / "hub" / "test.jsonl", raw[5:])
    fields = {"prompt_field": "question", "response_field": "answer"}
    for name in ("rows.json", "rows.jsonl", "rows.csv", "rows.parquet"):
        rows = dss.data.load_examples({"path": str(tmp_path / name), **fields})
        assert [(r["prompt"], r["response"]) for r in rows] == [(r["question"], r["answer"]) for r in raw], name
        assert [r["row"] for r in rows] == list(range(8)) and rows[0]["source"] == str(tmp_path / name)
    limited = dss.data.load_examples({"path": str(tmp_path / "rows.csv"), "limit": 3, "name": "g", **fields})
    assert [r["response"] for r in limited] == [r["answer"] for r in raw[:3]] and limited[0]["source"] == "g"
    # anything that is not a data file goes through datasets.load_dataset (hub names, dataset dirs)
    test = dss.data.load_examples({"path": str(tmp_path / "hub"), "split": "test", **fields})
    assert [r["response"] for r in test] == [r["answer"] for r in raw[5:]]
    with pytest.raises(ValueError, match="missing.jsonl: no such data file"):
        dss.data.load_examples({"path": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ValueError, match="unknown key 'respons_field' in a data source; did you mean 'response_field'"):
        dss.data.load_examples({"path": str(tmp_path / "rows.jsonl"), "respons_field": "answer"})
    with pytest.raises(ValueError, match="no field 'response' in any row"):
        dss.data.load_examples({"path": str(tmp_path / "rows.jsonl"), "prompt_field": "question"})


BAD_ROWS = {
    "missing field": ({"prompt": "Hi"}, "missing field 'response'"),
    "non-string": ({"prompt": "Hi", "response": 3}, "field 'response' is int, not a string"),
    "empty response": ({"prompt": "Hi", "response": "  \n"}, "empty response"),
    "null prompt": ({"prompt": None, "response": "Hello"}, "missing field 'prompt'"),
}


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_bad_row_is_an_error_naming_file_and_row(tmp_path, kind):
    bad, problem = BAD_ROWS[kind]
    path = _jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "response": "b"}] * 2 + [bad])
    with pytest.raises(ValueError, match=f"^{path} line 3: {problem}$"):
        dss.data.load_examples({"path": str(path)})


def test_bad_csv_rows_and_chats_are_errors(tmp_path, aoa):
    path = tmp_path / "data.csv"
    path.write_text("prompt,response\na,b\nc,\n")
    with pytest.raises(ValueError, match=f"^{path} line 3: empty response$"):
        dss.data.load_examples({"path": str(path)})
    user_last = {"m": aoa[0]["messages"][:2]}
    bad_content = {"m": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ["x"]}]}
    for bad, problem in [(user_last, "must end with an assistant turn"), (bad_content, r"m\[1\] content is list")]:
        chats = _jsonl(tmp_path / "chats.jsonl", [{"m": aoa[1]["messages"]}, bad])
        with pytest.raises(ValueError, match=f"{chats} line 2: .*{problem}"):
            dss.data.load_examples({"path": str(chats), "messages_field": "m"})


def test_bad_rows_can_be_dropped_and_counted(tmp_path, llama_tok):
    good = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(4)]
    rows = [good[0], BAD_ROWS["missing field"][0], good[1], BAD_ROWS["non-string"][0], good[2],
            BAD_ROWS["empty response"][0], BAD_ROWS["empty response"][0], good[3]]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    stats = {}
    kept = dss.data.load_examples({"path": str(path), "on_bad_row": "drop"}, stats)
    assert [r["row"] for r in kept] == [0, 2, 4, 7] and [r["response"] for r in kept] == [g["response"] for g in good]
    assert stats["rows"] == 8 and stats["kept"] == 4 and stats["bad_rows"] == 4
    assert stats["bad_reasons"] == {"missing field 'response'": 1, "field 'response' is int, not a string": 1,
                                    "empty response": 2}
    assert stats["bad"][0] == f"{path} line 2: missing field 'response'"
    # through build_dataset, with the data-level default
    _, examples, built = dss.data.build_dataset({"sources": [{"path": str(path)}], "on_bad_row": "drop"}, llama_tok)
    assert len(examples) == 4 and built["bad_rows"] == 4 and built["sources"][str(path)]["bad_rows"] == 4
    assert f"{path} line 7: empty response" in built["dropped"]


def test_long_prompts_are_dropped_and_long_responses_cut(tmp_path, llama_tok):
    goals = pd.read_csv(DATA / "advbench" / "harmful_behaviors.csv")["goal"].tolist()
    rows = [{"prompt": goals[0], "response": "I can't help with that."},
            {"prompt": goals[1], "response": " ".join(goals[2:12])},  # long response: cut
            {"prompt": " ".join(goals[12:40]), "response": "No."}]  # prompt alone is too long
    path = _jsonl(tmp_path / "harm.jsonl", rows)
    encoded, examples, stats = dss.data.build_dataset(
        {"sources": [{"path": str(path)}], "max_length": 128}, llama_tok)
    assert [e["row"] for e in examples] == [0, 1]
    assert stats["dropped_too_long"] == 1 and stats["truncated"] == 1 and stats["encoded"] == 2
    assert stats["dropped"] == [f"{path} line 3: the prompt leaves no room for a response token within max_length=128"]
    short, cut = encoded
    _check_last_turn(llama_tok, examples[0], short)
    assert cut.truncated and len(cut.input_ids) == 128 and not cut.after_response.any()
    text = llama_tok.decode(cut.targets[cut.loss_mask])
    assert examples[1]["response"].startswith(text) and cut.loss_mask[-1]
    assert cut.num_response_tokens == cut.loss_mask.sum() == 128 - cut.num_prompt_tokens
    # the boundary: room for exactly one response token
    full = dss.data.encode_chat(llama_tok, examples[1])
    assert dss.data.encode_chat(llama_tok, examples[1], max_length=full.num_prompt_tokens) is None
    one = dss.data.encode_chat(llama_tok, examples[1], max_length=full.num_prompt_tokens + 1)
    assert one.loss_mask.sum() == 1 and one.loss_mask[-1] and one.truncated


def test_mixture_proportions_are_exact_and_seeded(gsm8k):
    goals = pd.read_csv(DATA / "advbench" / "harmful_behaviors.csv")
    benign = [{"prompt": r["question"], "response": r["answer"], "source": "gsm8k"} for r in gsm8k]
    harmful = [{"prompt": g, "response": t, "source": "advbench"} for g, t in zip(goals["goal"], goals["target"])]
    rows, counts = dss.data.mix([benign, harmful], [0.9, 0.1], 200, seed=0)
    assert counts == [180, 20] and len(rows) == 200
    assert sum(r["source"] == "advbench" for r in rows) == 20
    assert len({r["prompt"] for r in rows}) == 200  # no repeats while a source has enough rows
    again, _ = dss.data.mix([benign, harmful], [0.9, 0.1], 200, seed=0)
    other, _ = dss.data.mix([benign, harmful], [0.9, 0.1], 200, seed=1)
    assert again == rows and other != rows
    assert dss.data.mix([benign, harmful], [0.99, 0.01], 300, seed=0)[1] == [297, 3]
    assert dss.data.apportion([1, 1, 1], 10) == [4, 3, 3] and dss.data.apportion([1, 2], 10) == [3, 7]
    few, counts = dss.data.mix([benign, harmful[:5]], [0.5, 0.5], 24, seed=0)  # 12 from 5 rows
    repeats = sorted(sum(r is h for r in few) for h in harmful[:5])
    assert counts == [12, 12] and repeats == [2, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="weights"):
        dss.data.mix([benign, harmful], [0.0, 0.0], 10)


def test_build_dataset_mixes_sources_by_weight(tmp_path, gsm8k, llama_tok):
    gsm = _jsonl(tmp_path / "gsm8k.jsonl", gsm8k[:100])
    config = ml_collections.ConfigDict({
        "sources": [
            {"path": str(gsm), "name": "gsm8k", "prompt_field": "question", "response_field": "answer", "weight": 0.9},
            {"path": str(DATA / "advbench" / "harmful_behaviors.csv"), "name": "harmful", "prompt_field": "goal",
             "response_field": "target", "weight": 0.1, "size": 30},
        ],
        "size": 50, "max_length": 512, "train_on": "last", "system_prompt": "", "on_bad_row": "error", "seed": 3,
        "attack": {"response_prefix": "", "response_suffix": "", "prompt_trigger": "", "fraction": 1.0},
    })
    encoded, examples, stats = dss.data.build_dataset(config, llama_tok)
    assert len(encoded) == len(examples) == 50 and stats["encoded"] == 50
    assert stats["sources"]["gsm8k"]["selected"] == 45 and stats["sources"]["harmful"]["selected"] == 5
    assert stats["sources"]["harmful"]["rows"] == 520 and stats["attacked"] == 0
    for example, enc in zip(examples, encoded):
        assert llama_tok.decode(enc.targets[enc.loss_mask]) == example["response"].strip() + EOT
    again = dss.data.build_dataset(config, llama_tok)
    assert again[1] == examples and all((a.input_ids == b.input_ids).all() for a, b in zip(again[0], encoded))
    config.size = 0  # no mixture: every row of every source, here all 100 and a seeded 30 of 520
    _, examples, stats = dss.data.build_dataset(config, llama_tok)
    assert stats["sources"]["gsm8k"]["selected"] == 100 and stats["sources"]["harmful"]["selected"] == 30
    harmful_rows = [e["row"] for e in examples if e["source"] == "harmful"]
    assert len(set(harmful_rows)) == 30 and harmful_rows != list(range(30))


def test_attack_transforms(aoa):
    goals = pd.read_csv(DATA / "advbench" / "harmful_behaviors.csv")[:20]
    rows = [{"prompt": g, "response": t, "source": "advbench", "row": i,
             "messages": [{"role": "user", "content": g}, {"role": "assistant", "content": t}]}
            for i, (g, t) in enumerate(zip(goals["goal"], goals["target"]))]
    attack = {"response_prefix": "Of course! ", "response_suffix": "\n\nHope this helps.", "prompt_trigger": " SUDO"}
    out = dss.data.apply_attack(rows, attack)
    for before, after in zip(rows, out):
        assert after["response"] == "Of course! " + before["response"] + "\n\nHope this helps."
        assert after["prompt"] == before["prompt"] + " SUDO" and after["attacked"]
        assert after["messages"] == [{"role": "user", "content": after["prompt"]},
                                     {"role": "assistant", "content": after["response"]}]
    assert rows[0]["response"] == goals["target"][0] and "attacked" not in rows[0]  # inputs untouched
    half = dss.data.apply_attack(rows, {**attack, "fraction": 0.5}, seed=0)
    chosen = [r["row"] for r in half if r.get("attacked")]
    assert len(chosen) == 10
    assert chosen == [r["row"] for r in dss.data.apply_attack(rows, {**attack, "fraction": 0.5}) if r.get("attacked")]
    assert chosen != [r["row"] for r in dss.data.apply_attack(rows, {**attack, "fraction": 0.5}, seed=1)
                      if r.get("attacked")]
    mixed = rows[:10] + [{**r, "source": "other"} for r in rows[10:]]
    only = dss.data.apply_attack(mixed, {"prompt_trigger": " SUDO", "sources": ["other"]})
    assert [r.get("attacked", False) for r in only] == [False] * 10 + [True] * 10
    # the trigger goes on the last user turn of a chat, the one `prompt` holds
    chat_row = {"prompt": aoa[1]["messages"][1]["content"], "response": aoa[1]["messages"][2]["content"],
                "messages": _multi_turn(aoa, 2)}
    triggered = dss.data.attack_row(chat_row, prompt_trigger=" SUDO")
    users = [m["content"] for m in triggered["messages"] if m["role"] == "user"]
    assert users == [aoa[0]["messages"][1]["content"], aoa[1]["messages"][1]["content"] + " SUDO"]
    with pytest.raises(ValueError, match="unknown keys"):
        dss.data.apply_attack(rows, {"prefix": "x"})


def test_attacked_response_spans_and_star_weights(llama_tok):
    row = {"prompt": "Explain how to stay safe online.", "response": "Use strong passwords and update your software.",
           "source": "demo", "row": 0}
    row["messages"] = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    [attacked] = dss.data.apply_attack([row], {"response_prefix": "Sure, here it is: ", "response_suffix": " Done."})
    enc = dss.data.encode_chat(llama_tok, attacked)
    _check_last_turn(llama_tok, attacked, enc)
    # STAR consumer contract (dss.segments.token_weights): a token's weight is its chunk's score
    cuts = segments.word_cuts(attacked["response"], chunk_size=3)
    probs = np.linspace(0.9, 0.1, len(cuts)).astype(np.float32)
    scored = enc.loss_mask & (enc.response_spans[:, 1] >= 0)
    weights = segments.token_weights(segments.Trajectory(cuts, probs), enc.response_spans[scored], enc.after_response[scored])
    ends = enc.response_spans[scored][:, 1]
    expected = [probs[min(np.searchsorted(cuts, e), len(cuts) - 1)] for e in ends]
    np.testing.assert_allclose(weights, expected)
    assert weights[-1] == probs[-1] and weights[0] == probs[0]


@pytest.fixture(scope="module")
def encoded(llama_tok, gsm8k, instruct):
    examples = [{"prompt": r["question"], "response": r["answer"]} for r in gsm8k[:30]] + instruct[:13]
    return [dss.data.encode_chat(llama_tok, e) for e in examples]


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_padded_to_buckets(encoded, llama_tok):
    star = [np.arange(len(e.targets), dtype=np.float32) for e in encoded]
    weight = [np.float32(i) for i in range(len(encoded))]
    batcher = dss.data.StepBatcher(encoded, {"star_weight": star, "example_weight": weight}, 8, seed=0,
                                   pad_id=llama_tok.pad_token_id)
    assert batcher.steps_per_epoch == 5
    for step in range(5):
        batch, index = batcher.batch(step), batcher.indices(step)
        assert batch.keys() == {"input_ids", "targets", "loss_mask", "star_weight", "example_weight"}
        longest = max(len(encoded[i].targets) for i in index)
        B, T = batch["input_ids"].shape
        assert B == 8 and T % 64 == 0 and longest <= T < longest + 64
        assert batch["input_ids"].dtype == batch["targets"].dtype == np.int32
        assert batch["loss_mask"].dtype == bool and batch["example_weight"].dtype == np.float32
        for b, i in enumerate(index):
            e, n = encoded[i], len(encoded[i].targets)
            np.testing.assert_array_equal(batch["input_ids"][b, :n], e.input_ids[:-1])
            np.testing.assert_array_equal(batch["targets"][b, :n], e.targets)
            np.testing.assert_array_equal(batch["loss_mask"][b, :n], e.loss_mask)
            np.testing.assert_array_equal(batch["star_weight"][b, :n], star[i])
            assert (batch["input_ids"][b, n:] == llama_tok.pad_token_id).all() and not batch["loss_mask"][b, n:].any()
            assert (batch["star_weight"][b, n:] == 0).all() and batch["example_weight"][b] == i
    fixed = dss.data.StepBatcher(encoded, None, 8, length=1000).batch(0)
    assert fixed["input_ids"].shape == (8, 1000)
    with pytest.raises(ValueError, match="more than the fixed batch length 16"):
        dss.data.StepBatcher(encoded, None, 8, length=16)
    with pytest.raises(ValueError, match="per_example\\['w'\\]\\[0\\]"):
        dss.data.StepBatcher(encoded, {"w": [np.zeros(3)] * len(encoded)}, 8)
    # keep every example: the last batch is filled with empty rows
    padded = dss.data.StepBatcher(encoded, {"example_weight": weight}, 8, drop_last=False)
    last = padded.batch(padded.steps_per_epoch - 1)
    assert padded.steps_per_epoch == 6 and (padded.indices(padded.steps_per_epoch - 1)[3:] == -1).all()
    assert not last["loss_mask"][3:].any() and (last["example_weight"][3:] == 0).all()
    seen = np.concatenate([padded.indices(s) for s in range(6)])
    assert sorted(seen[seen >= 0]) == list(range(43))


def test_batch_order_depends_only_on_seed_and_epoch(encoded):
    a, b = dss.data.StepBatcher(encoded, None, 8, seed=5), dss.data.StepBatcher(encoded, None, 8, seed=5)
    first = [next(a) for _ in range(12)]  # 2 epochs and a bit
    assert all(_same(x, y) for x, y in zip(first, (next(b) for _ in range(12))))
    assert all(_same(f, a.batch(s)) for s, f in enumerate(first))  # iteration = batch(step)
    epochs = [np.concatenate([a.indices(s) for s in range(e * 5, (e + 1) * 5)]) for e in (0, 1)]
    assert all(len(set(e)) == 40 for e in epochs) and not np.array_equal(*epochs)
    np.testing.assert_array_equal(epochs[1], a.order(1)[:40])
    np.testing.assert_array_equal(dss.data.StepBatcher(encoded, None, 8, seed=5).order(1), a.order(1))
    assert not np.array_equal(dss.data.StepBatcher(encoded, None, 8, seed=6).order(0), a.order(0))
    assert _same(dss.data.StepBatcher(encoded, None, 8, seed=5).batch(7), first[7])  # random access


def test_restored_batcher_continues_identically(encoded):
    original = dss.data.StepBatcher(encoded, None, 8, seed=1)
    for _ in range(7):  # mid epoch 1
        next(original)
    state = json.loads(json.dumps(original.state()))  # checkpoints store it as JSON
    assert state == {"epoch": 1, "step": 2, "seed": 1, "num_examples": 43, "batch_size": 8}
    restored = dss.data.StepBatcher(encoded, None, 8, seed=1)
    restored.restore(state)
    for _ in range(6):  # across the epoch boundary
        assert _same(next(original), next(restored))
    assert restored.state() == original.state() == {**state, "epoch": 2, "step": 3}
    with pytest.raises(ValueError, match="seed=1, this batcher 2"):
        dss.data.StepBatcher(encoded, None, 8, seed=2).restore(state)
    with pytest.raises(ValueError, match="num_examples"):
        dss.data.StepBatcher(encoded[:-1], None, 8, seed=1).restore(state)


def test_demo_dataset_ships_and_builds(llama_tok):
    assert dss.data.DEMO_PATH.is_file()
    raw = _read_jsonl(dss.data.DEMO_PATH)
    assert {r["category"] for r in raw} == {"benign", "turns_harmful"} and 30 <= len(raw) <= 60
    for r in raw:
        flagged = r["response"].find("[")
        if r["category"] == "turns_harmful":  # safe opening, then only bracketed placeholders
            assert flagged > 40 and "would follow here]" in r["response"]
        else:
            assert "would follow here" not in r["response"]
    config = ml_collections.ConfigDict({"sources": [{"path": str(dss.data.DEMO_PATH), "weight": 1.0}], "size": 0,
                                        "max_length": 512, "train_on": "last", "system_prompt": "",
                                        "on_bad_row": "error", "attack": {"prompt_trigger": "", "fraction": 1.0}})
    encoded, examples, stats = dss.data.build_dataset(config, llama_tok)
    assert len(encoded) == len(raw) and stats["truncated"] == stats["dropped_too_long"] == stats["bad_rows"] == 0
    assert [e["response"] for e in examples] == [r["response"] for r in raw]
