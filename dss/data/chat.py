"""Chat formatting with the policy tokenizer's own template: tokens, loss mask, response spans.

The template renders the conversation to text and the fast tokenizer's character offsets say which
tokens carry each assistant turn. Templates may alter the turn (Llama 3 `trim`s it), so a turn is
found as its whitespace-stripped text, right where the template's generation prompt ends when the
template renders conversations prefix by prefix (most do), else searched after the previous
message. A trained turn is every token overlapping its text plus the end-of-turn token the template
writes after it (e.g. `<|eot_id|>`), so the model learns to stop; a separator the template writes
after that token (Gemma 3's and Qwen 2.5's "\n") is not trained. The text is tokenized without the
tokenizer's own special tokens: the template already writes BOS, and adding it would double it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from dss import templating

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048


@dataclass
class Encoded:
    """One tokenized example; L = len(input_ids) - 1 target positions."""

    input_ids: np.ndarray  # int32 [L+1]: the rendered conversation
    targets: np.ndarray  # int32 [L]: input_ids[1:]; position t of the model's output predicts targets[t]
    loss_mask: np.ndarray  # bool [L]: targets in trained assistant turns, end-of-turn tokens included
    response_spans: np.ndarray  # int32 [L, 2]: targets of the last turn -> (start, end) in
    #   example["response"]; its end-of-turn targets get the empty span (len, len); (-1, -1) elsewhere
    after_response: np.ndarray  # bool [L]: end-of-turn targets after the last response
    num_prompt_tokens: int  # tokens before the last response's first token
    num_response_tokens: int  # targets of the last response's text (end-of-turn excluded)
    truncated: bool  # the last response was cut at max_length


def describe(example: Mapping) -> str:
    """'<source> row <i>' for error messages."""
    return f"{example.get('source', '<examples>')} row {example.get('row', '?')}"


def conversation(example: Mapping) -> list[dict]:
    """The example's messages (or user prompt + assistant response); the last turn must be the
    assistant's `response`, since response spans index that exact string."""
    messages = example.get("messages") or [
        {"role": "user", "content": example["prompt"]},
        {"role": "assistant", "content": example["response"]},
    ]
    if messages[-1]["role"] != "assistant" or messages[-1]["content"] != example["response"]:
        raise ValueError(f"{describe(example)}: messages must end with an assistant turn equal to 'response'")
    return messages


def _rendered_prefix(tokenizer, messages, text: str, generation_prompt: bool, template_vars: Mapping) -> int | None:
    """Length of the rendering of `messages` if it is a prefix of `text`, else None."""
    try:
        part = templating.render(tokenizer, messages, template_vars, add_generation_prompt=generation_prompt)
    except TemplateError:  # some templates refuse partial conversations
        return None
    return len(part) if text.startswith(part) else None


def _locate(text: str, content: str, start: int) -> tuple[int, int, int] | None:
    """(begin, end, lead): `text[begin:end] == content[lead:lead + end - begin]`, for the first
    occurrence of content's stripped core at or after `start`, widened over the whitespace around
    it that the template kept (never before `start`)."""
    core = content.strip()
    pos = text.find(core, start) if core else -1
    if pos < 0:
        return None
    lead = len(content) - len(content.lstrip())
    begin, end = pos, pos + len(core)
    while lead > 0 and begin > start and text[begin - 1] == content[lead - 1]:
        begin, lead = begin - 1, lead - 1
    tail = len(content) - (end - begin) - lead  # content chars after the located text
    while tail > 0 and end < len(text) and text[end] == content[len(content) - tail]:
        end, tail = end + 1, tail - 1
    return begin, end, lead


def _special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens, longest first: the named ones and every added token marked
    special (real Llama 3 and Gemma 3 tokenizers list `<|eot_id|>` / `<end_of_turn>` only there)."""
    names = set(tokenizer.all_special_tokens)
    names.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    return sorted((t for t in names if t), key=len, reverse=True)


def _through_end_of_turn_token(text: str, end: int, turn_end: int, specials: Sequence[str]) -> int:
    """Where a trained turn stops: right after the first special token in `text[end:turn_end]` (the
    end-of-turn token), so that what the template writes after it (Gemma 3's and Qwen 2.5's "\n"
    before the next turn) is not trained; `turn_end` if that text holds no special token."""
    first = None
    for token in specials:  # longest first, so the longest token wins where two start together
        pos = text.find(token, end, turn_end)
        if pos >= 0 and (first is None or pos < first[0]):
            first = (pos, pos + len(token))
    return first[1] if first else turn_end


def _assistant_turns(tokenizer, messages: list[dict], text: str, where: str,
                     template_vars: Mapping) -> list[tuple[int, int, int, int]]:
    """(begin, end, lead, turn_end) of every assistant turn in the rendered `text`; turn_end ends
    its end-of-turn token."""
    turns, cursor = [], 0
    eos = tokenizer.eos_token or ""
    specials = _special_tokens(tokenizer)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            found = _locate(text, m["content"], cursor)
            cursor = found[1] if found else cursor
            continue
        start = _rendered_prefix(tokenizer, messages[:i], text, True, template_vars)
        found = _locate(text, m["content"], cursor if start is None else start)
        if found is None:
            raise ValueError(f"{where}: assistant turn {i} is not in the chat template's rendering; the "
                             "template changes it beyond trimming whitespace")
        begin, end, lead = found
        turn_end = _rendered_prefix(tokenizer, messages[: i + 1], text, False, template_vars)
        if turn_end is None or turn_end < end:  # template renders prefixes differently: end at EOS
            turn_end = end + len(eos) if eos and text.startswith(eos, end) else end
        turn_end = _through_end_of_turn_token(text, end, turn_end, specials)
        turns.append((begin, end, lead, turn_end))
        cursor = turn_end
    return turns


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    example: Mapping,
    max_length: int = DEFAULT_MAX_LENGTH,
    train_on: str = "last",
    template_vars: Mapping | None = None,
) -> Encoded | None:
    """Tokenize one example with the tokenizer's chat template (see the module docstring).

    train_on: "last" trains the final assistant turn, "all" every assistant turn. At most
    `max_length` tokens are kept: a longer response is cut (`truncated`); None when the prompt
    leaves no room for one response token. `template_vars` go to the template (the run's fixed
    `date_string`, see dss.templating), so a rendering never depends on the day it is made.
    """
    if train_on not in ("last", "all"):
        raise ValueError(f"train_on must be 'last' or 'all', got {train_on!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    where = describe(example)
    messages = conversation(example)
    template_vars = dict(template_vars or {})
    text = templating.render(tokenizer, messages, template_vars)
    turns = _assistant_turns(tokenizer, messages, text, where, template_vars)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int32)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    starts = offsets[:, 0]
    ends = np.maximum(offsets[:, 1], starts + 1)  # a zero-width token counts where it sits

    def overlapping(a: int, b: int) -> np.ndarray:
        return (starts < b) & (ends > a)

    trained = np.zeros(len(ids), bool)
    for begin, end, _, turn_end in turns if train_on == "all" else turns[-1:]:
        trained |= overlapping(begin, turn_end)
    begin, end, lead, turn_end = turns[-1]
    response = overlapping(begin, end)
    eot = overlapping(end, turn_end) & ~response
    first = int(np.argmax(response))
    if not response.any() or first == 0:
        raise ValueError(f"{where}: no response tokens after the prompt")
    if first >= max_length:
        return None
    spans = np.full((len(ids), 2), -1, np.int64)
    spans[response, 0] = np.clip(offsets[response, 0], begin, end) - begin + lead
    spans[response, 1] = np.clip(offsets[response, 1], begin, end) - begin + lead
    spans[eot] = len(example["response"])
    n = min(len(ids), max_length)
    return Encoded(
        input_ids=ids[:n],
        targets=ids[1:n],
        loss_mask=trained[1:n],
        response_spans=spans[1:n].astype(np.int32),
        after_response=eot[1:n],
        num_prompt_tokens=first,
        num_response_tokens=int(response[1:n].sum()),
        truncated=len(ids) > max_length,
    )


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping],
    max_length: int = DEFAULT_MAX_LENGTH,
    train_on: str = "last",
    template_vars: Mapping | None = None,
) -> tuple[list[Encoded], list[Mapping], dict]:
    """encode_chat over `examples`: (encoded, the examples kept, in the same order, stats).

    stats: `dropped_too_long` (count), `truncated` (count), `dropped` (one message per drop,
    naming the source file and row).
    """
    encoded, kept, dropped, truncated = [], [], [], 0
    for example in examples:
        enc = encode_chat(tokenizer, example, max_length, train_on, template_vars)
        if enc is None:
            dropped.append(f"{describe(example)}: the prompt leaves no room for a response token "
                           f"within max_length={max_length}")
            continue
        encoded.append(enc)
        kept.append(example)
        truncated += enc.truncated
    if dropped:
        log.warning("dropped %d of %d examples: %s", len(dropped), len(examples), "; ".join(dropped[:5]))
    return encoded, kept, {"dropped_too_long": len(dropped), "truncated": truncated, "dropped": dropped}
