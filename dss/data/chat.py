"""Chat formatting with the policy tokenizer's own template: tokens, loss mask, response spans.

A trained assistant turn is what the model would generate: the tokens after the rendering of the
conversation before it with the template's generation prompt, where the full rendering starts
with that text (a template that renders the last turn's prompt otherwise is refused, naming it).
So a token the template's own text shares with the response is trained, e.g. sentencepiece's lone
"▁" for the space Mistral's template writes before a response starting with a digit; where BPE
merges the prompt's last characters with the response's first into one token, the two are
tokenized apart, as the model sees the prompt when it generates. Earlier turns that the template
renders differently alone (a thinking block only on the last turn), and templates that refuse
partial conversations, fall back to the turn's text: found whitespace-stripped (Llama 3 `trim`s
it) after the previous message, every token overlapping it trained.

Every trained turn ends with the end-of-turn token the template writes after it (e.g.
`<|eot_id|>`), so the model learns to stop; a separator the template writes after that token
(Gemma 3's and Qwen 2.5's "\n") is not trained. The text is tokenized without the tokenizer's own
special tokens: the template already writes BOS, and adding it would double it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
    """'<source> line <n>' (its file's line) or '<source> row <n>', 1-based as every message is."""
    source = example.get("source", "<examples>")
    if example.get("line"):
        return f"{source} line {example['line']}"
    return f"{source} row {example['row'] + 1}" if "row" in example else source


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


def _render_or_none(tokenizer, messages, generation_prompt: bool, template_vars: Mapping) -> str | None:
    """The rendering of the partial conversation `messages`; None where the template refuses it."""
    try:
        return templating.render(tokenizer, messages, template_vars, add_generation_prompt=generation_prompt)
    except TemplateError:  # some templates refuse partial conversations
        return None


def _rendered_prefix(tokenizer, messages, text: str, generation_prompt: bool, template_vars: Mapping) -> int | None:
    """Length of the rendering of `messages` if it is a prefix of `text`, else None."""
    part = _render_or_none(tokenizer, messages, generation_prompt, template_vars)
    return len(part) if part is not None and text.startswith(part) else None


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


class Turn(NamedTuple):
    """An assistant turn in the rendered text: `generated` is where its generation starts (the end
    of its prompt with the generation prompt; None where the template does not render that as a
    prefix); text[begin:end] == content[lead:lead + end - begin]; turn_end ends its end-of-turn
    token."""

    generated: int | None
    begin: int
    end: int
    lead: int
    turn_end: int


def _template_name(tokenizer) -> str:
    return f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"


def _assistant_turns(tokenizer, messages: list[dict], text: str, where: str, template_vars: Mapping,
                     every: bool) -> list[Turn]:
    """The assistant turns of the rendered `text`: every one, else those found before the last
    (which only guide the search) and the last."""
    turns, cursor = [], 0
    eos = tokenizer.eos_token or ""
    specials = _special_tokens(tokenizer)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            found = _locate(text, m["content"], cursor)
            cursor = found[1] if found else cursor
            continue
        prompt = _render_or_none(tokenizer, messages[:i], True, template_vars)
        generated = len(prompt) if prompt is not None and text.startswith(prompt) else None
        if generated is None and prompt is not None and i == len(messages) - 1:
            raise ValueError(f"{where}: {_template_name(tokenizer)} renders the conversation before the last "
                             "assistant turn, with its generation prompt, as text the full conversation does not "
                             "start with, so what the model generates there is undefined")
        found = _locate(text, m["content"], cursor if generated is None else generated)
        if found is None and not every and i < len(messages) - 1:
            continue  # not trained: e.g. Mistral's system message moves to the last user turn
        if found is None:
            raise ValueError(f"{where}: assistant turn {i} is not in the chat template's rendering; the "
                             "template changes it beyond trimming whitespace")
        begin, end, lead = found
        turn_end = _rendered_prefix(tokenizer, messages[: i + 1], text, False, template_vars)
        if turn_end is None or turn_end < end:  # template renders prefixes differently: end at EOS
            turn_end = end + len(eos) if eos and text.startswith(eos, end) else end
        turn_end = _through_end_of_turn_token(text, end, turn_end, specials)
        turns.append(Turn(generated, begin, end, lead, turn_end))
        cursor = turn_end
    return turns


def _tokenize(tokenizer, text: str, cuts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, character offsets [n, 2]) of `text`, with a token boundary at every cut: where one
    token spans a cut (a BPE merge across it), the text on each side is tokenized on its own."""
    def encode(piece: str, shift: int):
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        return (np.asarray(enc["input_ids"], np.int32),
                np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2) + shift)

    ids, offsets = encode(text, 0)
    spanned = sorted({c for c in cuts if 0 < c < len(text) and c not in offsets[:, 0]
                      and ((offsets[:, 0] < c) & (offsets[:, 1] > c)).any()})
    if not spanned:
        return ids, offsets
    pieces = [encode(text[a:b], a) for a, b in zip([0, *spanned], [*spanned, len(text)])]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


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
    turns = _assistant_turns(tokenizer, messages, text, where, template_vars, every=train_on == "all")
    trained_turns = turns if train_on == "all" else turns[-1:]
    ids, offsets = _tokenize(tokenizer, text, [t.generated for t in trained_turns if t.generated is not None])
    starts = offsets[:, 0]
    ends = np.maximum(offsets[:, 1], starts + 1)  # a zero-width token counts where it sits

    def overlapping(a: int, b: int) -> np.ndarray:
        return (starts < b) & (ends > a)

    trained = np.zeros(len(ids), bool)
    for t in trained_turns:
        trained |= overlapping(t.begin if t.generated is None else t.generated, t.turn_end)
    last = turns[-1]
    begin, end, lead = last.begin, last.end, last.lead
    response = overlapping(begin if last.generated is None else last.generated, end)
    eot = overlapping(end, last.turn_end) & ~response
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
