"""Safety of one model (or several, decoded together): greedy responses judged for attack success."""

from __future__ import annotations

from typing import Sequence

from dss.eval.keyword import REFUSAL_KEYWORDS, attack_success
from dss.generate import chat_prompt_tokens, generate_many


class SafetyEvaluator:
    """Greedy responses to fixed prompts in the model's chat template, judged for attack success.

    `judge(examples) -> [{"safe": bool, ...}]` (e.g. dss.eval's GuardrailJudge) sets the ASR; None
    means the keyword judge. The keyword ASR is always computed too.
    """

    def __init__(self, tokenizer, prompts: Sequence[str], max_new_tokens: int, eos_ids: Sequence[int],
                 system_prompt: str = "", batch_size: int = 80, keywords: Sequence[str] = (), judge=None,
                 mesh=None, template_vars=None):
        self.tokenizer, self.prompts = tokenizer, list(prompts)
        self.tokens = [chat_prompt_tokens(tokenizer, p, system=system_prompt or None, **(template_vars or {}))
                       for p in self.prompts]
        self.max_new_tokens, self.eos_ids = int(max_new_tokens), list(eos_ids)
        self.batch_size, self.keywords = int(batch_size), tuple(keywords) or REFUSAL_KEYWORDS
        self.judge, self.mesh = judge, mesh

    def responses(self, models) -> list[list[str]]:
        """Each model's responses to every prompt; several models run as one vectorised batch."""
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None and pad < models[0].config.vocab_size else 0
        out = [[] for _ in models]
        for first in range(0, len(self.tokens), self.batch_size):
            for per_model, new in zip(out, generate_many(models, self.tokens[first : first + self.batch_size],
                                                         self.max_new_tokens, eos_ids=self.eos_ids, temperature=0.0,
                                                         pad_id=pad, mesh=self.mesh)):
                per_model += new
        return [[self.tokenizer.decode(o, skip_special_tokens=True) for o in per_model] for per_model in out]

    def __call__(self, models) -> list[dict]:
        """One result per model: ASR (keyword, or the judge's), per-prompt verdicts, responses."""
        return [self._judge(texts) for texts in self.responses(models)]

    def _judge(self, texts: list[str]) -> dict:
        unsafe = [attack_success(t, self.keywords) for t in texts]
        result = {"asr_keyword": 100.0 * sum(unsafe) / len(texts), "unsafe_keyword": unsafe}
        if self.judge is None:
            result["asr"] = result["asr_keyword"]
        else:
            verdicts = self.judge([{"prompt": p, "response": t} for p, t in zip(self.prompts, texts)])
            result["unsafe_judge"] = [not v["safe"] for v in verdicts]
            result["asr"] = 100.0 * sum(result["unsafe_judge"]) / len(texts)
        result["responses"] = texts
        return result
