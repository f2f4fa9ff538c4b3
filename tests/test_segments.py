"""STAR segmentation and chunk -> token weights, on real responses from the bundled data."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dss import assets
from dss.segments import Trajectory, rs_weight, token_cuts, token_weights, word_cuts
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files


@pytest.fixture(scope="module")
def responses():
    """GSM8K answers (newlines, `<<48/2=24>>` and `####` punctuation runs) and Self-Instruct
    outputs (paragraphs, lists, unicode)."""
    with open(DATA / "gsm8k" / "train.jsonl") as f:
        gsm8k = [json.loads(line)["answer"] for _, line in zip(range(150), f)]
    with open(DATA / "self_instruct" / "user_oriented_instructions.jsonl") as f:
        self_instruct = [inst["output"] for line in f for inst in json.loads(line)["instances"]]
    return gsm8k + self_instruct[:150]


@pytest.fixture(scope="module")
def guard_tok(tmp_path_factory, responses):
    return assets.make_tokenizer(tmp_path_factory.mktemp("guard"), responses, vocab_size=800)


@pytest.fixture(scope="module")
def policy_tok(tmp_path_factory, responses):
    """A different tokenizer (other corpus, smaller vocabulary) with a Llama 3 style template."""
    return assets.make_tokenizer(
        tmp_path_factory.mktemp("policy"), responses[::-3], vocab_size=400,
        chat_template=assets.POLICY_CHAT_TEMPLATE,
    )


def test_word_cuts_keep_original_whitespace():
    response = "Step one.\n\nStep  two...!\n  three\tfour five six  \n"
    cuts = word_cuts(response, chunk_size=2)
    assert cuts == [9, 24, 37, 46]
    assert [response[:c] for c in cuts] == [
        "Step one.",
        "Step one.\n\nStep  two...!",
        "Step one.\n\nStep  two...!\n  three\tfour",
        "Step one.\n\nStep  two...!\n  three\tfour five six",
    ]
    assert word_cuts(response, chunk_size=3) == [15, 37, 46]  # last word's end, no duplicate
    assert word_cuts(response, chunk_size=6) == [37, 46]
    assert word_cuts(response, chunk_size=8) == [46]


@pytest.mark.parametrize("chunk_size", [1, 5, 10_000])
def test_word_cuts_on_real_text(responses, chunk_size):
    for response in responses:
        words = response.split()
        cuts = word_cuts(response, chunk_size)
        assert len(cuts) == math.ceil(len(words) / chunk_size)
        assert cuts == sorted(set(cuts))
        for k, cut in enumerate(cuts):
            prefix = response[:cut]
            assert response.startswith(prefix) and not prefix[-1].isspace()
            assert cut == len(response) or response[cut].isspace()
            assert prefix.split() == words[: min((k + 1) * chunk_size, len(words))]
        assert cuts[-1] == len(response.rstrip())


@pytest.mark.parametrize("response", ["", " ", "\n\t \n"])
def test_empty_and_whitespace_only_responses_score_the_empty_prefix(response, guard_tok):
    assert word_cuts(response) == [0]
    assert token_cuts(response, guard_tok, 3) == [0]
    spans = [(0, len(response)), (len(response), len(response))]  # whitespace, end of turn
    np.testing.assert_array_equal(token_weights(Trajectory([0], [0.25]), spans), [0.25, 0.25])


def test_chunk_size_must_be_positive(guard_tok):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunk_size must be >= 1"):
            word_cuts("a b c", bad)
        with pytest.raises(ValueError, match="chunk_size must be >= 1"):
            token_cuts("a b c", guard_tok, bad)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_token_cuts_every_m_guardrail_tokens(responses, guard_tok, chunk_size):
    ascii_responses = [r for r in responses if r.isascii()]  # one character per token end
    assert len(ascii_responses) > 50
    for response in ascii_responses:
        offsets = guard_tok(response, add_special_tokens=False, return_offsets_mapping=True)
        ends = np.array([end for _, end in offsets["offset_mapping"]])
        cuts = token_cuts(response, guard_tok, chunk_size)
        assert cuts[-1] == len(response) and set(cuts) <= set(ends)
        per_chunk = np.diff(np.searchsorted(ends, cuts, side="right"), prepend=0)
        assert (per_chunk[:-1] == chunk_size).all() and 1 <= per_chunk[-1] <= chunk_size


def test_token_cuts_never_split_a_character(guard_tok):
    """Byte-level pieces of one character share its end offset, and give a single cut."""
    response = "Caf\u00e9 \U0001f600 ok"
    pieces = guard_tok(response, add_special_tokens=False, return_offsets_mapping=True)
    assert len(pieces["input_ids"]) > len(response.replace(" ", ""))  # multi-byte pieces
    assert token_cuts(response, guard_tok, 1) == sorted({e for _, e in pieces["offset_mapping"]})


def test_token_weights_boundaries():
    char_ends, probs = [5, 12, 20], np.array([0.9, 0.5, 0.1])
    spans = [(0, 3), (3, 5), (5, 6), (10, 14), (14, 20), (20, 22), (20, 20), (0, 0), (0, 0)]
    after = [False] * 8 + [True]  # the last (0, 0) is a flagged end-of-turn token
    w = token_weights(Trajectory(char_ends, probs), spans, after_response=after)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.float32([0.9, 0.9, 0.5, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1]))


def test_token_weights_with_policy_tokenizer(responses, policy_tok):
    """Policy tokens come from a chat-templated conversation; each gets the score of the first
    prefix holding its whole text, tokens spanning a cut the next chunk's, end of turn the last."""
    spanning = 0
    for i, response in enumerate(responses[::2]):
        cuts = word_cuts(response, chunk_size=1 + i % 5)
        probs = np.linspace(1.0, 0.0, len(cuts), dtype=np.float32)
        messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": response}]
        text = policy_tok.apply_chat_template(messages, tokenize=False)
        enc = policy_tok.apply_chat_template(
            messages, return_assistant_tokens_mask=True,
            tokenizer_kwargs={"return_offsets_mapping": True},
        )
        start = text.index(response + "<|eot_id|>")
        mask = np.array(enc["assistant_masks"], bool)
        spans = np.array(enc["offset_mapping"])[mask] - start
        after = spans[:, 0] >= len(response)
        assert after.sum() == 1  # the end-of-turn token
        w = token_weights(Trajectory(cuts, probs), spans, after_response=after)
        assert w[-1] == probs[-1]
        for (s, e), weight in zip(spans, w):
            k = next((k for k, cut in enumerate(cuts) if e <= cut), len(cuts) - 1)
            assert weight == probs[k]
            inside = [j for j, cut in enumerate(cuts) if s < cut < e]
            if inside:  # a later chunk's score (the last one's past the last cut)
                assert k == min(inside[-1] + 1, len(cuts) - 1)
                spanning += 1
    assert spanning > 20  # e.g. ".\n" tokens across a cut after "May."


def test_rs_weight():
    assert rs_weight(np.array([0.1, 0.9, 0.7])) == 1.0
    assert rs_weight(np.array([0.9, 0.3])) == 0.0
    assert rs_weight(np.array([0.5])) == 1.0  # the threshold is inclusive
    assert rs_weight(np.array([0.9, 0.7]), threshold=0.8) == 0.0
    soft = rs_weight(np.array([0.2, 0.7]), mode="soft")
    assert soft.dtype == np.float32 and soft == np.float32(0.7)
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        rs_weight(np.array([0.5]), mode="median")


def test_trajectory_validates():
    traj = Trajectory(char_ends=[3, 8], safe_prob=[0.5, 0.25])
    assert traj.safe_prob.dtype == np.float32
    with pytest.raises(ValueError, match="one score per cut"):
        Trajectory(char_ends=[3, 8], safe_prob=[0.5])
    with pytest.raises(ValueError, match="K >= 1"):
        Trajectory(char_ends=[], safe_prob=[])
    with pytest.raises(ValueError, match="increasing"):
        Trajectory(char_ends=[8, 3], safe_prob=[0.5, 0.5])
    with pytest.raises(ValueError, match="one score per cut"):
        token_weights(Trajectory([3, 8], [0.5]), [(0, 1)])
