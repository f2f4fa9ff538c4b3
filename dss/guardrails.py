"""Guardrail adapters: how each guardrail family is asked for a verdict on a response prefix.

STAR reads P(safe) from the guardrail's next-token logits of its two verdict words right after
its own chat template (plus a fixed verdict prefix). An adapter holds only the tokenizer and that
recipe; the guardrail's weights are a separate step (`dss.models.load_pretrained`) that
`dss.star` pairs with the adapter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dss import templating

SHIELDGEMMA_DEFAULT_POLICY = (
    '"No Dangerous Content": The chatbot shall not generate content that harms oneself and/or'
    " others (e.g., accessing or building firearms and explosive devices, promotion of terrorism,"
    " instructions for suicide)."
)


@dataclass(frozen=True)
class GuardrailKind:
    """One guardrail family: template arguments, verdict prefix and words, how to recognise it."""

    name: str
    safe_word: str
    unsafe_word: str
    verdict_prefix: str  # what the guardrail writes after the template, before the verdict word
    default_risk: str | None  # Granite risk name / ShieldGemma policy; None: not configurable
    template_kwargs: Callable[[str | None], dict[str, Any]]
    name_markers: tuple[str, ...]  # in the checkpoint name, lower-cased, without - _ . or spaces
    template_markers: tuple[str, ...]  # in the chat template text


KINDS: dict[str, GuardrailKind] = {
    k.name: k
    for k in (
        GuardrailKind(
            name="llama_guard_3",
            safe_word="safe",
            unsafe_word="unsafe",
            verdict_prefix="\n\n",
            default_risk=None,
            template_kwargs=lambda risk: {},
            name_markers=("llamaguard3",),
            template_markers=("Check if there is unsafe content",),
        ),
        GuardrailKind(
            name="granite_guardian",
            safe_word="No",
            unsafe_word="Yes",
            verdict_prefix="",
            default_risk="harm",
            template_kwargs=lambda risk: {
                "guardian_config": {"risk_name": risk},
                "add_generation_prompt": True,
            },
            name_markers=("graniteguardian",),
            template_markers=("guardian_config",),
        ),
        GuardrailKind(
            name="shieldgemma",
            safe_word="No",
            unsafe_word="Yes",
            verdict_prefix="",
            default_risk=SHIELDGEMMA_DEFAULT_POLICY,
            template_kwargs=lambda risk: {"guideline": risk},
            name_markers=("shieldgemma",),
            template_markers=("policy expert",),
        ),
    )
}


def _names_and_model_type(path_or_config: Any) -> tuple[list[str], str | None]:
    """Checkpoint names (path, `_name_or_path`) and model_type of a path, config or config dict."""
    if isinstance(path_or_config, (str, os.PathLike)):
        names = [os.fspath(path_or_config)]
        config_file = Path(path_or_config) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    elif isinstance(path_or_config, Mapping):
        names, config = [], path_or_config
    else:  # a transformers PretrainedConfig
        names, config = [], path_or_config.to_dict()
    names += [config[k] for k in ("_name_or_path", "name_or_path") if config.get(k)]
    return names, config.get("model_type")


def _template_text(tokenizer: PreTrainedTokenizerBase) -> str:
    template = tokenizer.chat_template or ""
    return "\n".join(template.values()) if isinstance(template, dict) else template


def detect_kind(path_or_config: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """The guardrail kind of a checkpoint, for `kind="auto"`.

    The chat template decides first, because it is what STAR renders; the checkpoint name
    (path, hub id, config `_name_or_path`, tokenizer `name_or_path`) second. model_type alone
    cannot decide (Llama Guard 3 is "llama", Granite Guardian "granite", ShieldGemma "gemma2",
    shared with ordinary chat models), so it only appears in the error message.
    """
    names, model_type = _names_and_model_type(path_or_config)
    names.append(tokenizer.name_or_path or "")
    template = _template_text(tokenizer)
    squashed = " ".join(names).lower().translate(str.maketrans("", "", "-_. "))
    for found in (
        [k for k in KINDS.values() if any(m in template for m in k.template_markers)],
        [k for k in KINDS.values() if any(m in squashed for m in k.name_markers)],
    ):
        if len(found) == 1:
            return found[0].name
        if len(found) > 1:
            raise ValueError(
                f"guardrail {names[0]!r}: matches several kinds {[k.name for k in found]}; "
                "pass kind= explicitly"
            )
    raise ValueError(
        f"guardrail {names[0]!r} (model_type={model_type!r}): cannot tell its kind from its name "
        f"or chat template; pass kind= one of {sorted(KINDS)}"
    )


@dataclass
class GuardrailAdapter:
    """Renders STAR prompts with a guardrail's own chat template and names its verdict tokens.

    `render(prompt, prefix)` is the exact text whose last-position logits give the verdict;
    `encode` its tokens (the template carries its own BOS, so no special tokens are added).
    """

    tokenizer: PreTrainedTokenizerBase
    kind: str = "auto"
    name: str | None = None  # checkpoint path or hub id, for kind detection and error messages
    risk: str | None = None  # Granite Guardian risk_name / ShieldGemma policy; None: the default
    template_vars: Mapping[str, Any] = field(default_factory=dict)  # the run's fixed template variables (date_string)
    verdict_token_ids: tuple[int, int] = field(init=False)  # (safe_id, unsafe_id)
    content_parts: bool = field(init=False)  # template wants list-of-parts content (LG3 1B)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, kind: str = "auto", risk: str | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> GuardrailAdapter:
        """Load the guardrail's tokenizer (a local directory or a hub id) and check it."""
        return cls(AutoTokenizer.from_pretrained(path), kind=kind, name=os.fspath(path), risk=risk,
                   template_vars=dict(template_vars or {}))

    def __post_init__(self):
        self.name = self.name or self.tokenizer.name_or_path
        if not _template_text(self.tokenizer):
            raise ValueError(
                f"guardrail {self.name!r}: its tokenizer has no chat template; STAR renders "
                "prompts with the guardrail's own template (chat_template.jinja)"
            )
        if self.kind == "auto":
            self.kind = detect_kind(self.name, self.tokenizer)
        if self.kind not in KINDS:
            raise ValueError(
                f"guardrail {self.name!r}: unknown kind {self.kind!r}; one of {sorted(KINDS)}"
            )
        if self.risk is not None and self.spec.default_risk is None:
            raise ValueError(f"guardrail {self.name!r}: {self.kind} takes no risk")
        if self.risk is None:
            self.risk = self.spec.default_risk
        self.verdict_token_ids = (
            self._single_token(self.spec.safe_word),
            self._single_token(self.spec.unsafe_word),
        )
        self.content_parts = self._probe_content_format()

    @property
    def spec(self) -> GuardrailKind:
        return KINDS[self.kind]

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"guardrail {self.name!r}: verdict word {word!r} is {len(ids)} tokens {pieces} "
                "in its tokenizer, but STAR reads it as one next-token logit"
            )
        return ids[0]

    def _probe_content_format(self) -> bool:
        """Whether message content must be a list of text parts: Llama Guard 3 1B's template
        drops plain-string content silently (or fails on it), so check the text appears."""
        marker, error = "dss-content-probe", None
        for parts in (False, True):
            try:
                if self._apply_template(marker, marker, parts).count(marker) == 2:
                    return parts
            except Exception as e:  # keep the first failure: it names the template's problem
                error = error or e
        reason = f"fails: {error}" if error else "drops plain-string and list-of-parts content"
        raise ValueError(
            f"guardrail {self.name!r}: its chat template, given (user, assistant) messages, "
            f"{reason}"
        ) from error

    def _apply_template(self, prompt: str, response_prefix: str, parts: bool) -> str:
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response_prefix},
        ]
        if parts:
            for m in messages:
                m["content"] = [{"type": "text", "text": m["content"]}]
        return templating.render(self.tokenizer, messages, self.template_vars, **self.spec.template_kwargs(self.risk))

    def render(self, prompt: str, response_prefix: str) -> str:
        """Template text for (user: prompt, assistant: response_prefix) plus the verdict prefix."""
        text = self._apply_template(prompt, response_prefix, self.content_parts)
        return text + self.spec.verdict_prefix

    def encode(self, prompt: str, response_prefix: str) -> list[int]:
        """Token ids of `render(...)`: exactly what a prefix is scored on."""
        return self.encode_many([(prompt, response_prefix)])[0]

    def encode_many(self, pairs) -> list[list[int]]:
        """`encode` of many (prompt, response prefix) pairs, tokenized in one batched call."""
        texts = [self.render(prompt, prefix) for prompt, prefix in pairs]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
